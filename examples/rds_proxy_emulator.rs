//! The RDS Proxy emulator of the test support code as a process of its own, for benchmarks
//! that run many sidecar processes against one proxy (`benches/fleet.sh`).
//!
//! ```text
//! cargo run --release --example rds_proxy_emulator -- --backend-port 5432 --ca-out ca.pem \
//!     [--port 0] [--login-rate 100]
//! ```
//!
//! It serves `mydb.proxy-abc123.us-east-1.rds.amazonaws.com` (TLS with a certificate from a
//! throw-away CA written to `--ca-out`; IAM tokens checked for access key
//! `AKIASIDECARTEST00001` with the test secret), relays to the PostgreSQL on 127.0.0.1 at
//! `--backend-port`, and throttles IAM logins above `--login-rate` per second as RDS Proxy
//! does. Prints `LISTENING <port>` once it accepts. SIGUSR1 drops every connection at once (a
//! proxy restart) and prints `RESTART <second>`; SIGTERM or SIGINT prints
//! `LOGINS <second> <accepted> <throttled>` for every second since start, then exits.

#[path = "../tests/support/mod.rs"]
mod support;

use std::error::Error;

use support::{DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, TestPki};
use tokio::signal::unix::{SignalKind, signal};

/// The command line.
struct Args {
    backend_port: u16,
    port: u16,
    ca_out: String,
    login_rate: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backend_port: 0,
        port: 0,
        ca_out: String::new(),
        login_rate: None,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--backend-port" => args.backend_port = value.parse().map_err(bad)?,
            "--port" => args.port = value.parse().map_err(bad)?,
            "--ca-out" => args.ca_out = value.clone(),
            "--login-rate" => args.login_rate = Some(value.parse().map_err(bad)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.backend_port == 0 || args.ca_out.is_empty() {
        return Err("--backend-port and --ca-out are required".to_owned());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args().map_err(|e| format!("rds_proxy_emulator: {e}"))?;
    let pki = TestPki::new();
    std::fs::copy(pki.ca_file(), &args.ca_out)?;
    let mut options = support::emulator_options(
        &pki,
        DEFAULT_ENDPOINT_HOST,
        DEFAULT_REGION,
        args.backend_port,
    );
    options.login_rate_limit = args.login_rate;
    options.listen_port = args.port;
    options.instant_kill = true;
    let emulator = Emulator::start(options).await;
    println!("LISTENING {}", emulator.addr.port());
    let mut restart = signal(SignalKind::user_defined1())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = restart.recv() => {
                emulator.kill_connections();
                println!("RESTART {}", emulator.second_now());
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for (second, counts) in emulator.login_seconds().iter().enumerate() {
        println!("LOGINS {second} {} {}", counts.accepted, counts.throttled);
    }
    Ok(())
}
