//! `sslmode` against a private PostgreSQL with TLS: a throwaway cluster whose
//! certificate is signed by a CA made here with the openssl CLI, for the host
//! name `localhost` only.
//!
//! - `verify-full` with the right CA and host connects; with another CA, or
//!   by the address `127.0.0.1` (not in the certificate), it fails.
//! - `verify-ca` checks the chain but not the name: `127.0.0.1` passes,
//!   another CA fails.
//! - `require` connects with TLS and checks nothing.
//!
//! Needs PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`, which
//! `ops/dev` installs) and openssl; run as root it runs the cluster as the
//! `postgres` user, like `ops/dev`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (ops/dev installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the cluster's owner: `postgres` when we are root.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// Makes a CA (`<name>.pem`, `<name>.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The private cluster; stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Self {
        let bin = pg_bindir();
        let dir = PathBuf::from(format!(
            "/var/tmp/confab-tls-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&dir));
        }
        run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
        run(as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {d} -c ssl=on \
             -c ssl_cert_file={d}/server.pem -c ssl_key_file={d}/server.key",
            d = dir.display()
        );
        run(as_pg(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        Self { dir, bin, port }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn cert(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects and says whether the session is encrypted; `Err` with the reason.
async fn connect(url: &str) -> Result<bool, String> {
    let client = confab_common::db::connect(url)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmodes_verify_against_a_private_ca() {
    let pg = Cluster::start();
    let ca = pg.cert("ca.pem");
    let other = pg.cert("other-ca.pem");

    // verify-full: right CA and host.
    let ok = connect(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert_eq!(ok, Ok(true), "verify-full with the right CA and host");
    // ... a pool built from the same URL verifies too.
    let pool = confab_common::db::pool(
        &pg.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        1,
    )
    .unwrap();
    pool.get().await.expect("pooled verify-full connection");

    // verify-full: wrong CA, wrong host.
    let err = connect(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await;
    assert!(err.is_err(), "verify-full with another CA: {err:?}");
    let err = connect(&pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        err.is_err(),
        "verify-full with a host the certificate does not name: {err:?}"
    );
    // The Mozilla roots do not know the private CA.
    let err = connect(&pg.url("localhost", "sslmode=verify-full")).await;
    assert!(err.is_err(), "verify-full with the default roots: {err:?}");

    // verify-ca: the chain, not the name.
    let ok = connect(&pg.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await;
    assert_eq!(ok, Ok(true), "verify-ca ignores the host name");
    let err = connect(&pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .await;
    assert!(err.is_err(), "verify-ca with another CA: {err:?}");

    // require: encrypted, nothing verified (what Supabase's strings ask for).
    let ok = connect(&pg.url("127.0.0.1", "sslmode=require")).await;
    assert_eq!(ok, Ok(true), "require");
    // libpq: require with a root certificate verifies the chain.
    let err = connect(&pg.url("127.0.0.1", &format!("sslmode=require&sslrootcert={other}"))).await;
    assert!(
        err.is_err(),
        "require with sslrootcert is verify-ca: {err:?}"
    );
}
