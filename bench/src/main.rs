//! The `confab-bench` binary: parse arguments, raise the fd limit, run.

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = confab_bench::cli::Cli::parse();
    let command = confab_bench::cli::redacted_command(std::env::args());
    match confab_bench::sys::raise_nofile(1 << 20) {
        Ok((soft, _)) => {
            if soft < 70_000 {
                eprintln!("note: open-file limit is {soft}");
            }
        }
        Err(e) => eprintln!("note: could not raise the open-file limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let interrupt = CancellationToken::new();
        let on_signal = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing with partial results (Ctrl-C again to abort)");
                on_signal.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        confab_bench::run(cli, command, interrupt).await
    })
}
