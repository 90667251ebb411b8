//! The `rds-iam-sidecar` command line: parse, validate (exit 2 on any configuration error),
//! then run the chosen subcommand.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::Parser;
use rds_iam_sidecar::cli::{Cli, Command, RunArgs, TokenArgs};
use rds_iam_sidecar::config::{Config, process_env};
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::iam::region::resolve_region;
use rds_iam_sidecar::iam::token::sign_token;
use rds_iam_sidecar::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(Box::new(cli.run)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rds-iam-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Run(args) => runtime.block_on(run(*args)),
        Command::Token(args) => runtime.block_on(token(args)),
    }
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("rds-iam-sidecar: error: {message}");
    ExitCode::from(2)
}

async fn run(args: RunArgs) -> ExitCode {
    let config = match Config::from_args(args, &process_env) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    logging::init(config.log_format, &config.log_level);
    let sidecar = match rds_iam_sidecar::start(config, None).await {
        Ok(sidecar) => sidecar,
        Err(e) => return usage_error(e),
    };
    wait_for_signal().await;
    tracing::info!("stopping");
    sidecar.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
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
