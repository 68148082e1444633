//! A JSON answer (Anthropic's, Bedrock invoke's and Converse's, OpenAI's): `usage` comes
//! at or near the end of every shape, so only the last bytes are kept, and its object is
//! found there when the answer ends. A large answer costs a fixed window, not its size.

use std::collections::VecDeque;

use super::counts::{Seen, Usage, value_after_key};

/// The bytes kept from the end of the answer: usage and what may follow it (Converse's
/// `metrics`, OpenAI's `system_fingerprint`) are well under this.
pub(super) const WINDOW: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(super) struct Tail {
    pub(super) window: VecDeque<u8>,
}

impl Tail {
    pub fn feed(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(WINDOW)..];
        let over = (self.window.len() + bytes.len()).saturating_sub(WINDOW);
        self.window.drain(..over);
        self.window.extend(bytes);
    }

    /// The last `"usage"` object in the window that has a count in it and is a member of
    /// the answer's outermost object: one nested in its content (a tool's input) is not
    /// the answer's, nor is anything in an answer cut off before its end.
    pub fn finish(mut self) -> Seen {
        let mut seen = Seen::default();
        let tail = self.window.make_contiguous();
        for at in memchr::memmem::rfind_iter(tail, b"\"usage\"") {
            let value = value_after_key(&tail[at + b"\"usage\"".len()..]);
            if !value.starts_with(b"{") {
                continue;
            }
            let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Usage>();
            let Some(Ok(usage)) = values.next() else {
                continue;
            };
            if !usage.counts().is_empty()
                && ends_the_outermost_object(&value[values.byte_offset()..])
            {
                seen.usage(&usage);
                break;
            }
        }
        seen
    }
}

/// Whether `rest`, what follows a member's value, is the rest of the outermost object:
/// more members, its `}`, the end.
fn ends_the_outermost_object(rest: &[u8]) -> bool {
    let mut object = Vec::with_capacity(rest.len() + 6);
    object.extend_from_slice(b"{\"\":0");
    object.extend_from_slice(rest);
    serde_json::from_slice::<serde::de::IgnoredAny>(&object).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::counts::Counts;
    use super::*;

    fn read(body: &[u8]) -> Counts {
        let mut tail = Tail::default();
        tail.feed(body);
        tail.finish().counts(Counts::default())
    }

    #[test]
    fn the_answers_own_usage_wins_over_one_nested_in_its_content() {
        let body = br#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":999}}}],"usage":{"input_tokens":12,"output_tokens":3}}"#;
        assert_eq!(read(body).input, Some(12));
        // A usage with no count in it is passed over for an earlier one.
        let body =
            br#"{"usage":{"output_tokens":4},"meta":{"usage":{"unrelated":1}},"note":"usage"}"#;
        assert_eq!(read(body).output, Some(4));
    }

    #[test]
    fn only_the_window_is_kept_however_large_the_answer() {
        let mut tail = Tail::default();
        tail.feed(br#"{"content":[{"type":"text","text":""#);
        let text = vec![b'a'; 1000];
        for _ in 0..1000 {
            tail.feed(&text);
            assert!(tail.window.len() <= WINDOW);
        }
        tail.feed(&vec![b'b'; 3 * WINDOW]);
        assert_eq!(tail.window.len(), WINDOW);
        tail.feed(br#""}],"usage":{"input_tokens":7,"output_tokens":100000}}"#);
        assert!(tail.window.capacity() <= 2 * WINDOW);
        let counts = tail.finish().counts(Counts::default());
        assert_eq!((counts.input, counts.output), (Some(7), Some(100000)));
    }
}
