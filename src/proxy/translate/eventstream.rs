//! Bedrock's `invoke-with-response-stream` answer (`application/vnd.amazon.eventstream`)
//! re-emitted as the Anthropic API's SSE, frame by frame: each `chunk` frame's payload is
//! `{"bytes":"<base64>"}` holding one Anthropic stream event, which goes out as
//! `event: <type>\ndata: <the event's JSON, byte for byte>\n\n` as soon as its frame is
//! complete. An exception (or error) frame becomes an Anthropic `error` event, mapped like
//! Bedrock's HTTP errors, and ends the stream.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};

use super::errors;
use crate::eventstream::{chunk_event, header};
// Where fakes, tests and the benchmark have long found the frame writers.
#[doc(hidden)]
pub use crate::eventstream::{encode_chunk, encode_frame};

/// A frame larger than this is refused (botocore's limit).
const MAX_BUFFERED: usize = 24 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct EventStreamToSse {
    decoder: MessageFrameDecoder,
    buffer: BytesMut,
    /// An error event was sent: the stream ends here.
    pub finished: bool,
}

#[derive(serde::Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl EventStreamToSse {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes from the upstream; returns the SSE for every frame they completed (empty
    /// when none did).
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        if self.finished {
            return Bytes::new();
        }
        self.buffer.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match self.decoder.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => {
                    self.emit(&message, &mut out);
                    if self.finished {
                        break;
                    }
                }
                Ok(DecodedFrame::Incomplete) => {
                    if self.buffer.len() > MAX_BUFFERED {
                        self.fail(
                            "api_error",
                            "Bedrock sent an event-stream frame larger than 24 MiB",
                            &mut out,
                        );
                    }
                    break;
                }
                Err(error) => {
                    self.fail(
                        "api_error",
                        &format!("Bedrock's event stream could not be read: {error}"),
                        &mut out,
                    );
                    break;
                }
            }
        }
        Bytes::from(out)
    }

    /// At the upstream's end: an error event if a frame was cut short.
    pub fn finish(&mut self) -> Bytes {
        if self.finished || self.buffer.is_empty() {
            return Bytes::new();
        }
        let mut out = Vec::new();
        self.fail(
            "api_error",
            "Bedrock's event stream ended in the middle of a frame",
            &mut out,
        );
        Bytes::from(out)
    }

    fn emit(&mut self, message: &Message, out: &mut Vec<u8>) {
        let header = |name: &str| header(message, name);
        match header(":message-type") {
            Some("event") if header(":event-type") == Some("chunk") => {
                let Some(event) = chunk_event(message.payload()) else {
                    return;
                };
                let Some(kind) = serde_json::from_slice::<Typed>(&event)
                    .ok()
                    .and_then(|t| t.kind)
                else {
                    return; // an event without a type is dropped, as the SDK drops it
                };
                sse(out, &kind, &event);
            }
            Some("exception") => {
                let code = header(":exception-type").unwrap_or_default();
                let text = serde_json::from_slice::<serde_json::Value>(message.payload())
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("Message"))?
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(message.payload()).into_owned());
                let (_, kind) = errors::bedrock_code(code).unwrap_or((500, "api_error"));
                self.fail(kind, &format!("{code}: {text}"), out);
            }
            Some("error") => {
                let code = header(":error-code").unwrap_or_default();
                let text = header(":error-message").unwrap_or_default();
                let (_, kind) = errors::bedrock_code(code).unwrap_or((500, "api_error"));
                self.fail(kind, &format!("{code}: {text}"), out);
            }
            _ => {}
        }
    }

    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        let (_, body) = errors::anthropic_error(500, kind, message);
        sse(out, "error", body.to_string().as_bytes());
        self.finished = true;
    }
}

/// One SSE event; a payload with line breaks is split over `data:` lines (clients join
/// them with `\n`, so the JSON arrives unchanged).
fn sse(out: &mut Vec<u8>, event: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(headers: &[(&'static str, &str)], payload: Vec<u8>) -> Vec<u8> {
        encode_frame(headers, payload)
    }

    fn chunk(event: &str) -> Vec<u8> {
        encode_chunk(event)
    }

    #[test]
    fn frames_become_events_as_they_complete() {
        let start = r#"{"type":"message_start","message":{"id":"m"}}"#;
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        let mut bytes = chunk(start);
        bytes.extend(chunk(delta));
        let mut decoder = EventStreamToSse::new();
        // Split mid-frame: nothing until the first frame is whole.
        assert_eq!(decoder.feed(&bytes[..10]), Bytes::new());
        let first_len = chunk(start).len();
        let out = decoder.feed(&bytes[10..first_len]);
        assert_eq!(out, format!("event: message_start\ndata: {start}\n\n"));
        let out = decoder.feed(&bytes[first_len..]);
        assert_eq!(
            out,
            format!("event: content_block_delta\ndata: {delta}\n\n")
        );
        assert_eq!(decoder.finish(), Bytes::new());
    }

    #[test]
    fn an_exception_frame_ends_the_stream_with_a_mapped_error() {
        let exception = frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests"}"#.to_vec(),
        );
        let mut decoder = EventStreamToSse::new();
        let out = decoder.feed(&exception);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("event: error\ndata: "), "{text}");
        assert!(text.contains(r#""type":"rate_limit_error""#), "{text}");
        assert!(
            text.contains("throttlingException: Too many requests"),
            "{text}"
        );
        assert!(decoder.finished);
        assert_eq!(decoder.feed(&chunk(r#"{"type":"ping"}"#)), Bytes::new());
    }
}
