//! An RDS Proxy emulator: the upstream the sidecar talks to in tests and in the local demo.
//!
//! This module owns the emulated proxy's behaviour (DESIGN.md §4–§7):
//! - answers SSLRequest with 'S' and a rustls handshake (certificate for an RDS-like host name),
//!   or with 'N' when no certificate is configured; GSSENCRequest with 'N';
//! - refuses a plain StartupMessage when TLS is configured ("This RDS Proxy requires TLS
//!   connections"), and `options` and every startup parameter RDS Proxy does not support
//!   (FATAL 0A000 "Feature not supported: RDS Proxy currently doesn’t support …");
//! - demands AuthenticationCleartextPassword and checks the password as an RDS IAM token with
//!   the independent verifier in [`super::sigv4`] (access keys re-read on every login so tests
//!   can rotate them), or as a fixed password in [`EmulatorAuth::Password`] mode;
//! - answers failures like RDS Proxy (FATAL 28P01 "The IAM authentication failed for the role
//!   …") and relays successful sessions byte for byte to a real PostgreSQL on loopback, sending
//!   it the client's startup parameters (PostgreSQL trusts loopback), without PostgreSQL's
//!   BackendKeyData, and watches each session for what pins it ([`super::proxy_session`]);
//! - throttles IAM logins above a rate shared by all connections, with RDS Proxy's message
//!   ([`super::login_throttle`]);
//! - ignores CancelRequest, as RDS Proxy does (it issued no keys);
//! - counts connections, logins, rejections, ignored cancels and pinned sessions so tests can
//!   prove pooling, retries and that the sidecar never pins.
//!
//! [`EmulatorOptions::plain_postgres`] turns the RDS Proxy strictness off where a test needs a
//! plain PostgreSQL behind the same TLS and IAM front: any startup parameter accepted,
//! PostgreSQL's BackendKeyData passed on and cancels forwarded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::live_sockets::LiveSockets;
use super::login_throttle::{LoginSecond, LoginThrottle, THROTTLED_MESSAGE};
use super::proxy_session::{PinCounters, relay, relay_login};
use super::sigv4::{Expectation, verify_token};
use super::wire;

/// Endpoint host name the emulator pretends to be by default.
pub const DEFAULT_ENDPOINT_HOST: &str = "mydb.proxy-abc123.us-east-1.rds.amazonaws.com";
/// Region of [`DEFAULT_ENDPOINT_HOST`].
pub const DEFAULT_REGION: &str = "us-east-1";

/// Startup parameters RDS Proxy accepts; anything else is refused with 0A000.
pub const SUPPORTED_STARTUP_PARAMS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
];

/// How long a client may take from TCP accept to a complete login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Access key id → secret access key, shared with the test so it can rotate keys.
pub type KeyMap = Arc<Mutex<HashMap<String, String>>>;

/// How the emulator checks the cleartext password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EmulatorAuth {
    /// The password must be a valid RDS IAM token for the endpoint, region and user.
    #[default]
    Iam,
    /// The password must equal this string (password-mode tests).
    Password(String),
}

/// Settings for [`Emulator::start`].
#[derive(Debug)]
pub struct EmulatorOptions {
    /// Host name tokens must be signed for (and the certificate should carry).
    pub endpoint_host: String,
    /// Port that must appear in the token (not the port the emulator listens on).
    pub endpoint_port: u16,
    /// Region that must appear in the token's credential scope.
    pub region: String,
    /// Certificate chain and key; `None` answers SSLRequest with 'N' and allows plain logins.
    pub tls: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Port of the real PostgreSQL on 127.0.0.1 that sessions are relayed to.
    pub backend_port: u16,
    /// Known access keys, re-read on every login.
    pub keys: KeyMap,
    /// Token or fixed-password check.
    pub auth: EmulatorAuth,
    /// Behave as a plain PostgreSQL behind the proxy's TLS and IAM front: any startup
    /// parameter, BackendKeyData passed on, cancels forwarded.
    pub plain_postgres: bool,
    /// Logins per second let through, across all connections; more are refused with RDS
    /// Proxy's throttling message. `None`: no limit.
    pub login_rate_limit: Option<u32>,
    /// The port to listen on (127.0.0.1); 0 for any free one.
    pub listen_port: u16,
    /// [`Emulator::kill_connections`] shuts every socket down at the same instant (through
    /// duplicated descriptors, [`super::live_sockets`]), as a dying proxy process does, instead
    /// of ending each session's task in turn (which takes ~270 ms for 250 sessions on a busy
    /// machine). For the fleet benchmark; off in tests, where holding a duplicate of every
    /// socket made faults.rs's forwarded-cancel test fail about one run in five under four
    /// test threads (not understood yet: see docs/ARCHITECTURE.md).
    pub instant_kill: bool,
    /// RDS Proxy's IdleClientTimeout (1800 s by default): a client connection that sends
    /// nothing for this long is closed, with no message. `None`: never.
    pub idle_client_timeout: Option<std::time::Duration>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            endpoint_host: DEFAULT_ENDPOINT_HOST.to_owned(),
            endpoint_port: 5432,
            region: DEFAULT_REGION.to_owned(),
            tls: None,
            backend_port: 5432,
            keys: KeyMap::default(),
            auth: EmulatorAuth::Iam,
            plain_postgres: false,
            login_rate_limit: None,
            listen_port: 0,
            instant_kill: false,
            idle_client_timeout: None,
        }
    }
}

/// One accepted login, as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// Startup parameters in the order the client sent them.
    pub params: Vec<(String, String)>,
    /// Access key id of the token (`None` in password mode).
    pub access_key_id: Option<String>,
    /// Session token carried by the token, if any.
    pub session_token: Option<String>,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// When the password arrived.
    pub at: Instant,
}

impl LoginRecord {
    /// Value of a startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running emulator. Dropping it stops accepting and closes every session it relays.
pub struct Emulator {
    /// Where the emulator listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("endpoint", &self.endpoint())
            .field("connections", &self.connections())
            .field("logins", &self.logins())
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

struct Shared {
    endpoint_host: String,
    endpoint_port: u16,
    region: String,
    tls: Option<TlsAcceptor>,
    backend_port: u16,
    keys: KeyMap,
    auth: EmulatorAuth,
    plain_postgres: bool,
    pins: PinCounters,
    ignored_cancels: AtomicU64,
    connections: AtomicU64,
    active: AtomicU64,
    logins: AtomicU64,
    rejected: AtomicU64,
    cancels: AtomicU64,
    /// How long a cancel waits before it is forwarded (see [`Emulator::delay_cancels`]).
    cancel_delay_ms: AtomicU64,
    tls_failures: AtomicU64,
    throttle: LoginThrottle,
    rejections: Mutex<Vec<String>>,
    accepted: Mutex<Vec<LoginRecord>>,
    kill: watch::Sender<u64>,
    live: Arc<LiveSockets>,
    instant_kill: bool,
    stall: watch::Sender<u64>,
    idle_client_timeout: Option<std::time::Duration>,
}

impl Emulator {
    /// Binds 127.0.0.1:0 and starts accepting in a spawned task.
    pub async fn start(opts: EmulatorOptions) -> Emulator {
        let tls = opts.tls.map(|(certs, key)| {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("emulator certificate and key must match");
            TlsAcceptor::from(Arc::new(config))
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, opts.listen_port))
            .await
            .expect("bind emulator listener on 127.0.0.1");
        let addr = listener.local_addr().expect("emulator listener address");
        let shared = Arc::new(Shared {
            endpoint_host: opts.endpoint_host,
            endpoint_port: opts.endpoint_port,
            region: opts.region,
            tls,
            backend_port: opts.backend_port,
            keys: opts.keys,
            auth: opts.auth,
            plain_postgres: opts.plain_postgres,
            pins: PinCounters::default(),
            ignored_cancels: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            active: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            cancel_delay_ms: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            throttle: LoginThrottle::new(opts.login_rate_limit),
            rejections: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            kill: watch::channel(0).0,
            live: Arc::default(),
            instant_kill: opts.instant_kill,
            idle_client_timeout: opts.idle_client_timeout,
            stall: watch::channel(0).0,
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Emulator {
            addr,
            shared,
            accept_task,
        }
    }

    /// `HOST:PORT` tokens must be signed for.
    pub fn endpoint(&self) -> String {
        format!(
            "{}:{}",
            self.shared.endpoint_host, self.shared.endpoint_port
        )
    }

    /// Successful logins (token/password accepted and the backend reached).
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Logins refused after the startup packet arrived: bad token or password, unsupported
    /// startup parameter, plain-text startup on a TLS proxy, throttling.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections currently open.
    pub fn active(&self) -> u64 {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// CancelRequests forwarded to the backend.
    pub fn cancels(&self) -> u64 {
        self.shared.cancels.load(Ordering::SeqCst)
    }

    /// From now on a CancelRequest reaches the backend `delay` after it arrived: a slow path to
    /// the server (on a real network the cancel's own connection and TLS handshake take round
    /// trips), during which the cancelled statement may end by itself.
    pub fn delay_cancels(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.cancel_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// CancelRequests ignored, as RDS Proxy ignores them.
    pub fn ignored_cancels(&self) -> u64 {
        self.shared.ignored_cancels.load(Ordering::SeqCst)
    }

    /// Sessions RDS Proxy would have pinned to their database connection.
    pub fn pinned_sessions(&self) -> u64 {
        self.shared.pins.pinned.load(Ordering::SeqCst)
    }

    /// RDS Proxy's log line for each pinned session, oldest first.
    pub fn pin_log(&self) -> Vec<String> {
        lock(&self.shared.pins.log).clone()
    }

    /// DISCARD statements the sessions sent.
    pub fn discards(&self) -> u64 {
        self.shared.pins.discards.load(Ordering::SeqCst)
    }

    /// Connections closed with a Terminate message (a goodbye, not a dropped socket).
    pub fn terminates(&self) -> u64 {
        self.shared.pins.terminates.load(Ordering::SeqCst)
    }

    /// Parse messages that named their statement.
    pub fn named_parses(&self) -> u64 {
        self.shared.pins.named_parses.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected the certificate).
    pub fn tls_failures(&self) -> u64 {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// Adds (or replaces) an access key.
    pub fn add_key(&self, access_key_id: &str, secret: &str) {
        lock(&self.shared.keys).insert(access_key_id.to_owned(), secret.to_owned());
    }

    /// Forgets an access key; tokens signed with it are rejected from now on.
    pub fn remove_key(&self, access_key_id: &str) {
        lock(&self.shared.keys).remove(access_key_id);
    }

    /// The shared key map (the same `Arc` as in the options).
    pub fn keys(&self) -> KeyMap {
        Arc::clone(&self.shared.keys)
    }

    /// Reason for the most recent rejection, prefixed with the user (`alice: signature …`).
    pub fn last_rejection(&self) -> Option<String> {
        lock(&self.shared.rejections).last().cloned()
    }

    /// Reasons for all rejections so far, oldest first.
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.shared.rejections).clone()
    }

    /// Every accepted login so far, oldest first.
    pub fn accepted_logins(&self) -> Vec<LoginRecord> {
        lock(&self.shared.accepted).clone()
    }

    /// Refuses the next `n` otherwise valid logins the way RDS Proxy does when IAM
    /// authentication is throttled ("too many competing requests").
    pub fn throttle_next_logins(&self, n: u64) {
        self.shared.throttle.throttle_next(n);
    }

    /// Logins let through and throttled in each second since the emulator started.
    pub fn login_seconds(&self) -> Vec<LoginSecond> {
        self.shared.throttle.per_second()
    }

    /// Whole seconds since the emulator started (the index into [`Self::login_seconds`]).
    pub fn second_now(&self) -> usize {
        self.shared.throttle.second_now()
    }

    /// Makes every relayed session open now stop moving bytes, with its sockets left open (a
    /// hung proxy: `kill -STOP`). Sessions opened later are served normally.
    pub fn stall_connections(&self) {
        self.shared.stall.send_modify(|generation| *generation += 1);
    }

    /// Abruptly closes every open connection (as a proxy restart or idle timeout would).
    /// The listener keeps accepting new connections.
    pub fn kill_connections(&self) {
        self.shared.live.shutdown_all();
        self.shared.kill.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.kill_connections();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle_connection(Arc::clone(&shared), tcp));
            }
            // E.g. EMFILE under a connection storm: back off briefly and keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Decrements the open-connection gauge however the connection ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle_connection(shared: Arc<Shared>, tcp: TcpStream) {
    shared.active.fetch_add(1, Ordering::SeqCst);
    let _guard = ActiveGuard(Arc::clone(&shared));
    let mut kill = shared.kill.subscribe();
    let _live = shared.instant_kill.then(|| shared.live.register(&tcp));
    let _ = tcp.set_nodelay(true);
    tokio::select! {
        _ = serve(&shared, tcp) => {}
        _ = kill.changed() => {}
    }
}

/// Negotiation on the raw socket: SSL/GSS requests, cancel, or a (plain) startup.
async fn serve(shared: &Shared, mut tcp: TcpStream) -> io::Result<()> {
    // At most one SSLRequest and one GSSENCRequest precede the real first packet.
    for _ in 0..3 {
        let (code, rest) = tokio::time::timeout(LOGIN_TIMEOUT, wire::read_startup_packet(&mut tcp))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        match code {
            wire::SSL_REQUEST_CODE => match &shared.tls {
                Some(acceptor) => {
                    tcp.write_all(b"S").await?;
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            shared.tls_failures.fetch_add(1, Ordering::SeqCst);
                            return Err(e);
                        }
                    };
                    return serve_after_tls(shared, tls).await;
                }
                None => tcp.write_all(b"N").await?,
            },
            wire::GSSENC_REQUEST_CODE => tcp.write_all(b"N").await?,
            wire::CANCEL_REQUEST_CODE => return forward_cancel(shared, &rest).await,
            wire::PROTOCOL_3_0 if shared.tls.is_some() => {
                let user = startup_user(&rest);
                return reject(
                    shared,
                    &mut tcp,
                    &user,
                    "08P01",
                    "This RDS Proxy requires TLS connections",
                    "startup without TLS",
                )
                .await;
            }
            wire::PROTOCOL_3_0 => return login(shared, tcp, &rest, false).await,
            other => return unsupported_protocol(&mut tcp, other).await,
        }
    }
    send_fatal(&mut tcp, "08P01", "too many negotiation requests").await
}

/// Inside TLS: a cancel or the startup; anything else is a protocol violation.
async fn serve_after_tls<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut tls: S,
) -> io::Result<()> {
    let (code, rest) = tokio::time::timeout(LOGIN_TIMEOUT, wire::read_startup_packet(&mut tls))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    match code {
        wire::CANCEL_REQUEST_CODE => forward_cancel(shared, &rest).await,
        wire::PROTOCOL_3_0 => login(shared, tls, &rest, true).await,
        wire::SSL_REQUEST_CODE | wire::GSSENC_REQUEST_CODE => {
            send_fatal(
                &mut tls,
                "08P01",
                "encryption request inside an encrypted session",
            )
            .await
        }
        other => unsupported_protocol(&mut tls, other).await,
    }
}

async fn unsupported_protocol<S: AsyncWrite + Unpin>(stream: &mut S, code: u32) -> io::Result<()> {
    let msg = format!(
        "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
        code >> 16,
        code & 0xffff
    );
    send_fatal(stream, "0A000", &msg).await
}

/// Startup → cleartext password → check → relay to the backend.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut client: S,
    startup_rest: &[u8],
    tls: bool,
) -> io::Result<()> {
    let Some(params) = wire::parse_startup_params(startup_rest) else {
        return send_fatal(&mut client, "08P01", "invalid startup packet layout").await;
    };
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if let Some((code, msg, reason)) = startup_refusal(shared, &params, &user) {
        return reject(shared, &mut client, &user, code, &msg, &reason).await;
    }
    client.write_all(&wire::authentication(3)).await?;
    client.flush().await?;
    let (tag, body) = tokio::time::timeout(LOGIN_TIMEOUT, wire::read_message(&mut client))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    if tag != b'p' {
        let msg = format!(
            "expected password response, got message type {}",
            tag as char
        );
        return reject(shared, &mut client, &user, "08P01", &msg, &msg).await;
    }
    let mut record = LoginRecord {
        params,
        access_key_id: None,
        session_token: None,
        tls,
        at: Instant::now(),
    };
    if let Err((msg, reason)) = check_password(shared, &user, &wire::first_cstr(&body), &mut record)
    {
        return reject(shared, &mut client, &user, "28P01", &msg, &reason).await;
    }
    relay_to_backend(shared, client, record).await
}

/// What RDS Proxy answers to a startup packet it refuses: SQLSTATE, message, and the reason
/// the emulator records.
fn startup_refusal(
    shared: &Shared,
    params: &[(String, String)],
    user: &str,
) -> Option<(&'static str, String, String)> {
    if !shared.plain_postgres
        && let Some((name, _)) = params
            .iter()
            .find(|(k, _)| !SUPPORTED_STARTUP_PARAMS.contains(&k.as_str()))
    {
        let msg = if name == "options" {
            "Feature not supported: RDS Proxy currently doesn’t support command-line options."
                .to_owned()
        } else {
            format!("Feature not supported: RDS Proxy currently doesn’t support the option {name}.")
        };
        return Some((
            "0A000",
            msg,
            format!("unsupported startup parameter {name}"),
        ));
    }
    if user.is_empty() {
        let msg = "no PostgreSQL user name specified in startup packet";
        return Some(("28000", msg.to_owned(), msg.to_owned()));
    }
    None
}

/// Checks the password (an IAM token, or the fixed password), after the throttle; the error is
/// RDS Proxy's message and the reason the emulator records.
fn check_password(
    shared: &Shared,
    user: &str,
    password: &str,
    record: &mut LoginRecord,
) -> Result<(), (String, String)> {
    if shared.throttle.check() {
        return Err((THROTTLED_MESSAGE.to_owned(), "throttled".to_owned()));
    }
    match &shared.auth {
        EmulatorAuth::Iam => {
            let expect = Expectation {
                host_port: format!("{}:{}", shared.endpoint_host, shared.endpoint_port),
                region: shared.region.clone(),
                db_user: user.to_owned(),
            };
            let secret_for = |akid: &str| lock(&shared.keys).get(akid).cloned();
            let verified =
                verify_token(password, &expect, secret_for, now_unix()).map_err(|why| {
                    let msg = format!(
                        "The IAM authentication failed for the role {user}. \
                     Check the IAM token for this role and try again."
                    );
                    (msg, why.to_string())
                })?;
            record.access_key_id = Some(verified.access_key_id);
            record.session_token = verified.session_token;
        }
        EmulatorAuth::Password(expected) => {
            if password != expected {
                let msg = format!("password authentication failed for user \"{user}\"");
                return Err((msg, "wrong password".to_owned()));
            }
        }
    }
    Ok(())
}

/// Logs in to the backend with the client's startup parameters and relays the session.
async fn relay_to_backend<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut client: S,
    record: LoginRecord,
) -> io::Result<()> {
    let mut backend = match TcpStream::connect((Ipv4Addr::LOCALHOST, shared.backend_port)).await {
        Ok(backend) => backend,
        Err(e) => {
            let msg = format!("could not connect to the database: {e}");
            return send_fatal(&mut client, "08001", &msg).await;
        }
    };
    let _ = backend.set_nodelay(true);
    let pairs: Vec<(&str, &str)> = record
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    backend.write_all(&wire::startup_message(&pairs)).await?;
    let connection = shared.logins.fetch_add(1, Ordering::SeqCst) + 1;
    lock(&shared.accepted).push(record);
    if !relay_login(&mut client, &mut backend, shared.plain_postgres).await? {
        return Ok(());
    }
    relay(
        client,
        backend,
        &shared.pins,
        connection,
        shared.stall.subscribe(),
        shared.idle_client_timeout,
    )
    .await;
    Ok(())
}

/// Relays a CancelRequest in plain text to the backend and closes.
async fn forward_cancel(shared: &Shared, rest: &[u8]) -> io::Result<()> {
    if rest.len() != 8 {
        return Ok(());
    }
    if !shared.plain_postgres {
        // RDS Proxy issued no keys and ignores cancels.
        shared.ignored_cancels.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    let delay = shared.cancel_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut backend = TcpStream::connect((Ipv4Addr::LOCALHOST, shared.backend_port)).await?;
    backend
        .write_all(&wire::startup_packet(wire::CANCEL_REQUEST_CODE, rest))
        .await?;
    shared.cancels.fetch_add(1, Ordering::SeqCst);
    // PostgreSQL closes the cancel connection itself; wait for that so the cancel is processed
    // before our client sees its connection close.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut backend, &mut sink),
    )
    .await;
    Ok(())
}

/// Records a refused login and sends the FATAL error.
async fn reject<S: AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    user: &str,
    code: &str,
    msg: &str,
    reason: &str,
) -> io::Result<()> {
    shared.rejected.fetch_add(1, Ordering::SeqCst);
    lock(&shared.rejections).push(format!("{user}: {reason}"));
    send_fatal(stream, code, msg).await
}

async fn send_fatal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: &str,
    msg: &str,
) -> io::Result<()> {
    stream
        .write_all(&wire::error_response("FATAL", code, msg))
        .await?;
    stream.flush().await?;
    stream.shutdown().await
}

fn startup_user(rest: &[u8]) -> String {
    wire::parse_startup_params(rest)
        .and_then(|p| p.into_iter().find(|(k, _)| k == "user").map(|(_, v)| v))
        .unwrap_or_default()
}
