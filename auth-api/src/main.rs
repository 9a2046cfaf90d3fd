//! The `confab-auth-api` binary: config, tracing, bind, then the library's `run`.

use confab_common::config::{exit_on_error, Env, LogConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::process();
    let config = exit_on_error(confab_auth_api::Config::from_env(&env));
    let log = exit_on_error(LogConfig::from_env(&env));
    confab_common::telemetry::init_tracing(&log);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let shutdown = confab_common::shutdown::cancel_on_signal();
    confab_auth_api::run(config, listener, shutdown).await?;
    Ok(())
}
