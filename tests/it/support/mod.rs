//! Test fixtures, one file per role: the fake upstream, the credproxy process, clients,
//! and the fakes of each cloud's token service.

mod client;
pub mod connect_proxy;
pub mod google;
pub mod h2_upstream;
pub mod idp;
pub mod op;
mod process;
pub mod sigv4;
pub mod tls;
mod upstream;

pub use client::*;
pub use process::*;
pub use upstream::*;
