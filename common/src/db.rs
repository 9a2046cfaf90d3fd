//! PostgreSQL: a bb8 pool over tokio-postgres with TLS, and the migrations.
//!
//! TLS follows libpq's `sslmode` (in the URL's query or a `key=value`
//! string):
//! - `disable`: plain TCP; `prefer` (the default): TLS when the server offers
//!   it, without verifying its certificate, else plain TCP.
//! - `require`: TLS, certificate not verified (what Supabase's connection
//!   strings ask for). As in libpq, giving `sslrootcert` makes it `verify-ca`.
//! - `verify-ca`: TLS, the certificate chain must lead to a trusted root; the
//!   host name is not checked.
//! - `verify-full`: `verify-ca` plus the certificate must name the host
//!   connected to.
//!
//! The trusted roots are the PEM file `sslrootcert=<path>` (for Supabase, the
//! CA certificate its dashboard offers), or with `sslrootcert=system` or none
//! the Mozilla root set (webpki-roots). tokio-postgres itself knows only
//! `disable`, `prefer` and `require`, so the verifying modes are read here and
//! handed to it as `require` with a verifying TLS connector.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A pool of Postgres connections.
pub type PgPool = bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// A database problem.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    Url(tokio_postgres::Error),
    #[error("invalid DATABASE_URL: {0}")]
    Tls(String),
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

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(raw: &str) -> Result<Self, DbError> {
        match raw {
            "disable" => Ok(Self::Disable),
            "allow" | "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(DbError::Tls(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }
}

/// The TLS settings read from a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The effective mode (`require` with `sslrootcert` is `verify-ca`).
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted roots; `None` or `system` means
    /// the Mozilla root set.
    pub root_cert: Option<PathBuf>,
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

/// `sslmode=verify-ca`: the chain must lead to a trusted root, but the
/// certificate need not name the host. webpki checks the chain before the
/// name, so a name mismatch is the only error it may report for a chain that
/// verified.
#[derive(Debug)]
struct VerifyChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS connector that accepts any certificate (`sslmode=require` or
/// `prefer`).
pub fn tls() -> MakeRustlsConnect {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

fn root_store(root_cert: Option<&PathBuf>) -> Result<RootCertStore, DbError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| DbError::Tls(format!("sslrootcert={}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DbError::Tls(format!(
                    "sslrootcert={}: no usable certificate in the file",
                    path.display()
                )));
            }
        }
    }
    Ok(roots)
}

/// The TLS connector for `settings`.
pub fn tls_for(settings: &TlsSettings) -> Result<MakeRustlsConnect, DbError> {
    if matches!(
        settings.mode,
        SslMode::Disable | SslMode::Prefer | SslMode::Require
    ) {
        return Ok(tls());
    }
    let provider = provider();
    let roots = Arc::new(root_store(settings.root_cert.as_ref())?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| DbError::Tls(format!("trusted roots: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if settings.mode == SslMode::VerifyFull {
        webpki
    } else {
        Arc::new(VerifyChainOnly(webpki))
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits the TLS settings off a connection string: returns what
/// tokio-postgres can parse (the verifying modes become `require`) and the
/// settings.
pub fn split_tls(url: &str) -> Result<(String, TlsSettings), DbError> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, DbError> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" => root_cert = Some(value.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&percent_decode(k), &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // key=value form; values with quotes or spaces are left to tokio-postgres.
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k.trim(), v.trim())? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    let root_cert = root_cert
        .filter(|r| !r.is_empty() && r != "system")
        .map(PathBuf::from);
    let mode = match (mode.unwrap_or(SslMode::Prefer), &root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let pg_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    let sep = if url.starts_with("postgres") {
        if rest.contains('?') {
            "&"
        } else {
            "?"
        }
    } else {
        " "
    };
    Ok((
        format!("{rest}{sep}sslmode={pg_mode}"),
        TlsSettings { mode, root_cert },
    ))
}

/// Parses a `postgres://` URL (or `key=value` string) into what
/// tokio-postgres connects with and the TLS connector its `sslmode` asks for.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DbError> {
    let (rest, settings) = split_tls(url)?;
    let config = rest.parse().map_err(DbError::Url)?;
    Ok((config, tls_for(&settings)?))
}

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    parse(url).map(|(config, _)| config)
}

/// How a pool behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// The most connections held.
    pub max_size: u32,
    /// How long a caller waits for a connection before it fails.
    pub acquire_timeout: Duration,
    /// `statement_timeout` set on every new connection, so a hung or slow
    /// query fails instead of holding its caller.
    pub statement_timeout: Option<Duration>,
}

impl PoolOptions {
    /// `max_size` connections, a 5 s checkout timeout and no statement timeout.
    pub fn new(max_size: u32) -> Self {
        Self {
            max_size,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: None,
        }
    }
}

/// Sets session settings on each new pooled connection.
#[derive(Debug)]
struct SessionSettings {
    /// `SET ...` statements run once per connection.
    sql: String,
}

impl bb8::CustomizeConnection<tokio_postgres::Client, tokio_postgres::Error> for SessionSettings {
    fn on_acquire<'a>(
        &'a self,
        client: &'a mut tokio_postgres::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>,
    > {
        Box::pin(async move { client.batch_execute(&self.sql).await })
    }
}

/// Builds a pool of at most `max_size` connections. Connections are made
/// lazily, so this succeeds while the database is down.
pub fn pool(url: &str, max_size: u32) -> Result<PgPool, DbError> {
    pool_with(url, &PoolOptions::new(max_size))
}

/// Builds a pool with `options`. Connections are made lazily.
pub fn pool_with(url: &str, options: &PoolOptions) -> Result<PgPool, DbError> {
    let (config, tls) = parse(url)?;
    let manager = PostgresConnectionManager::new(config, tls);
    let mut builder = bb8::Pool::builder()
        .max_size(options.max_size)
        .connection_timeout(options.acquire_timeout.max(Duration::from_millis(1)))
        .test_on_check_out(false);
    if let Some(timeout) = options.statement_timeout {
        builder = builder.connection_customizer(Box::new(SessionSettings {
            sql: format!("SET statement_timeout = {}", timeout.as_millis().max(1)),
        }));
    }
    Ok(builder.build_unchecked(manager))
}

/// Opens one connection outside any pool and drives it in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let (config, tls) = parse(url)?;
    let (client, connection) = config.connect(tls).await?;
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
    (
        3,
        "0003_room_list.sql",
        include_str!("../../migrations/0003_room_list.sql"),
    ),
    (
        4,
        "0004_messages.sql",
        include_str!("../../migrations/0004_messages.sql"),
    ),
    (
        5,
        "0005_people.sql",
        include_str!("../../migrations/0005_people.sql"),
    ),
    (
        6,
        "0006_unread_deleted.sql",
        include_str!("../../migrations/0006_unread_deleted.sql"),
    ),
    (
        7,
        "0007_search_by_room.sql",
        include_str!("../../migrations/0007_search_by_room.sql"),
    ),
    (
        8,
        "0008_counter_fillfactor.sql",
        include_str!("../../migrations/0008_counter_fillfactor.sql"),
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

    #[test]
    fn verifying_sslmodes_parse_and_become_require_for_tokio_postgres() {
        let (rest, tls) = split_tls(
            "postgres://u:p@db.example.com:5432/db?sslmode=verify-full&application_name=x",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/db?application_name=x&sslmode=require"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, None);

        let (rest, tls) =
            split_tls("postgres://u@h/db?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-ca").unwrap();
        assert_eq!(rest, "postgres://u@h/db?sslmode=require");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));

        // libpq: require with a root certificate verifies the chain.
        let (_, tls) = split_tls("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        let (_, tls) =
            split_tls("postgres://u@h/db?sslmode=verify-full&sslrootcert=system").unwrap();
        assert_eq!((tls.mode, tls.root_cert), (SslMode::VerifyFull, None));

        let (rest, tls) = split_tls("host=h user=u sslmode=verify-full dbname=d").unwrap();
        assert_eq!(rest, "host=h user=u dbname=d sslmode=require");
        assert_eq!(tls.mode, SslMode::VerifyFull);

        let (rest, tls) = split_tls("postgres://u@h/db").unwrap();
        assert_eq!(rest, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(tls.mode, SslMode::Prefer);

        assert!(parse_url("postgres://u@h/db?sslmode=verify-full").is_ok());
        assert!(parse_url("postgres://u@h/db?sslmode=bogus").is_err());
        assert!(
            parse_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent.pem").is_err()
        );
    }
}
