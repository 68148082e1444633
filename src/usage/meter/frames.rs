//! Bedrock's event streams as the client gets them on a route that passes them through:
//! InvokeModelWithResponseStream (`chunk` events, each holding one Anthropic event in
//! base64; the last adds `amazon-bedrock-invocationMetrics`) and ConverseStream (a
//! `metadata` event with `usage`). Read frame by frame with `aws-smithy-eventstream`,
//! keeping only the frame not finished yet; a frame too large to be one that carries
//! usage is skipped by its length without being held.

use aws_smithy_eventstream::frame::read_message_from;

use super::counts::Seen;
use crate::eventstream::{chunk_event, header};

/// Frames over this are skipped: usage frames are a few hundred bytes.
const MAX_FRAME: usize = 256 * 1024;
/// The prelude's total length, headers length and CRC, plus the message CRC.
const MIN_FRAME: usize = 16;

#[derive(Debug, Default)]
pub(super) struct Frames {
    /// The start of a frame the next bytes finish (never more than one frame).
    pending: Vec<u8>,
    /// Bytes of an oversized frame still to pass by.
    skip: usize,
    /// The stream could not be read (a bad length or checksum): nothing more is.
    broken: bool,
    seen: Seen,
}

/// What the start of some bytes holds.
enum Front<'a> {
    /// A whole frame, and what follows it.
    Frame(&'a [u8], &'a [u8]),
    /// The start of a frame of this length.
    Partial(usize),
    /// Not even the length yet.
    Short,
    /// A frame too long to keep: its length.
    Oversized(usize),
    /// A length too short for any frame: this is no event stream, or a broken one.
    Broken,
}

fn front(bytes: &[u8]) -> Front<'_> {
    let Some(prefix) = bytes.first_chunk::<4>() else {
        return Front::Short;
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len < MIN_FRAME {
        return Front::Broken;
    }
    if len > MAX_FRAME {
        return Front::Oversized(len);
    }
    match bytes.split_at_checked(len) {
        Some((frame, rest)) => Front::Frame(frame, rest),
        None => Front::Partial(len),
    }
}

impl Frames {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.broken && !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.pending.is_empty() {
                // Whole frames are read where they lie; only a frame's start is kept.
                match front(bytes) {
                    Front::Frame(frame, rest) => {
                        self.read(frame);
                        bytes = rest;
                    }
                    Front::Partial(_) | Front::Short => {
                        self.pending.extend_from_slice(bytes);
                        return;
                    }
                    Front::Oversized(len) => self.skip = len,
                    Front::Broken => self.broken = true,
                }
                continue;
            }
            // Finish the pending frame (first its length) from `bytes`, taking no more.
            let wanted = match front(&self.pending) {
                Front::Short => 4 - self.pending.len(),
                Front::Partial(len) => len - self.pending.len(),
                Front::Oversized(len) => {
                    self.skip = len - self.pending.len();
                    self.pending = Vec::new();
                    continue;
                }
                Front::Broken => {
                    self.broken = true;
                    return;
                }
                Front::Frame(..) => unreachable!("a whole frame is read as soon as it is"),
            };
            let (taken, rest) = bytes.split_at(wanted.min(bytes.len()));
            self.pending.extend_from_slice(taken);
            bytes = rest;
            if let Front::Frame(..) = front(&self.pending) {
                let mut frame = std::mem::take(&mut self.pending);
                self.read(&frame);
                frame.clear();
                self.pending = frame;
            }
        }
    }

    fn read(&mut self, frame: &[u8]) {
        let Ok(message) = read_message_from(frame) else {
            self.broken = true;
            return;
        };
        if header(&message, ":message-type") != Some("event") {
            return;
        }
        match header(&message, ":event-type") {
            Some("chunk") => {
                if let Some(event) = chunk_event(message.payload()) {
                    self.seen.event(&event);
                }
            }
            Some("metadata") => self.seen.event(message.payload()),
            _ => {}
        }
    }

    pub fn finish(self) -> Seen {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::super::counts::Counts;
    use super::*;
    use crate::eventstream::encode_chunk;

    const USAGE: &str = r#"{"type":"message_delta","usage":{"output_tokens":3}}"#;

    #[test]
    fn an_oversized_frame_whose_length_comes_in_pieces_is_skipped_unheld() {
        let big = format!(
            r#"{{"type":"content_block_delta","text":"{}"}}"#,
            "z".repeat(MAX_FRAME)
        );
        let mut stream = encode_chunk(&big);
        stream.extend(encode_chunk(USAGE));
        let mut frames = Frames::default();
        frames.feed(&stream[..2]);
        frames.feed(&stream[2..5]);
        assert!(frames.skip > 0 && frames.pending.is_empty());
        for piece in stream[5..].chunks(4096) {
            frames.feed(piece);
            assert!(frames.pending.len() <= MAX_FRAME);
        }
        assert_eq!(frames.finish().counts(Counts::default()).output, Some(3));
    }

    #[test]
    fn a_bad_checksum_stops_the_reading() {
        let mut stream = encode_chunk(USAGE);
        let last = stream.len() - 1;
        stream[last] ^= 1;
        stream.extend(encode_chunk(USAGE));
        let mut frames = Frames::default();
        frames.feed(&stream);
        assert!(frames.broken);
        assert_eq!(frames.finish().counts(Counts::default()), Counts::default());
    }
}
