//! Failures: who has to act for a failed request to succeed, and how an error and its
//! causes read on one line. Every error credproxy answers with carries a [`Side`], in the
//! `x-credproxy-error` header and the access log, so a user can tell "fix your request" from
//! "fix the credential" from "the upstream is down" at a glance.

/// The side a failure belongs to (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Who is calling: no caller token, an invalid one, or one not admitted here.
    Caller,
    /// The request itself: its host, path, size, method.
    Client,
    /// Where the upstream credential comes from: a helper, a chain, a variable.
    CredentialSource,
    /// The upstream: unreachable, too slow, unreadable.
    Upstream,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Client => "client",
            Side::CredentialSource => "credential",
            Side::Upstream => "upstream",
        }
    }
}

/// An error and its causes on one line: `client error (Connect): tcp connect error:
/// Connection refused (os error 111)`. A cause whose text the line already holds is
/// skipped (many libraries repeat their source in their own message).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let next = e.to_string();
        if !next.is_empty() && !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        current = e.source();
    }
    text
}
