//! The `rds-iam-sidecar` command line: parse, validate (exit 2 on any configuration error),
//! then run the chosen subcommand.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::iam::region::resolve_region;
use rds_iam_sidecar::iam::token::sign_token;
use rds_iam_sidecar::ops::admin_client::request;
use rds_iam_sidecar::ops::logging;
use rds_iam_sidecar::settings::admin::admin_address;
use rds_iam_sidecar::settings::cli::{
    AdminArgs, Cli, Command, DoctorArgs, HealthcheckArgs, ReportFormat, RunArgs, TokenArgs,
    WaitArgs,
};
use rds_iam_sidecar::settings::duration::parse_duration;
use rds_iam_sidecar::settings::{ConfigError, Settings, process_env, socket_io, worker_threads};
use rds_iam_sidecar::uring::{self, SocketIo};

/// glibc's malloc, with tokio's cache-line-aligned blocks in jemalloc (`ops/allocator.rs`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: rds_iam_sidecar::ops::allocator::Split = rds_iam_sidecar::ops::allocator::Split;

/// jemalloc reads its settings from this symbol before `main`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a reference to the first byte of a static, NUL-terminated string.
    Some(unsafe { &*rds_iam_sidecar::ops::allocator::MALLOC_CONF.as_ptr() });

fn main() -> ExitCode {
    let cli = Cli::parse();
    let program = std::env::args().next().unwrap_or_default();
    let runtime_api = std::env::var("AWS_LAMBDA_RUNTIME_API").ok();
    let command = cli.command.unwrap_or_else(|| {
        // Lambda starts extensions from /opt/extensions/ with no arguments.
        if rds_iam_sidecar::lambda::started_as_extension(&program, runtime_api.as_deref()) {
            Command::LambdaExtension(Box::new(cli.run))
        } else {
            Command::Run(Box::new(cli.run))
        }
    });
    let chosen = match &command {
        Command::Run(args) | Command::LambdaExtension(args) => runtime_choice(args),
        Command::Exec(args) => runtime_choice(&args.run),
        _ => Ok((1, SocketIo::Epoll)),
    };
    let runtime = match chosen.map(|(threads, io)| runtime(threads, io)) {
        Ok(Ok(runtime)) => runtime,
        Ok(Err(e)) => {
            eprintln!("rds-iam-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => return usage_error(e),
    };
    match command {
        Command::Run(args) => runtime.block_on(run(*args)),
        Command::Token(args) => runtime.block_on(token(args)),
        Command::Healthcheck(args) => runtime.block_on(healthcheck(args)),
        Command::Wait(args) => runtime.block_on(wait(args)),
        Command::Shutdown(args) => runtime.block_on(shutdown(args)),
        Command::Doctor(args) => runtime.block_on(doctor(*args)),
        Command::Exec(args) => finish(runtime.block_on(rds_iam_sidecar::exec::run(*args))),
        Command::LambdaExtension(args) => {
            finish(runtime.block_on(rds_iam_sidecar::lambda::run(*args)))
        }
    }
}

/// The async runtime `--worker-threads` asks for: one thread is one event loop (tokio's
/// current-thread runtime, where no task ever wakes another thread); more is tokio's
/// work-stealing pool. One thread took 7–22 % less CPU per transaction than two (the default
/// of earlier releases on 2 cores), measured with pgbench in each pool mode
/// (docs/ARCHITECTURE.md).
///
/// With one thread and `--socket-io io-uring` (the default), the thread gets its ring
/// (src/uring) and the runtime submits the ring's queue each time it is about to park; without
/// a ring (`epoll`, or the kernel refused one) it gets an outbox, which holds the writes of a
/// turn until its end (src/uring/outbox).
fn runtime(threads: usize, io: SocketIo) -> std::io::Result<tokio::runtime::Runtime> {
    match io {
        SocketIo::Epoll => uring::forbid(),
        SocketIo::IoUring => uring::request(),
    }
    let mut builder = if threads == 1 {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if !(io == SocketIo::IoUring && uring::install(true)) {
            uring::install_outbox();
        }
        builder.on_thread_park(uring::submit_before_park);
        builder
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

/// The threads and the socket I/O of a command that serves clients.
fn runtime_choice(args: &RunArgs) -> Result<(usize, SocketIo), ConfigError> {
    Ok((worker_threads(args)?, socket_io(args)?))
}

/// A mode's outcome: its exit code, or a start-up error (exit 2).
fn finish(outcome: Result<u8, String>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(message) => usage_error(message),
    }
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("rds-iam-sidecar: error: {message}");
    ExitCode::from(2)
}

async fn run(args: RunArgs) -> ExitCode {
    let mut config = match Settings::from_args(args, &process_env) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    logging::init(config.log_format, &config.log_level);
    rds_iam_sidecar::ops::limits::fit_open_files(&mut config);
    let lifecycle = config.lifecycle.clone();
    let sidecar = match rds_iam_sidecar::start(config, None).await {
        Ok(sidecar) => sidecar,
        Err(e) => return usage_error(e),
    };
    let shutdown = sidecar.shutdown().clone();
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("rds-iam-sidecar: cannot watch for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        name = signals.next() => {
            shutdown.request();
            tracing::info!(signal = name, "shutdown requested");
        }
        () = shutdown.requested() => tracing::info!("shutdown requested over the admin endpoint"),
    }
    if !lifecycle.min_shutdown_delay.is_zero() {
        tracing::info!(
            delay_s = lifecycle.min_shutdown_delay.as_secs_f64(),
            "still serving for --min-shutdown-delay before draining"
        );
        tokio::select! {
            () = tokio::time::sleep(lifecycle.min_shutdown_delay) => {}
            name = signals.next() => tracing::info!(signal = name, "second signal: draining now"),
        }
    }
    let left = tokio::select! {
        left = sidecar.drain(lifecycle.shutdown_grace) => left,
        name = signals.next() => {
            tracing::warn!(signal = name, clients = shutdown.clients(), "second signal: closing every connection now");
            shutdown.clients().max(1)
        }
    };
    if left == 0 {
        ExitCode::from(lifecycle.exit_code_on_signal)
    } else {
        ExitCode::FAILURE
    }
}

/// SIGTERM and SIGINT, watched for the whole run.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    /// Caught so that it never ends the process (its default action): it asks the listeners
    /// to read their certificate and verifier files again, which they watch for themselves.
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next signal that ends the process.
    async fn next(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.hangup.recv() => tracing::info!(
                    "SIGHUP: client TLS and client verifier files are read again"
                ),
            }
        }
    }
}

/// A `--timeout` flag, or `default`.
fn timeout_flag(text: Option<&str>, default: Duration) -> Result<Duration, ExitCode> {
    match text {
        Some(text) => parse_duration(text).map_err(|e| usage_error(format!("--timeout: {e}"))),
        None => Ok(default),
    }
}

fn admin_of(args: &AdminArgs) -> String {
    admin_address(args.admin.as_deref(), &process_env)
}

async fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    let timeout = match timeout_flag(args.timeout.as_deref(), Duration::from_secs(5)) {
        Ok(timeout) => timeout,
        Err(code) => return code,
    };
    // Saturation left out: ECS replaces a task whose health check fails, and a busy pool is
    // not a broken sidecar.
    let path = if args.live {
        "/livez"
    } else {
        "/readyz?saturation=ignore"
    };
    match request(&admin_of(&args.admin), "GET", path, timeout).await {
        Ok(response) => {
            println!("{}", one_line(&response.body));
            if response.status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            println!("not healthy: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn wait(args: WaitArgs) -> ExitCode {
    let timeout = match timeout_flag(args.timeout.as_deref(), Duration::from_secs(30)) {
        Ok(timeout) => timeout,
        Err(code) => return code,
    };
    let admin = admin_of(&args.admin);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reason = match request(&admin, "GET", "/readyz", left.min(Duration::from_secs(5))).await
        {
            Ok(response) if response.status == 200 => {
                println!("ready");
                return ExitCode::SUCCESS;
            }
            Ok(response) => one_line(&response.body),
            Err(error) => error,
        };
        if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
            println!("not ready after {timeout:?}: {reason}");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn shutdown(args: AdminArgs) -> ExitCode {
    match request(
        &admin_of(&args),
        "POST",
        "/quitquitquit",
        Duration::from_secs(5),
    )
    .await
    {
        Ok(response) if response.status == 200 => {
            println!("{}", one_line(&response.body));
            ExitCode::SUCCESS
        }
        Ok(response) => {
            println!(
                "refused ({}): {}",
                response.status,
                one_line(&response.body)
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn doctor(args: DoctorArgs) -> ExitCode {
    // Only errors: the report is the output, and the checks say what failed.
    logging::init(rds_iam_sidecar::ops::logging::LogFormat::Text, "error");
    // A bad configuration is reported as check 1 (of the one report there is then).
    let endpoints = match Settings::from_args(args.run, &process_env) {
        Ok(settings) => settings.endpoints.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e.to_string())],
    };
    // Every endpoint's user is known before any check runs.
    let mut runs = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let db_user = endpoint
            .as_ref()
            .ok()
            .and_then(|e| e.frontend.db_user.clone());
        let fallback = endpoint.is_err().then(|| "?".to_owned());
        let Some(user) = args.user.clone().or(db_user).or(fallback) else {
            return usage_error("--user: which database user should the doctor log in as?");
        };
        let database = args.database.clone().unwrap_or_else(|| user.clone());
        runs.push((endpoint, user, database));
    }
    let mut reports = Vec::with_capacity(runs.len());
    for (endpoint, user, database) in runs {
        reports.push(rds_iam_sidecar::doctor::run(endpoint, &user, &database).await);
    }
    let ok = reports.iter().all(|report| report.ok);
    let printed = match args.format {
        ReportFormat::Text => {
            print!("{}", rds_iam_sidecar::doctor::Report::all_to_text(&reports));
            Ok(())
        }
        ReportFormat::Json => {
            rds_iam_sidecar::doctor::Report::all_to_json(&reports).map(|json| println!("{json}"))
        }
    };
    if let Err(e) = printed {
        eprintln!("rds-iam-sidecar: cannot write the report as JSON: {e}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The first line of an admin answer.
fn one_line(body: &str) -> String {
    body.lines().next().unwrap_or("").trim().to_owned()
}

async fn token(args: TokenArgs) -> ExitCode {
    let Some((region, _)) = resolve_region(args.region.as_deref(), &args.host, &process_env) else {
        return usage_error(format!(
            "--region (RDS_IAM_SIDECAR_REGION): cannot tell the AWS region from '{}' and AWS_REGION is not set",
            args.host
        ));
    };
    let credentials = match CredentialCache::from_default_chain(&region).await {
        Ok(cache) => Arc::new(cache),
        Err(e) => {
            eprintln!("rds-iam-sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    let creds = match credentials.get().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rds-iam-sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sign_token(
        &creds,
        &args.host,
        args.port,
        &args.user,
        &region,
        SystemTime::now(),
    ) {
        Ok(token) => {
            println!("{}", token.expose());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rds-iam-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
