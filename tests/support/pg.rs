//! Ephemeral PostgreSQL clusters for tests, built from the system `initdb` and `postgres`.
//!
//! This module owns the life of the real database behind the RDS Proxy emulator: a temporary
//! directory (data dir + unix socket dir + server log), `initdb -A trust`, a server on a free
//! loopback port, readiness polling and cleanup.
//!
//! Cleanup works even for the process-wide [`shared_cluster`], whose static never drops: the
//! server is started by a small `sh` wrapper whose stdin is a pipe held by the test process.
//! When the test process exits (normally, by panic or by SIGKILL) the kernel closes the pipe,
//! the wrapper's `read` returns, and it stops the server (`SIGINT`, fast shutdown) and removes
//! the directory. When running as root the tools run as `postgres` through `runuser`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server gets to accept connections before the test panics.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// The stop-on-EOF wrapper. Positional args: postgres binary, data dir, port, log, root dir.
const WRAPPER: &str = r#"
"$1" -D "$2" -p "$3" >"$4" 2>&1 </dev/null &
pid=$!
read _ignored
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$5"
"#;

/// A running PostgreSQL 15 server on 127.0.0.1 with `trust` authentication.
#[derive(Debug)]
pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory holding the unix socket `.s.PGSQL.<port>`.
    pub socket_dir: PathBuf,
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    root_dir: PathBuf,
    log_file: PathBuf,
    /// Dropping this (or process exit) tells the wrapper to stop the server.
    stop: Mutex<Option<ChildStdin>>,
    wrapper: Mutex<Option<Child>>,
}

/// The cluster shared by every test of this process, started on first use (thread-safe).
pub fn shared_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

impl PgCluster {
    /// Creates and starts a new cluster; panics (with the server log) if it cannot.
    /// Dropping the value stops the server and deletes its directory.
    pub fn start() -> PgCluster {
        let mut last_log = String::new();
        // A free port can be taken between probing and binding: retry with a fresh cluster.
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(log) => {
                    let retry = log.contains("could not bind") || log.contains("in use");
                    last_log = log;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("PostgreSQL did not start within {STARTUP_DEADLINE:?}; server log:\n{last_log}");
    }

    fn try_start() -> Result<PgCluster, String> {
        let as_postgres = running_as_root();
        let root = tempfile::Builder::new()
            .prefix("rds-iam-sidecar-pg-")
            .tempdir()
            .expect("create temp dir for PostgreSQL")
            .keep();
        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        let log_file = root.join("server.log");
        std::fs::create_dir(&socket_dir).expect("create socket dir");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown -R postgres {}", root.display());
        }

        let initdb = find_binary("initdb");
        let out = pg_command(as_postgres, &initdb, &root)
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&root);
            panic!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let conf = format!(
            "\n# rds-iam-sidecar test settings\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 300\n\
             shared_buffers = 32MB\n\
             max_wal_size = 256MB\n\
             logging_collector = off\n\
             log_min_messages = warning\n",
            socket_dir.display()
        );
        append(&data_dir.join("postgresql.conf"), &conf);

        let port = free_port();
        let mut wrapper = pg_command(as_postgres, Path::new("sh"), &root)
            .arg("-c")
            .arg(WRAPPER)
            .arg("pg-wrapper")
            .arg(find_binary("postgres"))
            .arg(&data_dir)
            .arg(port.to_string())
            .arg(&log_file)
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C on the test run must not kill the wrapper before
            // it cleans up (it cleans up when our end of the pipe closes).
            .process_group(0)
            .spawn()
            .expect("spawn PostgreSQL wrapper");
        let stop = wrapper.stdin.take();
        let cluster = PgCluster {
            port,
            socket_dir,
            data_dir,
            root_dir: root,
            log_file,
            stop: Mutex::new(stop),
            wrapper: Mutex::new(Some(wrapper)),
        };
        // On failure the cluster drops here, which stops the server and removes the dir.
        cluster.wait_ready().map(|()| cluster)
    }

    /// libpq-style connection string for the superuser `postgres` over TCP.
    pub fn admin_conn_string(&self) -> String {
        self.conn_string("postgres", "postgres")
    }

    /// libpq-style connection string for `user` / `dbname` over TCP (trust auth).
    pub fn conn_string(&self, user: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Path of the server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_file
    }

    /// The server log so far (empty if unreadable).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// A tokio-postgres client connected as superuser; the connection task is spawned.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        self.client("postgres", "postgres").await
    }

    /// A tokio-postgres client connected directly (no emulator) as `user` to `dbname`.
    pub async fn client(&self, user: &str, dbname: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string(user, dbname), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to test PostgreSQL as {user}/{dbname}: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Waits (up to 15 s) until a statement holding `marker` (a unique comment) runs on the
    /// server: a fault or signal meant for a running statement is then not sent before it.
    pub async fn until_running(&self, marker: &str) {
        let admin = self.admin_client().await;
        let sql = "select count(*) from pg_stat_activity \
                   where state = 'active' and pid <> pg_backend_pid() and position($1 in query) > 0";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let running: i64 = admin
                .query_one(sql, &[&marker])
                .await
                .map(|row| row.get(0))
                .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"));
            if running > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the statement marked {marker} never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Runs SQL (one or more statements) as superuser; panics with the error on failure.
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.try_exec(sql).await {
            panic!("SQL failed on test PostgreSQL: {e}\n--- SQL ---\n{sql}");
        }
    }

    /// Runs SQL (one or more statements) as superuser.
    pub async fn try_exec(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.admin_client().await.batch_execute(sql).await
    }

    /// Creates a login role if it does not exist yet (safe to race between tests).
    pub async fn ensure_role(&self, role: &str) {
        let sql = format!("CREATE ROLE {} LOGIN", quote_ident(role));
        self.ignore_duplicate(&sql).await;
    }

    /// Creates a database owned by `owner` if it does not exist yet (safe to race).
    pub async fn ensure_database(&self, dbname: &str, owner: &str) {
        self.ensure_role(owner).await;
        let sql = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(dbname),
            quote_ident(owner)
        );
        self.ignore_duplicate(&sql).await;
    }

    async fn ignore_duplicate(&self, sql: &str) {
        use tokio_postgres::error::SqlState;
        match self.try_exec(sql).await {
            Ok(()) => {}
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => panic!("SQL failed on test PostgreSQL: {e}\n--- SQL ---\n{sql}"),
        }
    }

    /// Polls until the server accepts connections; on failure returns the server log.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let pg_isready = find_binary_opt("pg_isready");
        while Instant::now() < deadline {
            if self.wrapper_exited() {
                return Err(self.server_log());
            }
            // Before readiness only warnings and worse are logged: FATAL/PANIC means the
            // server gave up (port taken, bad config), no point waiting for the deadline.
            let log = self.server_log();
            if log.contains("FATAL:") || log.contains("PANIC:") {
                return Err(log);
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                let ready = match &pg_isready {
                    Some(bin) => Command::new(bin)
                        .args(["-h", "127.0.0.1", "-U", "postgres", "-t", "2", "-p"])
                        .arg(self.port.to_string())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false),
                    None => probe_startup(self.addr()),
                };
                if ready {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.server_log())
    }

    fn wrapper_exited(&self) -> bool {
        let mut guard = self.wrapper.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Closing the pipe makes the wrapper stop the server and remove the directory.
        drop(
            self.stop
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(mut child) = self
            .wrapper
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = child.wait();
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL tool, run as `postgres` when we are root, in `cwd`
/// (the tools complain when they cannot read the current directory).
fn pg_command(as_postgres: bool, program: &Path, cwd: &Path) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd);
    cmd
}

fn find_binary(name: &str) -> PathBuf {
    find_binary_opt(name).unwrap_or_else(|| {
        panic!("`{name}` not found on PATH or in /usr/lib/postgresql/*/bin (install Debian's postgresql)")
    })
}

/// Looks on PATH first, then in Debian's versioned directories (newest first). Absolute paths
/// matter because `runuser` may reset PATH.
fn find_binary_opt(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort_by(|a, b| b.cmp(a));
    std::env::split_paths(&path)
        .chain(debian)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Fallback readiness check without `pg_isready`: send a startup packet and expect an
/// authentication request ('R') or an error that is not "starting up".
fn probe_startup(addr: SocketAddr) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let mut packet = u32::try_from(body.len() + 4)
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&body);
    if s.write_all(&packet).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => buf[0] == b'R' && !String::from_utf8_lossy(&buf[..n]).contains("57P03"),
        _ => false,
    }
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
