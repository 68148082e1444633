//! One file per command: what `check`, `env`, `status`, `usage`, `secret`, `hash-token` and
//! `login`/`token`/`logout` do, the text they print and the exit code they end with.
//! `main.rs` parses the arguments and calls one of these.

pub mod args;
pub mod check;
pub mod env;
pub mod hash_token;
pub mod login;
pub mod secret;
pub mod status;
mod table;
pub mod usage;

use std::process::ExitCode;

/// An error for people on stderr, and exit 1.
fn failed(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("credproxy: {error}");
    ExitCode::FAILURE
}
