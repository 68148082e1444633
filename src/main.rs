//! The command line: parse arguments, load the config, hand over to the command. The only
//! place that picks exit codes for a bad config (2) and for a start that fails (1); each
//! command in `cli` picks its own.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use credproxy::cli;
use credproxy::cli::args::{Args, Command, SecretAction};
use credproxy::config::{Config, EMBEDDED_DEFAULT};
use credproxy::credentials::keychain;
use credproxy::kinds::Environment;
use credproxy::telemetry;

/// jemalloc with its background purging thread: memory freed after a burst goes back to
/// the system within seconds (glibc's allocator kept a 5,000-request burst's ~50 MiB; see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Several rustls backends are compiled in (ring, and aws-lc-rs through the AWS SDK);
    // libraries that ask rustls for "the default" (gcp_auth) need one named up front.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    // Commands that need no config, and no log.
    match &args.command {
        Some(Command::DefaultConfig) => return default_config(),
        Some(Command::HashToken { name, generate }) => {
            return cli::hash_token::run(name.as_deref(), *generate);
        }
        _ => {}
    }
    let _log_writer = telemetry::init(&args.log_level, args.log_format);
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("credproxy: invalid configuration\n{error}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Secret { action }) = &args.command {
        return match action {
            SecretAction::Set { name } => cli::secret::run(&config, cli::secret::Action::Set, name),
            SecretAction::Delete { name } => {
                cli::secret::run(&config, cli::secret::Action::Delete, name)
            }
        };
    }
    // Opened before any worker thread starts: on Linux, joining a session keyring is a
    // change of this thread's credentials, which only threads started later inherit.
    if cli::secret::uses_keychain(&config) {
        let _ = keychain::platform_store();
    }
    // The background runtime: start-up, the admin listener, accepting, credential fetches.
    // Requests are served by the worker threads `app::run` starts (`crate::runtime`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("credproxy: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let resolved = runtime.block_on(config.resolve(&Environment::from_process()));
    let code = runtime.block_on(async {
        match args.command {
            None | Some(Command::Run) => credproxy::app::run(resolved, args.config.clone()).await,
            Some(Command::Status) => cli::status::run(&resolved).await,
            Some(Command::Usage { by, tag, window }) => {
                cli::usage::run(&resolved, by, tag.as_deref(), window).await
            }
            Some(Command::Check) => cli::check::run(resolved).await,
            Some(Command::Env) => cli::env::run(&resolved),
            Some(Command::Login { name, device }) => {
                cli::login::run(
                    &resolved,
                    name.as_deref(),
                    cli::login::Action::In { device },
                )
                .await
            }
            Some(Command::Token { name }) => {
                cli::login::run(&resolved, name.as_deref(), cli::login::Action::Token).await
            }
            Some(Command::Logout { name }) => {
                cli::login::run(&resolved, name.as_deref(), cli::login::Action::Out).await
            }
            Some(Command::DefaultConfig | Command::HashToken { .. } | Command::Secret { .. }) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    // A credential fetch still running on the blocking pool (a keychain waiting for an
    // unlock prompt, the gcloud CLI) must not hold the exit: dropping the runtime would
    // wait for it without limit, with SIGINT and SIGTERM already caught.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// `credproxy default-config`: the embedded default, and what this build leaves out of it.
fn default_config() -> ExitCode {
    print!("{EMBEDDED_DEFAULT}");
    let absent: Vec<&str> = credproxy::kinds::ABSENT.iter().map(|(k, _)| *k).collect();
    if !absent.is_empty() {
        eprintln!(
            "credproxy: this build was compiled without the {} kind(s): embedded, their credentials and routes are left out; in a file, remove them",
            absent.join(", ")
        );
    }
    ExitCode::SUCCESS
}
