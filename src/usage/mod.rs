//! Usage: what each model request used, read from the traffic credproxy already forwards.
//!
//! - [`meter`]: token counts read from an answer while it streams to the client (every
//!   provider's JSON, SSE and event-stream shape, compressed or not), in bounded memory and
//!   without touching a byte the client gets.
//! - [`model`]: the model a request asks for, from its body or its path.

pub mod meter;
pub mod model;
