//! The `confab-persister` binary: config, tracing, bind, then the library's `run`.

use confab_common::config::{exit_on_error, Env, LogConfig};
use confab_persister::{Config, PersisterError};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::process();
    let config = exit_on_error(Config::from_env(&env));
    let log = exit_on_error(LogConfig::from_env(&env));
    confab_common::telemetry::init_tracing(&log);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let shutdown = confab_common::shutdown::cancel_on_signal();
    match confab_persister::run(config, listener, shutdown).await {
        Ok(()) => Ok(()),
        // The test hook asked for a crash; make it a real one.
        Err(PersisterError::InjectedCrash) => std::process::abort(),
        Err(err) => Err(err.into()),
    }
}
