//! credproxy: a local authenticating reverse proxy for AI model APIs.
//!
//! A client sends a request with no real credential; credproxy answers it like this:
//!
//! ```text
//! listen ─► guard ─► route ─► strip ─► authenticate ─► forward ─► classify ─► stream back
//!                                          ▲                         │
//!                                          └─ invalidate + refresh ◄─┘ auth failure on the
//!                                                                      first attempt: replay once
//! ```
//!
//! # Layout
//! - [`config`]: raw serde mirror of the TOML → validated [`config::Config`]; every problem
//!   reported at once with its file, line and column.
//! - [`server`]: binds listeners, accepts HTTP/1.1 and h2c, shuts down gracefully.
//! - [`proxy`]: the per-request pipeline — local-safety guard, route table, header strip,
//!   body limit, forward, classify and retry once, errors in the Anthropic shape.
//! - [`credentials`]: one file per credential source, the [`credentials::Secret`] type and
//!   the cache (single-flight, refresh-ahead, serve-last-good, conditional invalidation).
//! - [`schemes`]: one file per way of applying a credential to a request, each with the
//!   classifier that says which upstream answers mean "this credential went bad".
//! - [`telemetry`]: tracing set-up and the allow-listed access log.
//! - [`cli`]: the `check` and `env` reports (the command line itself lives in `main.rs`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod credentials;
pub mod proxy;
pub mod schemes;
pub mod server;
pub mod telemetry;
