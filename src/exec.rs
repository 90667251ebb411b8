//! `rds-iam-sidecar exec [run settings] -- COMMAND ARGS…`: the sidecar and the app in one
//! process tree, for platforms without sidecar containers (App Runner, single-container tasks,
//! Kubernetes Jobs, systemd units, a laptop). The sidecar starts and must become ready within a
//! bound before the command runs (else exit 2, the command never started); the command gets
//! `PGHOST`/`PGPORT` for the first endpoint unless they are set, and
//! `RDS_IAM_SIDECAR_PGHOST_<N>`/`…_PGPORT_<N>` for every endpoint N (from 1); SIGTERM, SIGINT
//! and SIGHUP are passed to it; when it exits the sidecar drains and the process exits with the
//! command's code (128 + the signal when a signal ended it), so a Job ends when its app does.
//! As PID 1 it also reaps the orphans the command leaves behind.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Command;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::ops::logging;
use crate::settings::Settings;
use crate::settings::cli::ExecArgs;
use crate::settings::duration::parse_duration;
use crate::sidecar::RunningSidecar;

/// `exec`: the sidecar, then the command; the command's exit code, or why nothing started.
pub async fn run(args: ExecArgs) -> Result<u8, String> {
    // Caught first: a signal while the sidecar starts is the command's, or ends the start.
    let mut signals = Forwarded::catch().map_err(|e| format!("cannot watch for signals: {e}"))?;
    let ready_timeout = match args.ready_timeout.as_deref() {
        Some(text) => parse_duration(text).map_err(|e| format!("--ready-timeout: {e}"))?,
        None => Duration::from_secs(30),
    };
    let mut config = Settings::from_args(args.run, &|name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    logging::init(config.log_format, &config.log_level);
    crate::ops::limits::fit_open_files(&mut config);
    let grace = config.lifecycle.shutdown_grace;
    let sidecar = crate::start(config, None)
        .await
        .map_err(|e| e.to_string())?;
    let ready = tokio::select! {
        ready = wait_until_ready(&sidecar, ready_timeout) => Ok(ready),
        (name, number) = signals.next() => Err((name, number)),
    };
    let status = match ready {
        Ok(Ok(())) => {
            let environment = child_environment(&sidecar.endpoint_addrs(), |name| {
                std::env::var_os(name).is_some()
            });
            run_command(&args.command, &environment, &mut signals).await
        }
        Ok(Err(reason)) => {
            let _ = sidecar.drain(grace).await;
            return Err(format!(
                "not ready within {} ({reason}); the command was not started",
                humantime::format_duration(ready_timeout)
            ));
        }
        Err((name, number)) => {
            tracing::info!(
                signal = name,
                "signal before the command started; not starting it"
            );
            let _ = sidecar.drain(grace).await;
            return Ok(u8::try_from(128 + number).unwrap_or(1));
        }
    };
    sidecar.shutdown().request();
    let _ = sidecar.drain(grace).await;
    match status {
        Ok(status) => Ok(exit_code(status)),
        Err(reason) => {
            eprintln!("rds-iam-sidecar: {reason}");
            Ok(127)
        }
    }
}

/// How the command ended, as an exit code: its own, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from((128 + signal) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

/// The variables the command gets: each endpoint's first TCP address as
/// `RDS_IAM_SIDECAR_PGHOST_<N>`/`_PGPORT_<N>`, and the first endpoint's as `PGHOST`/`PGPORT`
/// unless `already_set` says the environment has them.
pub fn child_environment(
    endpoints: &[Vec<SocketAddr>],
    already_set: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let mut environment = Vec::new();
    for (index, addresses) in endpoints.iter().enumerate() {
        let Some(address) = addresses.first() else {
            continue;
        };
        let (host, port) = (connect_host(address), address.port().to_string());
        if index == 0 {
            for (name, value) in [("PGHOST", &host), ("PGPORT", &port)] {
                if !already_set(name) {
                    environment.push((name.to_owned(), value.clone()));
                }
            }
        }
        let n = index + 1;
        environment.push((format!("RDS_IAM_SIDECAR_PGHOST_{n}"), host));
        environment.push((format!("RDS_IAM_SIDECAR_PGPORT_{n}"), port));
    }
    environment
}

/// Where a local client reaches a listen address: a wildcard is reached on loopback.
fn connect_host(address: &SocketAddr) -> String {
    match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "::1".to_owned(),
        ip => ip.to_string(),
    }
}

/// Waits until the sidecar is ready, polling its readiness, for at most `limit`; the last
/// reason it was not.
pub async fn wait_until_ready(sidecar: &RunningSidecar, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let reason = match sidecar.readiness().await {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The signals passed on to the command.
pub struct Forwarded {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Forwarded {
    /// Starts catching SIGTERM, SIGINT and SIGHUP (before the sidecar starts, so that none is
    /// lost while it does).
    pub fn catch() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal caught.
    pub async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.terminate.recv() => ("SIGTERM", libc::SIGTERM),
            _ = self.interrupt.recv() => ("SIGINT", libc::SIGINT),
            _ = self.hangup.recv() => ("SIGHUP", libc::SIGHUP),
        }
    }
}

/// Runs `command` with `environment` added, passing caught signals on, until it exits.
pub async fn run_command(
    command: &[String],
    environment: &[(String, String)],
    signals: &mut Forwarded,
) -> Result<ExitStatus, String> {
    let (program, args) = command
        .split_first()
        .ok_or("exec needs a command after --")?;
    let mut child = Command::new(program)
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let direct = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    let mut orphans = Orphans::when_init();
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(|e| format!("waiting for {program}: {e}")),
            () = orphans.exited() => reap_orphans(direct),
            (name, number) = signals.next() => {
                if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                    tracing::info!(signal = name, "passing the signal to the command");
                    // SAFETY: kill(2) takes plain integers; the pid is our own child's.
                    unsafe { libc::kill(pid, number) };
                }
            }
        }
    }
}

/// As PID 1 (a container's init), processes the command leaves behind are re-parented to the
/// sidecar, and their exits must be collected or they stay zombies. Only then is SIGCHLD
/// watched here (tokio watches it too, for its own child).
struct Orphans {
    child_exits: Option<Signal>,
}

impl Orphans {
    fn when_init() -> Self {
        let init = std::process::id() == 1;
        Self {
            child_exits: init.then(|| signal(SignalKind::child()).ok()).flatten(),
        }
    }

    /// Resolves when a child process exited (never when not PID 1).
    async fn exited(&mut self) {
        match &mut self.child_exits {
            Some(exits) => {
                let _ = exits.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Collects every exited child but `direct` (the command, which tokio waits for): looks with
/// `WNOWAIT` first, so the command's own exit is left for tokio.
fn reap_orphans(direct: i32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`, which lives across the call.
        let found = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set by a successful waitid (0 when nothing had exited).
        let pid = unsafe { info.si_pid() };
        if found != 0 || pid == 0 || pid == direct {
            return;
        }
        // SAFETY: waitpid on a pid that waitid just reported as exited; no pointer kept.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_gets_pghost_pgport_unless_set_and_one_pair_per_endpoint() {
        let endpoints = vec![
            vec!["127.0.0.1:6432".parse().expect("addr")],
            vec!["0.0.0.0:6433".parse().expect("addr")],
        ];
        let environment = child_environment(&endpoints, |name| name == "PGHOST");
        let get = |name: &str| {
            environment
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PGHOST"), None, "already set: left alone");
        assert_eq!(get("PGPORT"), Some("6432"));
        assert_eq!(get("RDS_IAM_SIDECAR_PGHOST_1"), Some("127.0.0.1"));
        assert_eq!(get("RDS_IAM_SIDECAR_PGHOST_2"), Some("127.0.0.1"));
        assert_eq!(get("RDS_IAM_SIDECAR_PGPORT_2"), Some("6433"));
    }
}
