//! PostgreSQL: a bb8 pool over tokio-postgres with TLS, and the migrations.
//!
//! `sslmode=require` encrypts without verifying the server certificate, as
//! libpq does; that is what Supabase's connection strings ask for.
//! `sslmode=prefer` (the default) tries TLS and falls back to plain TCP.

use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A pool of Postgres connections.
pub type PgPool = bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// A database problem.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    Url(tokio_postgres::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

impl From<bb8::RunError<tokio_postgres::Error>> for DbError {
    fn from(err: bb8::RunError<tokio_postgres::Error>) -> Self {
        match err {
            bb8::RunError::User(e) => Self::Postgres(e),
            bb8::RunError::TimedOut => Self::Pool("timed out waiting for a connection".into()),
        }
    }
}

/// Accepts any certificate: libpq's `sslmode=require` semantics.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS connector used for every Postgres connection.
pub fn tls() -> MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse().map_err(DbError::Url)
}

/// Builds a pool of at most `max_size` connections. Connections are made
/// lazily, so this succeeds while the database is down.
pub fn pool(url: &str, max_size: u32) -> Result<PgPool, DbError> {
    let config = parse_url(url)?;
    let manager = PostgresConnectionManager::new(config, tls());
    Ok(bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(false)
        .build_unchecked(manager))
}

/// Opens one connection outside any pool and drives it in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let config = parse_url(url)?;
    let (client, connection) = config.connect(tls()).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "postgres connection closed");
        }
    });
    Ok(client)
}

/// The migrations, in order. Each runs once, in its own transaction.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_positions.sql",
        include_str!("../../migrations/0002_positions.sql"),
    ),
];

/// Applies every migration not yet recorded in `schema_migrations`. Returns
/// the names of those applied now. Safe to run concurrently: an advisory lock
/// serialises runners.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<&'static str>, DbError> {
    const LOCK: i64 = 0x636f_6e66_6162; // "confab"
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await?;
    let result = apply_pending(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await?;
    result
}

async fn apply_pending(client: &mut tokio_postgres::Client) -> Result<Vec<&'static str>, DbError> {
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| DbError::Migration { name, source })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "migration applied");
        applied.push(name);
    }
    Ok(applied)
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_part_end], dbname);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_or_adds_the_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/old?sslmode=require", "new"),
            "postgres://u:p@h:5432/new?sslmode=require"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "new"),
            "postgres://u@h:5432/new"
        );
        assert_eq!(
            with_database("postgresql://u@%2Ftmp:5432/x", "y"),
            "postgresql://u@%2Ftmp:5432/y"
        );
    }

    #[test]
    fn sslmode_require_parses() {
        assert!(parse_url("postgres://u:p@localhost:5432/db?sslmode=require").is_ok());
        assert!(parse_url("not a url at all ::").is_err());
    }
}
