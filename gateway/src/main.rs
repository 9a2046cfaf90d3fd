//! The `confab-gateway` binary: config, tracing, bind, run.

use confab_common::config::{exit_on_error, Env};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = exit_on_error(confab_gateway::Config::from_env(&Env::process()));
    confab_common::telemetry::init_tracing(&config.log);
    let listener = confab_gateway::bind(config.addr, config.reuse_port)?;
    tracing::info!(addr = %config.addr, reuse_port = config.reuse_port, "listening");
    let shutdown = confab_common::shutdown::cancel_on_signal();
    confab_gateway::run(config, listener, shutdown).await?;
    Ok(())
}
