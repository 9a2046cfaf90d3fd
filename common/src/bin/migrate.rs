//! `confab-migrate`: applies the SQL migrations to `DATABASE_URL` and exits.

use anyhow::Context;
use confab_common::config::{exit_on_error, Env, LogConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let env = Env::process();
    confab_common::telemetry::init_tracing(&exit_on_error(LogConfig::from_env(&env)));
    let url = exit_on_error(env.required("DATABASE_URL"));
    let mut client = confab_common::db::connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
    let applied = confab_common::db::migrate(&mut client)
        .await
        .context("applying migrations")?;
    tracing::info!(applied = applied.len(), "migrations up to date");
    Ok(())
}
