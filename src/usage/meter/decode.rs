//! A compressed answer (`content-encoding`) is decoded on the side for metering: the client
//! still gets the compressed bytes. Decoding is incremental, through a fixed buffer, and
//! what one chunk may expand to is capped, so a decompression bomb stops the metering
//! instead of growing memory or eating the worker's time.

use std::io::Write;

use brotli_decompressor::DecompressorWriter;
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

use super::Shape;

/// Decoded bytes one chunk may give: this much plus [`RATIO`] times its size. Text
/// compresses far less than that; a bomb goes far beyond.
const ALLOWANCE: usize = 1024 * 1024;
const RATIO: usize = 256;
/// The brotli decoder's output buffer.
const BROTLI_BUFFER: usize = 4096;

/// The answer's `content-encoding`, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    /// One credproxy cannot decode, or several stacked: no usage is read.
    Unknown,
}

impl Coding {
    pub fn of(headers: &http::HeaderMap) -> Coding {
        let mut found = Coding::Identity;
        for value in headers.get_all(http::header::CONTENT_ENCODING) {
            let Ok(value) = value.to_str() else {
                return Coding::Unknown;
            };
            let codings = value.split(',').map(str::trim);
            for coding in codings.filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity")) {
                if found != Coding::Identity {
                    return Coding::Unknown; // stacked
                }
                found = match coding.to_ascii_lowercase().as_str() {
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "br" => Coding::Brotli,
                    _ => return Coding::Unknown,
                };
            }
        }
        found
    }
}

/// Where decoded bytes go: the answer's reader, within the current chunk's allowance.
#[derive(Debug)]
pub(super) struct Sink {
    shape: Shape,
    allowance: usize,
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if bytes.len() > self.allowance {
            return Err(std::io::Error::other("the answer decompresses to too much"));
        }
        self.allowance -= bytes.len();
        self.shape.feed(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The answer's body as the reader gets it: as is, or decoded on the side.
pub(super) enum Body {
    Plain(Shape),
    Gzip(GzDecoder<Sink>),
    /// `deflate` before its first two bytes tell zlib (RFC 1950, what the name means)
    /// from raw deflate (what some servers send): those bytes so far.
    Deflate(Shape, Vec<u8>),
    Zlib(ZlibDecoder<Sink>),
    RawDeflate(DeflateDecoder<Sink>),
    Brotli(Box<DecompressorWriter<Sink>>),
    /// Undecodable, corrupt or a bomb: what was read before stands, nothing more is read.
    Stopped(Shape),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let coding = match self {
            Body::Plain(_) => "identity",
            Body::Gzip(_) => "gzip",
            Body::Deflate(..) | Body::Zlib(_) | Body::RawDeflate(_) => "deflate",
            Body::Brotli(_) => "br",
            Body::Stopped(_) => "stopped",
        };
        f.debug_tuple("Body").field(&coding).finish()
    }
}

fn sink(shape: Shape) -> Sink {
    Sink {
        shape,
        allowance: 0,
    }
}

impl Body {
    pub fn new(coding: Coding, shape: Shape) -> Body {
        match coding {
            Coding::Identity => Body::Plain(shape),
            Coding::Gzip => Body::Gzip(GzDecoder::new(sink(shape))),
            Coding::Deflate => Body::Deflate(shape, Vec::new()),
            Coding::Brotli => Body::Brotli(Box::new(DecompressorWriter::new(
                sink(shape),
                BROTLI_BUFFER,
            ))),
            Coding::Unknown => Body::Stopped(shape),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let allowance = ALLOWANCE.saturating_add(chunk.len().saturating_mul(RATIO));
        let written = match self {
            Body::Plain(shape) => {
                shape.feed(chunk);
                return;
            }
            Body::Stopped(_) => return,
            Body::Deflate(_, start) => {
                start.extend_from_slice(chunk);
                if start.len() < 2 {
                    return;
                }
                let Body::Deflate(shape, start) = self.take() else {
                    unreachable!("matched above")
                };
                *self = match is_zlib(&start) {
                    true => Body::Zlib(ZlibDecoder::new(sink(shape))),
                    false => Body::RawDeflate(DeflateDecoder::new(sink(shape))),
                };
                return self.feed(&start);
            }
            Body::Gzip(d) => write(d, allowance, |d| d.get_mut(), chunk),
            Body::Zlib(d) => write(d, allowance, |d| d.get_mut(), chunk),
            Body::RawDeflate(d) => write(d, allowance, |d| d.get_mut(), chunk),
            Body::Brotli(d) => write(&mut **d, allowance, |d| d.get_mut(), chunk),
        };
        if written.is_err() {
            *self = Body::Stopped(self.take().into_shape());
        }
    }

    /// Whatever the decoder still holds goes to the reader (an answer cut short gives up
    /// what was decoded of it), and the reader is handed back.
    pub fn finish(mut self) -> Shape {
        let _ = match &mut self {
            Body::Gzip(d) => {
                d.get_mut().allowance = ALLOWANCE;
                d.try_finish()
            }
            Body::Zlib(d) => {
                d.get_mut().allowance = ALLOWANCE;
                d.try_finish()
            }
            Body::RawDeflate(d) => {
                d.get_mut().allowance = ALLOWANCE;
                d.try_finish()
            }
            Body::Brotli(d) => {
                d.get_mut().allowance = ALLOWANCE;
                d.close()
            }
            Body::Plain(_) | Body::Stopped(_) | Body::Deflate(..) => Ok(()),
        };
        self.into_shape()
    }

    /// The reader, as it is: nothing more is decoded for it.
    fn into_shape(self) -> Shape {
        match self {
            Body::Plain(shape) | Body::Stopped(shape) | Body::Deflate(shape, _) => shape,
            Body::Gzip(mut d) => take_shape(d.get_mut()),
            Body::Zlib(mut d) => take_shape(d.get_mut()),
            Body::RawDeflate(mut d) => take_shape(d.get_mut()),
            Body::Brotli(mut d) => take_shape(d.get_mut()),
        }
    }

    fn take(&mut self) -> Body {
        std::mem::replace(self, Body::Stopped(Shape::default()))
    }
}

/// The sink's reader; the decoder, finishing as it is dropped, decodes no more for it.
fn take_shape(sink: &mut Sink) -> Shape {
    sink.allowance = 0;
    std::mem::take(&mut sink.shape)
}

/// Writes `chunk` to a decoder whose sink may take `allowance` decoded bytes.
fn write<D: Write>(
    decoder: &mut D,
    allowance: usize,
    sink: impl Fn(&mut D) -> &mut Sink,
    chunk: &[u8],
) -> std::io::Result<()> {
    sink(decoder).allowance = allowance;
    decoder.write_all(chunk)
}

/// A zlib header (RFC 1950): method 8 (deflate) and a check over its two bytes.
fn is_zlib(start: &[u8]) -> bool {
    start[0] & 0x0f == 8 && (u16::from(start[0]) << 8 | u16::from(start[1])) % 31 == 0
}
