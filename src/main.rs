//! The command line: parse arguments, load the config, start. The only place that turns
//! errors into text for people and picks exit codes (2: bad config, 1: anything else).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use credproxy::cli;
use credproxy::config::{Config, EMBEDDED_DEFAULT, Resolved};
use credproxy::credentials::{Secret, keychain};
use credproxy::kinds::Environment;
use credproxy::proxy::{Proxy, Shared};
use credproxy::server::{self, Bound};
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
    /// Print the embedded default config.
    DefaultConfig,
    /// Print the `[[callers.tokens]]` lines for a caller token: read from the terminal
    /// without echo (or from standard input when piped); only its SHA-256 is printed.
    HashToken {
        /// The caller's name in the access log (prints a whole `[[callers.tokens]]` table).
        #[arg(long)]
        name: Option<String>,
    },
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
        return ExitCode::SUCCESS;
    }
    if let Some(Command::HashToken { name }) = &args.command {
        return hash_token(name.as_deref());
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
    match args.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(resolved)),
        Command::Check => runtime.block_on(check(resolved)),
        Command::Env => {
            print!("{}", cli::env_report(&resolved));
            ExitCode::SUCCESS
        }
        Command::DefaultConfig | Command::HashToken { .. } => {
            unreachable!("handled before logging starts")
        }
        Command::Secret { .. } => unreachable!("handled before the runtime starts"),
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

/// `credproxy hash-token [--name NAME]`.
fn hash_token(name: Option<&str>) -> ExitCode {
    match read_secret("caller token (not echoed): ", "token") {
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
    let rows = cli::check(&resolved).await;
    print!("{}", cli::format_check(&rows));
    let mut callers_ok = true;
    if let Some(callers) = &resolved.config.callers {
        println!(
            "callers: {} static token(s){}",
            callers.tokens.len(),
            if callers.jwt.is_some() { ", JWTs" } else { "" }
        );
        if callers.jwt.is_some() {
            let checked = match credproxy::client::build(&resolved) {
                Ok(client) => {
                    let callers = credproxy::callers::Callers::new(
                        callers,
                        resolved.jwks_file.clone(),
                        client,
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

async fn run(resolved: Resolved) -> ExitCode {
    watch_other_signals();
    check_fd_limit(&resolved);
    let client = match credproxy::client::build(&resolved) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("credproxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared::new(&resolved, client));
    let tls = match &resolved.tls {
        None => None,
        Some(files) => {
            match server::tls::Certificate::load(files).and_then(|c| Ok((c.acceptor()?, c))) {
                Ok((acceptor, certificate)) => {
                    certificate.watch();
                    Some(acceptor)
                }
                Err(error) => {
                    eprintln!("credproxy: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };

    let mut bound = Vec::new();
    for listener in &resolved.listeners {
        let socket = match tokio::net::TcpListener::bind(listener.addr).await {
            Ok(socket) => socket,
            Err(error) => {
                eprintln!("credproxy: cannot listen on {}: {error}", listener.addr);
                return ExitCode::FAILURE;
            }
        };
        let addr = socket.local_addr().unwrap_or(listener.addr);
        let routes: Vec<String> = listener
            .routes
            .iter()
            .map(|r| match &r.upstream {
                Ok(upstream) => format!("{} -> {upstream}", r.prefix),
                Err(_) => format!("{} (disabled)", r.prefix),
            })
            .collect();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(target: "credproxy::server", %addr, scheme, routes = %routes.join(", "), "listening");
        warn_if_exposed(&resolved, addr, tls.is_some());
        let proxy = Arc::new(Proxy::new(
            Arc::clone(&shared),
            &resolved,
            listener.routes.clone(),
            addr,
        ));
        bound.push(Bound {
            listener: socket,
            proxy,
            tls: tls.clone(),
        });
    }
    warm_up(&resolved);
    if shared.callers.is_some() {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let prefetched = match &shared.callers {
                Some(callers) => callers.prefetch_keys().await,
                None => None,
            };
            match prefetched {
                Some((issuer, Ok(keys))) => {
                    tracing::info!(target: "credproxy::callers", %issuer, keys, "identity provider keys ready")
                }
                Some((issuer, Err(error))) => {
                    tracing::warn!(target: "credproxy::callers", %issuer, %error,
                        "identity provider keys not available yet; callers with JWTs get 503 until they are")
                }
                None => {}
            }
        });
    }
    server::run(
        bound,
        &resolved.config.limits,
        shutdown_signal(),
        resolved.config.shutdown_grace,
    )
    .await;
    ExitCode::SUCCESS
}

/// Says at start what serving other machines means without callers or without TLS.
fn warn_if_exposed(resolved: &Resolved, addr: std::net::SocketAddr, tls: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    if resolved.config.callers.is_none() {
        tracing::warn!(target: "credproxy::server", %addr,
            "this listener serves other machines and has no [callers]: anyone who can reach it spends the credentials");
    } else if !tls {
        tracing::warn!(target: "credproxy::server", %addr,
            "this listener serves other machines without TLS: caller tokens cross the network in clear text; set tls_cert and tls_key");
    }
}

/// Fetches every credential in the background so the first request does not wait, and
/// says at start which routes cannot work yet and why.
fn warm_up(resolved: &Resolved) {
    for (_, route) in resolved.routes() {
        if let Some(reason) = route.disabled() {
            tracing::warn!(route = %route.prefix, "route disabled: {reason}");
        }
    }
    for (index, credential) in resolved.credentials.iter().enumerate() {
        if resolved.unused_reason(index).is_some() {
            continue;
        }
        let cached = Arc::clone(&credential.cached);
        if cached.source().is_literal() {
            tracing::warn!(credential = %cached.name(),
                "the key is written in the config file; prefer `env`, `file` or `helper` so the file can be shared");
        }
        let routes: Vec<String> = resolved
            .routes()
            .filter(|(_, r)| r.credential == index && r.disabled().is_none())
            .map(|(l, r)| cli::base_url(resolved, l.addr, &r.prefix))
            .collect();
        tokio::spawn(async move {
            let source = cached.source().describe();
            match cached.get().await {
                Ok(_) => tracing::info!(credential = %cached.name(), %source, "credential ready"),
                Err(error) => {
                    tracing::warn!(credential = %cached.name(), %source, routes = %routes.join(", "), %error,
                    "credential not available yet; its routes answer 502 with this reason until it is")
                }
            }
        });
    }
}

/// Signals that would otherwise kill the process mid-stream: SIGHUP (reload, not supported
/// yet) and the user signals are logged instead.
fn watch_other_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let watched = [
        (
            SignalKind::hangup(),
            "SIGHUP",
            "reloading the configuration is not supported yet; restart credproxy to apply a changed config",
        ),
        (SignalKind::user_defined1(), "SIGUSR1", "ignored"),
        (SignalKind::user_defined2(), "SIGUSR2", "ignored"),
    ];
    for (kind, name, what) in watched {
        match signal(kind) {
            Ok(mut received) => {
                tokio::spawn(async move {
                    while received.recv().await.is_some() {
                        tracing::info!(signal = name, "{name} received: {what}");
                    }
                });
            }
            Err(error) => tracing::warn!(signal = name, %error, "cannot watch {name}"),
        }
    }
}

/// Raises the soft limit on open files to the hard limit (as Go and nginx do): each client
/// connection and each upstream request holds a descriptor, and the usual soft limit of
/// 1,024 is reached by a modest burst. Warns when the connection limits could still reach it.
fn check_fd_limit(resolved: &Resolved) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let per_listener = resolved.config.limits.max_connections as u64;
    // A client connection, and an upstream connection for each, plus some to spare.
    let wanted = per_listener * resolved.listeners.len() as u64 * 2 + 64;
    if wanted > limit {
        tracing::warn!(
            open_files = limit,
            max_connections = per_listener,
            "the open-file limit is below what `max_connections` allows; lower it or raise the limit (ulimit -n)"
        );
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops credproxy gracefully");
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: no new connections; finishing the open ones");
}
