//! A private PostgreSQL server for tests: Debian's binaries, `initdb` into a temporary directory,
//! a free port on 127.0.0.1, the socket inside the directory; stopped (immediately) when dropped.
//!
//! Needs Debian's `postgresql` package: `bash tests/postgres/install.sh` installs it (without
//! starting the system's cluster), and `.ci/run` runs that before `cargo test`. A test that
//! starts a server carries `#[cfg_attr(missing_postgres, ignore = "…")]`: build.rs sets
//! `missing_postgres` when the binaries are not installed (never under CI), so without them
//! `cargo test` reports the test as ignored, with the command that installs them; if they are
//! missing when the test runs anyway, [`PgServer::start`] fails it saying the same.
//!
//! `initdb` and the server refuse to run as root. As root (CI), the directory is given to the
//! `postgres` user the package creates, and the server's commands run as that user through
//! `runuser`; `psql` connects over the socket with trust authentication as the superuser.
//!
//! A test that needs nothing of the server but a queue database of its own takes a
//! [`TestDatabase`]: one server per test binary, shared by its tests, each with its own database,
//! so a suite of many short tests does not pay an `initdb` each. A test that stops, restarts or
//! reconfigures the server starts its own [`PgServer`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::free_port;
use super::programs;

/// The role the queue connects as; owns [`DATABASE`].
pub const ROLE: &str = "smtp2gmail";
/// Its password (a fake value).
pub const PASSWORD: &str = "fake-pg-password";
/// The database created for the queue.
pub const DATABASE: &str = "queue";
/// The superuser's password over TCP (a fake value; `psql` uses the socket and needs none).
const SUPERUSER_PASSWORD: &str = "fake-pg-superuser-password";

/// How to get the binaries.
const HOW_TO_INSTALL: &str = "install them with `bash tests/postgres/install.sh` (Debian's \
     postgresql package, no system cluster started), or run everything with `bash .ci/run`";

/// A running private server: a test's own, or the one its binary's tests share
/// ([`TestDatabase`]).
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Root runs the server's commands as `postgres`.
    as_postgres: bool,
    running: bool,
    /// The port while the server is stopped (see [`PgServer::stop`]).
    reserved: Option<tokio::net::TcpSocket>,
}

impl PgServer {
    /// Creates a cluster, starts it and creates [`ROLE`] owning [`DATABASE`]. Panics, saying
    /// how to install them, when the PostgreSQL binaries are missing.
    pub fn start() -> PgServer {
        let Some(bin) = programs::postgres_binaries() else {
            panic!(
                "this test needs a PostgreSQL server: initdb, pg_ctl and psql are neither on PATH \
                 nor in /usr/lib/postgresql/*/bin; {HOW_TO_INSTALL}"
            );
        };
        let as_postgres = running_as_root();
        // As root the parent must be traversable by `postgres`: /tmp is, whatever TMPDIR says.
        let dir = if as_postgres {
            tempfile::Builder::new()
                .prefix("pg-test")
                .tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("pg-test").tempdir()
        }
        .expect("a temporary directory for PostgreSQL");
        std::fs::create_dir(dir.path().join("socket")).unwrap();
        std::fs::write(dir.path().join("pwfile"), SUPERUSER_PASSWORD).unwrap();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            for path in [
                dir.path(),
                &dir.path().join("socket"),
                &dir.path().join("pwfile"),
            ] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            as_postgres,
            running: false,
            reserved: None,
        };
        server.initdb();
        // A port can be taken between choosing and binding it: try a few.
        for attempt in 1..=3 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => break,
                Err(log) if attempt == 3 => panic!("PostgreSQL did not start:\n{log}"),
                Err(_) => continue,
            }
        }
        // Two runs: CREATE DATABASE refuses to be in the transaction one `-c` string is.
        server.psql(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"));
        server.psql(&format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"));
        server
    }

    /// The queue's URL: [`ROLE`] on [`DATABASE`] over TCP, TLS off (the server has none).
    pub fn url(&self) -> String {
        self.url_as(ROLE, PASSWORD, DATABASE)
    }

    /// A URL for any role, password and database on this server.
    pub fn url_as(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (for a test that configures the server, such as TLS).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs SQL as the superuser in the `postgres` database; returns the unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in `database`; panics with the error when it fails.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path().join("socket"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Turns TLS on with this certificate and key (PEM), restarting the server.
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) {
        let data = self.data_dir();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        // The server refuses a key others may read, or one it does not own.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        if self.as_postgres {
            let (uid, gid) = postgres_ids();
            for path in [&cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut current = std::fs::read_to_string(&conf).unwrap();
        current.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, current).unwrap();
        self.stop();
        self.start_again();
    }

    /// Stops the server cleanly (for outage tests); [`PgServer::start_again`] brings it back on
    /// the same port with the same data.
    ///
    /// The port stays taken meanwhile, by a socket bound to it but not listening: clients are
    /// refused as by a stopped server, but the kernel hands the port to no other test (a free
    /// port for another server, the source port of a connection), which made the restart fail
    /// with "Address already in use".
    pub fn stop(&mut self) {
        let output = self.pg_ctl(&["stop", "-m", "fast", "-w"]);
        assert!(output.status.success(), "pg_ctl stop: {}", text(&output));
        self.running = false;
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        // The server's closed connections linger in TIME_WAIT on the port.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(([127, 0, 0, 1], self.port).into())
            .expect("the stopped server's port is free");
        self.reserved = Some(socket);
    }

    /// Starts the stopped server again on the same port and data directory.
    pub fn start_again(&mut self) {
        self.reserved = None;
        if let Err(log) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again:\n{log}");
        }
    }

    fn initdb(&self) {
        let data = self.data_dir();
        let output = self.as_server_user(&self.bin.join("initdb"), |command| {
            command
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!(
                    "--pwfile={}",
                    self.dir.path().join("pwfile").display()
                ))
                .args(["-E", "UTF8", "--no-locale", "--no-sync"]);
        });
        assert!(output.status.success(), "initdb failed: {}", text(&output));
        // Appended by whoever runs the test: the file keeps its owner (postgres) and mode.
        let settings = format!(
            "\n# smtp2gmail tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             # Durability against power loss is not what these tests check.\nfsync = off\n\
             max_connections = 100\n",
            self.dir.path().join("socket").display()
        );
        let conf = data.join("postgresql.conf");
        let mut current = std::fs::read_to_string(&conf).unwrap();
        current.push_str(&settings);
        std::fs::write(&conf, current).unwrap();
    }

    /// `pg_ctl start -w`: returns once the server accepts connections, or its log.
    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("server.log");
        let output = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log.display().to_string(),
            "-o",
            &format!("-p {}", self.port),
        ]);
        if output.status.success() {
            self.running = true;
            return Ok(());
        }
        Err(format!(
            "{}\n{}",
            text(&output),
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        self.as_server_user(&self.bin.join("pg_ctl"), |command| {
            command.arg("-D").arg(&data).args(args);
        })
    }

    /// Runs `program` as the user that owns the cluster.
    fn as_server_user(&self, program: &Path, args: impl FnOnce(&mut Command)) -> Output {
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        args(&mut command);
        // Whoever runs it must be able to enter the working directory.
        command.current_dir(self.dir.path());
        // The server keeps running after pg_ctl returns; it must not hold the test's pipes.
        command.stdin(std::process::Stdio::null());
        command
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()))
    }
}

/// A database of its own for one test, owned by [`ROLE`], on a server the tests of the test
/// binary share. The server is started by the first test that asks and lives as long as the
/// binary: a watchdog process stops it and removes its directory once the binary has exited,
/// however it exits (a `static` is never dropped, and a binary killed by a timeout must not leave
/// a server running either).
pub struct TestDatabase {
    server: &'static PgServer,
    name: String,
}

impl TestDatabase {
    /// Creates a new database on the shared server, starting the server first if this is the
    /// binary's first. Panics, saying how to install them, when the PostgreSQL binaries are
    /// missing.
    pub fn create() -> TestDatabase {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let server = SHARED.get_or_init(|| {
            let server = PgServer::start();
            server.stop_when_this_process_exits();
            server
        });
        let name = format!("queue_{}", CREATED.fetch_add(1, Ordering::Relaxed));
        server.psql(&format!("CREATE DATABASE {name} OWNER {ROLE}"));
        TestDatabase { server, name }
    }

    /// The queue's URL for this database: [`ROLE`] over TCP, TLS off.
    pub fn url(&self) -> String {
        self.server.url_as(ROLE, PASSWORD, &self.name)
    }

    /// Runs SQL as the superuser in this database; the unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql_in(&self.name, sql)
    }
}

impl PgServer {
    /// Leaves a watchdog (`sh`) that waits for this process to end, then stops the server at
    /// once and removes its directory. It polls (`kill -0`): a process can wait only for its own
    /// children, and the watchdog must outlive this process.
    fn stop_when_this_process_exits(&self) {
        let quote = |arg: &Path| format!("'{}'", arg.display());
        let mut stop = Vec::new();
        if self.as_postgres {
            stop.push("runuser -u postgres --".to_string());
        }
        stop.push(quote(&self.bin.join("pg_ctl")));
        stop.push(format!("-D {}", quote(&self.data_dir())));
        stop.push("stop -m immediate -w".to_string());
        let dir = quote(self.dir.path());
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; cd {dir} && {stop}; cd / && rm -rf {dir}",
            pid = std::process::id(),
            stop = stop.join(" "),
        );
        // In the background of a shell that ends at once: the watchdog is nobody's child to reap.
        let started = Command::new("sh")
            .args(["-c", &format!("({script}) &")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("sh runs");
        assert!(started.success(), "the watchdog starts: {started}");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing to keep, and the test should not wait for a checkpoint.
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

/// True when the effective user is root (from /proc, to need no libc binding).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// The uid and gid of the `postgres` user Debian's package creates.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            output.status.success(),
            "running as root needs the `postgres` user (Debian's postgresql package creates it): {}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
