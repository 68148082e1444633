//! AWS event-stream frames as Bedrock sends them (`application/vnd.amazon.eventstream`):
//! what both readers of Bedrock's streams take from a decoded frame — the translation to
//! SSE (`proxy::translate::eventstream`) and usage metering (`usage::meter`) — and the
//! writer that fakes, tests and the benchmark build streams with. Frames themselves are
//! decoded by `aws-smithy-eventstream`.

use aws_smithy_types::event_stream::Message;
use base64::Engine;

/// A frame's string header (`:message-type`, `:event-type`, `:exception-type`...).
pub fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: std::borrow::Cow<'a, str>,
}

/// The Anthropic stream event a `chunk` frame carries: its payload is
/// `{"bytes":"<base64 of the event's JSON>"}` (Bedrock may add a padding field).
pub fn chunk_event(payload: &[u8]) -> Option<Vec<u8>> {
    let chunk = serde_json::from_slice::<Chunk>(payload).ok()?;
    base64::engine::general_purpose::STANDARD
        .decode(chunk.bytes.as_bytes())
        .ok()
}

/// One event-stream frame with string headers: what Bedrock sends (fakes, tests and the
/// benchmark build their streams with it).
#[doc(hidden)]
pub fn encode_frame(headers: &[(&'static str, &str)], payload: Vec<u8>) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    let mut message = Message::new(payload);
    for (name, value) in headers {
        message = message.add_header(Header::new(
            *name,
            HeaderValue::String(value.to_string().into()),
        ));
    }
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("a frame of string headers encodes");
    out
}

/// Bedrock's `chunk` frame carrying one Anthropic stream event.
#[doc(hidden)]
pub fn encode_chunk(event: &str) -> Vec<u8> {
    let payload = serde_json::json!({
        "bytes": base64::engine::general_purpose::STANDARD.encode(event)
    });
    encode_frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        serde_json::to_vec(&payload).expect("JSON"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_frame_gives_back_its_event_and_headers() {
        let event = r#"{"type":"message_stop"}"#;
        let message =
            aws_smithy_eventstream::frame::read_message_from(&encode_chunk(event)[..]).unwrap();
        assert_eq!(header(&message, ":event-type"), Some("chunk"));
        assert_eq!(header(&message, ":exception-type"), None);
        assert_eq!(chunk_event(message.payload()).unwrap(), event.as_bytes());
        // Bedrock's padding field is ignored; a payload that is no chunk gives nothing.
        let padded = br#"{"bytes":"e30=","p":"abcdefgh"}"#;
        assert_eq!(chunk_event(padded).unwrap(), b"{}");
        assert_eq!(chunk_event(br#"{"bytes":"!!"}"#), None);
        assert_eq!(chunk_event(b"{}"), None);
    }
}
