//! Real database and cache servers from Debian's packages (installed by
//! `cargo xtask setup`), started by the tests as throwaway unprivileged
//! instances on loopback ports with their data in a temporary directory,
//! and stopped (data removed) on drop.

use std::{
    fs,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::prometheus::free_port;

/// How long a server may take to accept connections.
const STARTUP: Duration = Duration::from_secs(30);
/// The Debian PostgreSQL major version `cargo xtask setup` installs.
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// redis-server.
    Redis,
    /// PostgreSQL (`initdb` then `postgres`, as the `postgres` user).
    Postgres,
    /// memcached.
    Memcached,
    /// MariaDB (`mariadb-install-db` then `mariadbd`, as the `mysql` user;
    /// `root` without a password).
    Mariadb,
}

/// A running server on 127.0.0.1.
pub struct DbServer {
    child: Child,
    dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// Which server it is.
    pub kind: Kind,
}

impl DbServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start(kind: Kind) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sonde-db-{kind:?}-{}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let port_text = port.to_string();
        let mut command = match kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &port_text])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(&dir);
                c
            }
            Kind::Memcached => {
                let mut c = Command::new("memcached");
                c.args([
                    "-l",
                    "127.0.0.1",
                    "-p",
                    &port_text,
                    "-U",
                    "0",
                    "-u",
                    "nobody",
                ]);
                c
            }
            Kind::Postgres => postgres_command(&dir, &port_text),
            Kind::Mariadb => mariadb_command(&dir, &port_text),
        };
        // A group of its own, signalled whole on drop: `runuser` does not
        // pass every signal on, and a server it leaves behind outlives the test.
        let child = command
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e} (run `cargo xtask setup`)"));
        let server = Self {
            child,
            dir,
            port,
            kind,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen on {} within {STARTUP:?}",
                self.kind,
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `initdb` into `dir` (trust authentication, user `sonde`), then the
/// server command. PostgreSQL refuses to run as root: both run as the
/// `postgres` user Debian's package creates.
fn postgres_command(dir: &Path, port: &str) -> Command {
    let data = dir.join("data");
    let chown = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown {}", dir.display());
    let initdb = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{POSTGRES_BIN}/initdb"))
        .args(["-A", "trust", "-U", "sonde", "--no-sync", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("initdb: {e} (run `cargo xtask setup`)"));
    assert!(initdb.success(), "initdb failed");
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(format!("{POSTGRES_BIN}/postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", port, "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
    c
}

/// `mariadb-install-db` into `dir`, then the server command, both as the
/// `mysql` user Debian's package creates.
fn mariadb_command(dir: &Path, port: &str) -> Command {
    let data = dir.join("data");
    let chown = Command::new("chown")
        .args(["-R", "mysql"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown {}", dir.display());
    let install = Command::new("runuser")
        .args(["-u", "mysql", "--", "mariadb-install-db", "--no-defaults"])
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("mariadb-install-db: {e} (run `cargo xtask setup`)"));
    assert!(install.success(), "mariadb-install-db failed");
    let mut c = Command::new("runuser");
    c.args(["-u", "mysql", "--", "mariadbd", "--no-defaults"])
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--port={port}"))
        .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=16M"]);
    c
}

impl Drop for DbServer {
    fn drop(&mut self) {
        // The signal that makes each server shut down at once (MariaDB
        // ignores SIGINT; SIGTERM would make PostgreSQL wait for its
        // clients), sent to the whole group: `runuser` and the server.
        let signal = if self.kind == Kind::Mariadb {
            "-TERM"
        } else {
            "-INT"
        };
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
