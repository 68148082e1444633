//! The command line as clap reads it; `main.rs` parses it and calls the command's file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// A local authenticating reverse proxy for AI model APIs: point a client's base URL at it,
/// and it adds the real credential to every request.
#[derive(Debug, Parser)]
#[command(name = "credproxy", version)]
pub struct Args {
    /// Config file (default: $CREDPROXY_CONFIG, else the embedded default).
    #[arg(long, short, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. $CREDPROXY_LOG (a tracing filter) overrides it.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Log as text or as JSON lines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and fetch every credential once; exit 1 if any fails.
    Check,
    /// Print the environment clients need to use each route.
    Env,
    /// Ask the running credproxy (its admin listener, from the config) how each credential
    /// and route is doing.
    Status,
    /// Ask the running credproxy for usage and spend in the current window: a table by
    /// caller, group, tag, route or model.
    Usage {
        /// What to break the totals down by.
        #[arg(long, value_enum, default_value = "caller")]
        by: crate::cli::usage::By,
        /// Only the requests that carried this tag (a benchmark run, a project).
        #[arg(long)]
        tag: Option<String>,
        /// The window: the sliding minute, or the UTC day or month.
        #[arg(long, value_enum, default_value = "day")]
        window: crate::cli::usage::WindowArg,
    },
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
pub enum SecretAction {
    /// Store the key of credential NAME: read from the terminal without echo, or from
    /// standard input when it is piped.
    Set { name: String },
    /// Remove the key stored for credential NAME.
    Delete { name: String },
}
