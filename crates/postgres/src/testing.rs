//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, started on a free port of
//! 127.0.0.1 (password auth over TCP, trust over its private unix socket; `wal_level = logical`,
//! so tables can be followed), stopped and deleted on drop. Run as root, the server runs as the `postgres` user (PostgreSQL refuses root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The password of the `spillway` superuser that [`TestServer`] creates.
pub const PASSWORD: &str = "spillway-test";

/// A running server; stopped and deleted on drop.
pub struct TestServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl TestServer {
    /// Starts a server (a second or two). Fails with a message saying what to install when the
    /// PostgreSQL server binaries are missing.
    pub fn start() -> Result<TestServer, String> {
        let bin = server_bin()
            .ok_or("PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package")?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new().prefix("spillway-pg-").tempdir().map_err(|e| e.to_string())?;
        if as_postgres {
            chown_postgres(dir.path())?;
        }
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
        if as_postgres {
            chown_postgres(&pwfile)?;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let server = TestServer { dir, bin, port, as_postgres };
        server.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "spillway",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB -c max_connections=30 \
             -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10",
            server.dir.path().display()
        );
        server.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &options,
                "-l",
                &server.dir.path().join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        Ok(server)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser, with the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://spillway:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL in database `db` with `psql`, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let out = Command::new(if psql.exists() { psql } else { PathBuf::from("psql") })
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url(db), "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A command running client tool `name` (`pg_recvlogical`, ...) of the server's binaries.
    pub fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        Command::new(if exe.exists() { exe } else { PathBuf::from(name) })
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) -> Result<(), String> {
        self.psql("postgres", &format!("CREATE DATABASE {}", crate::quote_ident(db))).map(|_| ())
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().map_err(|e| format!("{tool}: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            return Err(format!(
                "{tool} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run("pg_ctl", &["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "stop"]);
    }
}

/// The folder holding `initdb` and `pg_ctl`: `$PG_BIN`, then PATH, then Debian's
/// `/usr/lib/postgresql/<newest>/bin`.
fn server_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    candidates.extend(versions.into_iter().rev());
    candidates.into_iter().find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()).map(|d| {
        // Debian links initdb into PATH but not pg_ctl's siblings: use the real folder.
        std::fs::canonicalize(d.join("initdb")).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or(d)
    })
}

fn chown_postgres(path: &Path) -> Result<(), String> {
    let status = Command::new("chown").args(["postgres:postgres"]).arg(path).status().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("chown postgres {} failed", path.display()));
    }
    Ok(())
}
