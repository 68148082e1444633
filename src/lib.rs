//! credproxy: a local authenticating reverse proxy for AI model APIs.
//!
//! A client sends a request with no real credential; credproxy answers it like this:
//!
//! ```text
//! listen ─► admit ─► target ─► body ─► prepare ─► forward ─► retry? ─► deliver ─► respond
//!                                         ▲          ▲          │
//!                                         │          └──────────┘ the credential (or its
//!                                         │           signature) went bad: renew, replay once
//!                                         └──── next target ◄───┘ several targets, the answer
//!                                                 a failure, nothing sent yet: fail over
//! ```
//!
//! One phase per file in `proxy/` (docs/architecture.md has the map).
//!
//! # Layout
//! Bottom first; a module uses only modules above it in this list (`src/layers.rs`
//! checks it), so there is no import cycle.
//! - [`runtime`]: where work runs — one serving thread per core, each with its own
//!   upstream pool; slow and scheduled work on a background runtime.
//! - [`failure`]: who must act on an error ([`failure::Side`]) and how a cause chain reads.
//! - [`files`]: PEM certificates and keys, and the stamp that tells a file changed.
//! - [`headers`]: which headers cross the proxy (hop-by-hop, client credentials).
//! - [`eventstream`]: Bedrock's AWS event-stream frames — what a frame's headers and
//!   `chunk` payload say, read by the translation and by usage metering alike.
//! - [`upstream`]: an upstream base URL, checked.
//! - [`fields`]: reading TOML with every value's line and column; every problem collected.
//! - [`credentials`]: the values ([`credentials::Secret`], [`credentials::Credential`]),
//!   one file per source, and the per-credential cache (single-flight, refresh-ahead,
//!   serve-last-good, conditional invalidation).
//! - [`schemes`]: one file per way of applying a credential to a request, each with the
//!   classifier that says which upstream answers mean "this credential went bad".
//! - [`kinds`]: one file per credential kind: its keys, their checks, its source and
//!   scheme binding, its placeholders, its client environment.
//! - [`config`]: raw TOML → validated [`config::Config`] → [`config::Resolved`] (the
//!   environment read once).
//! - [`telemetry`]: tracing set-up and the allow-listed access log.
//! - [`usage`]: what each model request used — token counts read from the answer as it
//!   streams (every provider's shape, compressed or not) and the model it asked for — and
//!   spend and quotas per caller, group and tag, in an embedded store or Redis.
//! - [`client`]: the upstream clients, one per serving thread: HTTP/1.1 through hyper's
//!   pool, HTTP/2 through a pool of its own that opens connections as streams run out
//!   (rustls with the OS verifier and `ca_file`, the egress proxy, client certificates).
//! - [`callers`]: who is calling a shared credproxy — JWTs from the company's identity
//!   provider (keys fetched, cached, rotated) and hashed static tokens; who may use which route.
//! - [`login`]: the employee's side of a gateway — `oidc` credentials signed in by
//!   `credproxy login` (browser or device code), stored, and refreshed under a lock shared
//!   by every credproxy process of the user.
//! - [`proxy`]: the per-request pipeline, a file per phase — admit (guard, callers),
//!   target (route, groups, slot), body, prepare (strip, translate), forward with its
//!   retry policy, failover across a route's targets (their health in `targets`), deliver (stream back, translate back; the observers' tap), respond
//!   (errors in the Anthropic shape, metrics, access line).
//! - [`server`]: binds listeners, accepts HTTP/1.1 and h2 (TLS with certificate reload, or
//!   cleartext), shuts down gracefully.
//! - [`cli`]: one file per command (`check`, `env`, `status`, `secret`, `hash-token`,
//!   `login`/`token`/`logout`); `main.rs` parses the command line and calls them.
//! - [`app`]: the running process — generations of the config swapped on reload, the
//!   admin endpoints (`/healthz`, `/readyz`, `/metrics`, `/status`), signals.
#![forbid(unsafe_code)]

pub mod app;
pub mod callers;
pub mod cli;
pub mod client;
pub mod config;
pub mod credentials;
pub mod eventstream;
pub mod failure;
pub mod fields;
pub mod files;
pub mod headers;
pub mod kinds;
#[cfg(test)]
mod layers;
pub mod login;
pub mod proxy;
pub mod runtime;
pub mod schemes;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod usage;
