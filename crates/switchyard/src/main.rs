//! The `switchyard` binary: command line, logging, and the process lifecycle.
//! Everything that handles traffic lives in the library crates.

#![forbid(unsafe_code)]

mod demo;
mod logging;
mod serve;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// Switchyard: an L7 API gateway and reverse proxy.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    /// Log filter, as in RUST_LOG (e.g. "info", "debug", "switchyard_proxy=debug").
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with a configuration file (reloaded on SIGHUP and on change).
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; print every error with its location.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Upgrade a running `switchyard run --config FILE` to the binary now at
    /// its path, with no connection refused: the new process takes the
    /// listening sockets over, the old one drains and exits (also: SIGUSR2).
    Upgrade {
        /// The configuration file the running process was started with.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start demo backends and a gateway in front of them; no files needed.
    Demo {
        /// Address of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Address of the admin API.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => {
            logging::init(cli.log_format, &cli.log_level);
            report(serve::run_file(config))
        }
        Command::Upgrade { config } => upgrade(&config),
        Command::Demo { listen, admin } => {
            logging::init(cli.log_format, &cli.log_level);
            report(demo::run(&listen, &admin))
        }
    }
}

/// `switchyard check`: exit 0 on a valid file, print every problem and exit 1 otherwise.
fn check(path: &std::path::Path) -> ExitCode {
    match switchyard_config::load_file(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} listener(s), {} route(s), {} cluster(s))",
                path.display(),
                config.listeners.len(),
                config.routes.len(),
                config.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!("{}: {} error(s)", path.display(), diagnostics.len());
            ExitCode::FAILURE
        }
    }
}

/// `switchyard upgrade`: the new process validates the file the same way
/// (an invalid one is reported here, and nothing changes).
fn upgrade(path: &std::path::Path) -> ExitCode {
    let config = match switchyard_config::load_file(path) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!(
                "{}: {} error(s); not upgrading (the running process is unchanged)",
                path.display(),
                diagnostics.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let socket = switchyard_config::upgrade_socket_for(&config.runtime, path);
    // The old process answers once the new one serves, or gives up.
    let wait = config.runtime.upgrade_timeout + std::time::Duration::from_secs(10);
    match upgrade::request(&socket, wait) {
        Ok(message) => {
            println!("upgraded: {message}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
