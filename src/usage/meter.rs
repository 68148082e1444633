//! Token usage read from an answer while it streams to the client. The shape is told by the
//! answer's own headers, never by the route: SSE (`text/event-stream`), Bedrock's event
//! stream (`application/vnd.amazon.eventstream`), else JSON; a compressed answer is
//! decoded on the side. Whatever the shape, a [`Meter`] holds a bounded amount: one
//! unfinished line or frame, or the last [`json::WINDOW`] bytes of a JSON answer (plus a
//! decoder's fixed state: 32 KiB for deflate, the stream's window — at most 16 MiB — for
//! brotli).

mod counts;
mod decode;
mod frames;
mod json;
mod sse;
#[cfg(test)]
mod tests;

use counts::{Counts, Seen};
use decode::{Body, Coding};

/// Tokens one answer used, each kind apart (Anthropic's names: `input` leaves out the
/// cached prompt tokens, which are `cache_read`; `cache_creation` is what was written to
/// the cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_read: u64,
}

/// Reads usage from an answer's bytes as the client gets them (after credproxy's own
/// translation), bounded memory, never altering them.
#[derive(Debug)]
pub struct Meter {
    body: Body,
    /// Bedrock's `x-amzn-bedrock-*-token-count` headers.
    headers: Counts,
}

// An answer's observer moves with its body between workers: a Meter must be `Send`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Meter>();
};

/// How the (decoded) body is read.
#[derive(Debug)]
enum Shape {
    Sse(sse::Sse),
    Frames(frames::Frames),
    Json(json::Tail),
}

impl Default for Shape {
    fn default() -> Shape {
        Shape::Json(json::Tail::default())
    }
}

impl Shape {
    fn of(headers: &http::HeaderMap) -> Shape {
        let media = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if media.eq_ignore_ascii_case("text/event-stream") {
            Shape::Sse(sse::Sse::default())
        } else if media.eq_ignore_ascii_case("application/vnd.amazon.eventstream") {
            Shape::Frames(frames::Frames::default())
        } else {
            Shape::default()
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Shape::Sse(s) => s.feed(bytes),
            Shape::Frames(f) => f.feed(bytes),
            Shape::Json(j) => j.feed(bytes),
        }
    }

    fn finish(self) -> Seen {
        match self {
            Shape::Sse(s) => s.finish(),
            Shape::Frames(f) => f.finish(),
            Shape::Json(j) => j.finish(),
        }
    }
}

/// A Bedrock token-count header, when present and a number.
/// Bedrock's token-count headers, in one pass over the answer's headers (four lookups by
/// name would parse and hash each name on every answer, Bedrock's or not).
fn bedrock_counts(headers: &http::HeaderMap) -> Counts {
    let mut counts = Counts::default();
    for (name, value) in headers {
        let Some(kind) = name.as_str().strip_prefix("x-amzn-bedrock-") else {
            continue;
        };
        let slot = match kind {
            "input-token-count" => &mut counts.input,
            "output-token-count" => &mut counts.output,
            "cache-write-input-token-count" => &mut counts.cache_creation,
            "cache-read-input-token-count" => &mut counts.cache_read,
            _ => continue,
        };
        *slot = value.to_str().ok().and_then(|v| v.trim().parse().ok());
    }
    counts
}

impl Meter {
    /// From the answer's headers: content-type (SSE, AWS event stream
    /// `application/vnd.amazon.eventstream`, else JSON), content-encoding (gzip, x-gzip,
    /// deflate, br: decoded on the side; unknown encodings → no usage, not a panic), and
    /// Bedrock's x-amzn-bedrock-input-token-count / -output-token-count /
    /// -cache-read-input-token-count / -cache-write-input-token-count headers.
    pub fn new(headers: &http::HeaderMap) -> Meter {
        Meter {
            body: Body::new(Coding::of(headers), Shape::of(headers)),
            headers: bedrock_counts(headers),
        }
    }

    /// The next bytes the client is given.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.body.feed(chunk);
    }

    /// What was seen, also when the stream was cut short (counted up to where it stopped).
    /// None: the answer carried no usage at all.
    pub fn finish(self) -> Option<Tokens> {
        self.body.finish().finish().counts(self.headers).tokens()
    }
}
