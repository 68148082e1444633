//! Black-box tests: the credproxy binary between clients and fakes on 127.0.0.1:0, one
//! module per area. One test binary, so the fixtures compile once.

mod answers;
mod aws;
mod azure;
mod callers;
mod cli;
mod egress;
mod failover;
mod google;
mod hardening;
mod http2;
mod keychain;
mod oidc;
mod operability;
mod properties;
mod proxy;
mod support;
mod translate;
mod usage;
