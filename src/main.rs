//! The command line: parse arguments, load the config, start. The only place that turns
//! errors into text for people and picks exit codes (2: bad config, 1: anything else).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use credproxy::cli;
use credproxy::config::{Config, EMBEDDED_DEFAULT, Resolved};
use credproxy::credentials::{Secret, keychain};
use credproxy::kinds::Environment;
use credproxy::telemetry::{self, LogFormat};

/// jemalloc with its background purging thread: memory freed after a burst goes back to
/// the system within seconds (glibc's allocator kept a 5,000-request burst's ~50 MiB; see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A local authenticating reverse proxy for AI model APIs: point a client's base URL at it,
/// and it adds the real credential to every request.
#[derive(Debug, Parser)]
#[command(name = "credproxy", version)]
struct Args {
    /// Config file (default: $CREDPROXY_CONFIG, else the embedded default).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. $CREDPROXY_LOG (a tracing filter) overrides it.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,
    /// Log as text or as JSON lines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and fetch every credential once; exit 1 if any fails.
    Check,
    /// Print the environment clients need to use each route.
    Env,
    /// Ask the running credproxy (its admin listener, from the config) how each credential
    /// and route is doing.
    Status,
    /// Print the embedded default config.
    DefaultConfig,
    /// Print the `[[callers.tokens]]` lines for a caller token: read from the terminal
    /// without echo (or from standard input when piped); only its SHA-256 is printed.
    HashToken {
        /// The caller's name in the access log (prints a whole `[[callers.tokens]]` table).
        #[arg(long)]
        name: Option<String>,
        /// Make a new random token (256 bits), print it once on stderr, and its table.
        #[arg(long)]
        generate: bool,
    },
    /// Log in to the identity provider of `oidc` credential NAME (the only one when left
    /// out): a browser with a loopback redirect, or a device code without a display.
    Login {
        name: Option<String>,
        /// Use the device code flow (a code to enter on any device) instead of the browser.
        #[arg(long)]
        device: bool,
    },
    /// Print a current token of `oidc` credential NAME, refreshed if needed; fit for Claude
    /// Code's `apiKeyHelper`. Exits 1 with what to do when there is none.
    Token { name: Option<String> },
    /// Revoke the login of `oidc` credential NAME at its identity provider and delete it.
    Logout { name: Option<String> },
    /// Store or remove a credential's key in the OS keychain (`keychain = ...` in its table).
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
}

#[derive(Debug, Subcommand)]
enum SecretAction {
    /// Store the key of credential NAME: read from the terminal without echo, or from
    /// standard input when it is piped.
    Set { name: String },
    /// Remove the key stored for credential NAME.
    Delete { name: String },
}

fn main() -> ExitCode {
    // Several rustls backends are compiled in (ring, and aws-lc-rs through the AWS SDK);
    // libraries that ask rustls for "the default" (gcp_auth) need one named up front.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(Command::DefaultConfig) = args.command {
        print!("{EMBEDDED_DEFAULT}");
        let absent: Vec<&str> = credproxy::kinds::ABSENT.iter().map(|(k, _)| *k).collect();
        if !absent.is_empty() {
            eprintln!(
                "credproxy: this build was compiled without the {} kind(s): embedded, their credentials and routes are left out; in a file, remove them",
                absent.join(", ")
            );
        }
        return ExitCode::SUCCESS;
    }
    if let Some(Command::HashToken { name, generate }) = &args.command {
        return hash_token(name.as_deref(), *generate);
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
        return secret(&config, action);
    }
    // Opened before any worker thread starts: on Linux, joining a session keyring is a
    // change of this thread's credentials, which only threads started later inherit.
    if cli::uses_keychain(&config) {
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
    let code = match args.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(credproxy::app::run(resolved, args.config.clone())),
        Command::Status => runtime.block_on(status(&resolved)),
        Command::Check => runtime.block_on(check(resolved)),
        Command::Env => {
            print!("{}", cli::env_report(&resolved));
            ExitCode::SUCCESS
        }
        Command::DefaultConfig | Command::HashToken { .. } => {
            unreachable!("handled before logging starts")
        }
        Command::Secret { .. } => unreachable!("handled before the runtime starts"),
        Command::Login { name, device } => runtime.block_on(login_command(
            &resolved,
            name.as_deref(),
            Login::In { device },
        )),
        Command::Token { name } => {
            runtime.block_on(login_command(&resolved, name.as_deref(), Login::Token))
        }
        Command::Logout { name } => {
            runtime.block_on(login_command(&resolved, name.as_deref(), Login::Out))
        }
    };
    // A credential fetch still running on the blocking pool (a keychain waiting for an
    // unlock prompt, the gcloud CLI) must not hold the exit: dropping the runtime would
    // wait for it without limit, with SIGINT and SIGTERM already caught.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// What `login_command` does.
enum Login {
    In { device: bool },
    Token,
    Out,
}

/// `credproxy login|token|logout [NAME]`: the login's progress on stderr; the outcome (for
/// `token`, the token alone) on stdout.
async fn login_command(resolved: &Resolved, name: Option<&str>, what: Login) -> ExitCode {
    let outcome = async {
        let clients = credproxy::client::Clients::build(resolved)?;
        let session = credproxy::login::find(resolved, name, clients.background())?;
        match what {
            Login::In { device } => {
                credproxy::login::login(&session, device, &|line| eprintln!("{line}")).await
            }
            Login::Token => credproxy::login::token(&session).await,
            Login::Out => credproxy::login::logout(&session).await,
        }
    };
    match outcome.await {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credproxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `credproxy secret set|delete NAME`.
fn secret(config: &Config, action: &SecretAction) -> ExitCode {
    let name = match action {
        SecretAction::Set { name } | SecretAction::Delete { name } => name,
    };
    let item = match cli::keychain_item(config, name) {
        Ok(item) => item,
        Err(error) => {
            eprintln!("credproxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    let store = match keychain::platform_store() {
        Ok(store) => store,
        Err(missing) => {
            eprintln!("credproxy: {missing}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match action {
        SecretAction::Set { .. } => read_secret(
            &format!("key for credential `{name}` (keychain {item}): "),
            "key",
        )
        .and_then(|secret| {
            keychain::store_key(&store, &item, &secret)
                .map(|()| format!("stored the key of credential `{name}` in keychain {item}"))
        }),
        SecretAction::Delete { .. } => keychain::delete_key(&store, &item).and_then(|deleted| {
            if deleted {
                Ok(format!(
                    "removed the key of credential `{name}` from keychain {item}"
                ))
            } else {
                Err(format!(
                    "keychain {item} holds no key for credential `{name}`"
                ))
            }
        }),
    };
    match outcome {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credproxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Shorter tokens could be found from their unsalted hash by trying candidates.
const MIN_TOKEN_LENGTH: usize = 24;

/// `credproxy hash-token [--name NAME] [--generate]`.
fn hash_token(name: Option<&str>, generate: bool) -> ExitCode {
    let token = if generate {
        use base64::Engine;
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            eprintln!("credproxy: the system's random source failed");
            return ExitCode::FAILURE;
        }
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        eprintln!(
            "new caller token (shown once; give it to the robot, keep it nowhere else):\n{token}"
        );
        Ok(Secret::new(token))
    } else {
        read_secret("caller token (not echoed): ", "token").and_then(|token| {
            if token.expose().chars().count() < MIN_TOKEN_LENGTH {
                Err(format!(
                    "the token is shorter than {MIN_TOKEN_LENGTH} characters, so it could be guessed from its hash; use `credproxy hash-token --generate`"
                ))
            } else {
                Ok(token)
            }
        })
    };
    match token {
        Ok(token) => {
            let hash = hex::encode(credproxy::callers::token_sha256(token.expose()));
            match name {
                Some(name) => println!(
                    "[[callers.tokens]]\nname = {}\nsha256 = \"{hash}\"\n# groups = [\"ci\"]  # routes with `groups` admit the token only if it is in one",
                    toml::Value::String(name.to_string())
                ),
                None => println!("sha256 = \"{hash}\""),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credproxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A secret from the terminal without echo, or from standard input when it is piped.
fn read_secret(prompt: &str, what: &str) -> Result<Secret, String> {
    use std::io::{IsTerminal, Read};
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| format!("cannot read the {what} from the terminal: {e}"))?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the {what} from standard input: {e}"))?;
        text
    };
    let value = text.trim();
    if value.is_empty() {
        return Err(format!(
            "no {what} was given; type it at the prompt or pipe it in"
        ));
    }
    if value.contains(['\n', '\r']) {
        return Err(format!(
            "the {what} spans more than one line; give the {what} alone"
        ));
    }
    Ok(Secret::new(value))
}

async fn check(resolved: Resolved) -> ExitCode {
    println!("config: {} (valid)", resolved.config.origin.display_name());
    if credproxy::login::any(&resolved)
        && let Ok(clients) = credproxy::client::Clients::build(&resolved)
    {
        credproxy::login::bind(&resolved, clients.background());
    }
    let rows = cli::check(&resolved).await;
    print!("{}", cli::format_check(&rows));
    let mut callers_ok = true;
    match &resolved.egress {
        Ok(Some(egress)) => {
            println!("egress: {}", egress.describe());
            for line in cli::egress_notes(&resolved, egress) {
                println!("egress: {line}");
            }
        }
        Ok(None) => {}
        Err(error) => {
            callers_ok = false;
            println!("egress: FAILED: {error}");
        }
    }
    if let Some(files) = &resolved.tls {
        match credproxy::server::tls::Certificate::load(files) {
            Ok(_) => println!(
                "tls: {} and {} load",
                files.cert.display(),
                files.key.display()
            ),
            Err(error) => {
                callers_ok = false;
                println!("tls: FAILED: {error}");
            }
        }
    }
    if let Some(callers) = &resolved.config.callers {
        println!(
            "callers: {} static token(s){}",
            callers.tokens.len(),
            if callers.jwt.is_some() { ", JWTs" } else { "" }
        );
        if callers.jwt.is_some() {
            let checked = match credproxy::client::Clients::build(&resolved) {
                Ok(clients) => {
                    let callers = credproxy::callers::Callers::new(
                        callers,
                        resolved.jwks_file.clone(),
                        clients.background().clone(),
                    );
                    callers.prefetch_keys().await
                }
                Err(error) => Some((String::new(), Err(error))),
            };
            match checked {
                Some((issuer, Ok(keys))) => {
                    println!("callers: issuer {issuer}: {keys} signing key(s) fetched")
                }
                Some((issuer, Err(error))) => {
                    callers_ok = false;
                    println!("callers: issuer {issuer}: FAILED: {error}");
                }
                None => {}
            }
        }
    }
    for (_, route) in resolved.routes() {
        if let Some(reason) = route.disabled() {
            println!("route {} disabled: {reason}", route.prefix);
        }
    }
    if callers_ok && rows.iter().all(|r| r.status.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `credproxy status`: the running process's `/status` as tables.
async fn status(resolved: &Resolved) -> ExitCode {
    let Some(addr) = resolved.config.admin.addr() else {
        eprintln!(
            "credproxy: `admin_listen` is \"off\" in this config; set it to an address to use `credproxy status`"
        );
        return ExitCode::FAILURE;
    };
    if addr.port() == 0 {
        eprintln!(
            "credproxy: `admin_listen` has port 0, so the running process's port is not known; set a fixed port"
        );
        return ExitCode::FAILURE;
    }
    match credproxy::app::admin::fetch_status(addr).await {
        Ok(status) => {
            let ours = resolved.config.origin.display_name();
            if status["config"]["origin"].as_str() != Some(ours.as_str()) {
                eprintln!(
                    "credproxy: warning: the process at {addr} runs {}, not {ours}",
                    status["config"]["origin"]
                );
            }
            print!("{}", cli::format_status(&status));
            let failing = status["credentials"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["state"] == "failing"));
            if failing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("credproxy: {error}");
            ExitCode::FAILURE
        }
    }
}
