//! Server-sent events (Anthropic, Vertex, Foundry, OpenAI streams, and credproxy's own
//! translation of Bedrock's): read line by line as the bytes pass, keeping only the line
//! that is not finished yet and the data of an event that may carry usage. Events that
//! never do (`content_block_delta`, `content_block_start`/`_stop`, `ping`), the bulk of a
//! stream, are known by their `event:` line and cost a newline search.

use super::counts::Seen;

/// Lines and event data longer than this are skipped: no usage event comes near it.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Anthropic's events that never carry usage.
const WITHOUT_USAGE: &[&[u8]] = &[
    b"content_block_delta",
    b"content_block_start",
    b"content_block_stop",
    b"ping",
];

#[derive(Debug, Default)]
pub(super) struct Sse {
    /// The start of a line the next bytes finish.
    partial: Vec<u8>,
    /// The line being read is over [`MAX_LINE`]: skipped up to its end.
    long_line: bool,
    /// The data lines of the current event, joined by `\n`.
    data: Vec<u8>,
    /// The current event is one that carries no usage, or its data grew over
    /// [`MAX_LINE`].
    skip_event: bool,
    seen: Seen,
}

impl Sse {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            let piece = &bytes[..end];
            bytes = &bytes[end + 1..];
            if self.long_line {
                self.long_line = false;
            } else if self.partial.is_empty() {
                self.line(piece);
            } else if self.partial.len() + piece.len() <= MAX_LINE {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(piece);
                self.line(&line);
                line.clear();
                self.partial = line;
            } else {
                self.partial.clear();
            }
        }
        if self.long_line || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial = Vec::new();
            self.long_line = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// What the stream reported; an event cut off by the stream's end still counts if its
    /// data is whole.
    pub fn finish(mut self) -> Seen {
        if !self.long_line && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.dispatch();
        self.seen
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if self.skip_event {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => self.skip_event = WITHOUT_USAGE.contains(&value),
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_LINE {
                    self.data = Vec::new();
                    self.skip_event = true;
                    return;
                }
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
            _ => {}
        }
    }

    /// The end of an event (a blank line).
    fn dispatch(&mut self) {
        if !self.skip_event && !self.data.is_empty() {
            self.seen.event(&self.data);
        }
        self.data.clear();
        self.skip_event = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Tokens;
    use super::super::counts::Counts;
    use super::*;

    fn read(chunks: &[&[u8]]) -> Option<Tokens> {
        let mut sse = Sse::default();
        for c in chunks {
            sse.feed(c);
        }
        sse.finish().counts(Counts::default()).tokens()
    }

    #[test]
    fn crlf_lines_comments_and_data_split_over_lines() {
        let stream = b": keep-alive\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\r\ndata: \"usage\":{\"output_tokens\":3}}\r\n\r\n";
        assert_eq!(read(&[stream]).unwrap().output, 3);
    }

    #[test]
    fn events_known_to_carry_no_usage_are_not_read() {
        // A content_block_delta whose data (wrongly) held usage is skipped by its name.
        let stream = b"event: content_block_delta\ndata: {\"usage\":{\"output_tokens\":3}}\n\n";
        assert_eq!(read(&[stream]), None);
        // ...and the next event is read again.
        let stream = b"event: ping\ndata: {\"type\":\"ping\"}\n\ndata: {\"usage\":{\"output_tokens\":4}}\n\n";
        assert_eq!(read(&[stream]).unwrap().output, 4);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_stream_read_on_in_bounded_memory() {
        let mut sse = Sse::default();
        sse.feed(b"data: {\"usage\":{\"input_tokens\":1},\"pad\":\"");
        let pad = vec![b'x'; 4096];
        for _ in 0..64 {
            sse.feed(&pad);
            assert!(sse.partial.capacity() <= MAX_LINE * 2);
        }
        sse.feed(b"\"}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(
            sse.finish().counts(Counts::default()).tokens().unwrap(),
            Tokens {
                output: 9,
                ..Tokens::default()
            }
        );
    }

    #[test]
    fn a_last_event_without_its_blank_line_still_counts() {
        assert_eq!(
            read(&[b"data: {\"usage\":{\"output_tokens\":5}}"])
                .unwrap()
                .output,
            5
        );
        // Cut in the middle of its JSON: nothing.
        assert_eq!(read(&[b"data: {\"usage\":{\"output_tokens\":5"]), None);
    }
}
