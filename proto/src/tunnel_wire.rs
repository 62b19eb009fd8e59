//! Tunnel streams as the coordinator relays them: bytes in gRPC's framing,
//! moved from one leg to the other without decoding and re-encoding.
//!
//! tonic's codec copies every message twice on a relay (into its decode
//! buffer, then into its encode buffer), and allocates a fresh buffer per
//! large message: a quarter of the coordinator's work on a bulk tunnel. The
//! relay needs none of it past the first frames of a stream: it forwards the
//! HTTP/2 body chunks as they arrive and only tracks where messages begin and
//! end, so that a frame of its own (an error) can go in between two.
//!
//! The framing is gRPC's (one byte "compressed", four bytes of big-endian
//! length, then the protobuf `Frame`), so both ends stay plain tonic clients.
//! Hand-written because no crate exposes gRPC's message framing apart from a
//! codec; it is the five bytes above.

use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;

use crate::tunnel::{Frame, frame};

/// gRPC's message prefix: compression flag and length.
const PREFIX: usize = 5;
/// The protobuf key of `Frame.data` (field 2, length-delimited).
const DATA_KEY: u8 = 2 << 3 | 2;
/// Largest message accepted, as tonic's default decode limit (the ends send
/// 256 KiB of data per message).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest frame read whole (targets, verdicts, attach ids are a few bytes).
const MAX_CONTROL: usize = 64 << 10;

/// `frame` as one gRPC message.
pub fn encode(frame: &Frame) -> Bytes {
    let len = frame.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    frame.encode_raw(&mut out);
    out.freeze()
}

/// An error frame: the connection failed, and why.
pub fn error(why: String) -> Bytes {
    encode(&Frame {
        kind: Some(frame::Kind::Error(why)),
    })
}

/// Where a stream of relayed chunks stands in gRPC's framing.
#[derive(Debug, Default)]
pub struct Boundaries {
    /// Prefix bytes seen of the next message (0 between messages).
    prefix: [u8; PREFIX],
    prefix_seen: usize,
    /// Bytes of the current message's body still to come.
    remaining: usize,
    /// Whether the current message is a data frame (its first body byte).
    body_started: bool,
    /// Length of the current message's body.
    len: usize,
    /// Data bytes (not framing) of the data frames completed so far.
    pub data_bytes: u64,
}

impl Boundaries {
    /// True between two messages, where a frame of our own may go.
    pub fn at_boundary(&self) -> bool {
        self.prefix_seen == 0 && self.remaining == 0
    }

    /// Follows `chunk` through the framing.
    pub fn advance(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.remaining == 0 {
                let take = (PREFIX - self.prefix_seen).min(chunk.len());
                self.prefix[self.prefix_seen..self.prefix_seen + take]
                    .copy_from_slice(&chunk[..take]);
                self.prefix_seen += take;
                chunk = &chunk[take..];
                if self.prefix_seen < PREFIX {
                    break;
                }
                self.prefix_seen = 0;
                if self.prefix[0] != 0 {
                    return Err(Status::invalid_argument(
                        "tunnel frames are never compressed",
                    ));
                }
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > MAX_MESSAGE {
                    return Err(Status::resource_exhausted(format!(
                        "a tunnel frame of {len} bytes is over the limit of {MAX_MESSAGE}"
                    )));
                }
                (self.remaining, self.len, self.body_started) = (len, len, false);
                continue;
            }
            if !self.body_started {
                self.body_started = true;
                if chunk[0] == DATA_KEY {
                    self.data_bytes += data_len(self.len) as u64;
                }
            }
            let take = self.remaining.min(chunk.len());
            self.remaining -= take;
            chunk = &chunk[take..];
        }
        Ok(())
    }
}

/// The data length of a data frame whose message body is `len` bytes: the
/// body is the key byte, the data length as a varint, then the data.
fn data_len(len: usize) -> usize {
    (1..=5)
        .map(|varint| len.saturating_sub(1 + varint))
        .find(|n| prost::encoding::encoded_len_varint(*n as u64) == len - 1 - n)
        .unwrap_or(0)
}

/// The receiving side of a relayed stream: its first frames decoded, then its
/// bytes as they arrive.
pub struct WireReader {
    body: tonic::body::Body,
    /// Received but not yet handed on.
    pending: BytesMut,
    bounds: Boundaries,
}

impl WireReader {
    pub fn new(body: tonic::body::Body) -> Self {
        WireReader {
            body,
            pending: BytesMut::new(),
            bounds: Boundaries::default(),
        }
    }

    /// The next whole frame, for the control frames that open a stream;
    /// `None` when the stream ends between frames.
    pub async fn message(&mut self) -> Result<Option<Frame>, Status> {
        loop {
            if self.pending.len() >= PREFIX {
                let len = u32::from_be_bytes([
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                    self.pending[4],
                ]) as usize;
                if self.pending[0] != 0 || len > MAX_CONTROL {
                    return Err(Status::invalid_argument(
                        "a tunnel stream must start with its target or attach frame",
                    ));
                }
                if self.pending.len() >= PREFIX + len {
                    let mut whole = self.pending.split_to(PREFIX + len);
                    whole.advance(PREFIX);
                    return Frame::decode(whole.freeze())
                        .map(Some)
                        .map_err(|e| Status::invalid_argument(format!("a bad tunnel frame: {e}")));
                }
            }
            match self.next_chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the tunnel stream ended inside a frame",
                    ));
                }
            }
        }
    }

    /// The next bytes of the stream, whatever frames they hold, and where
    /// the stream then stands; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Status> {
        let chunk = if self.pending.is_empty() {
            match self.next_chunk().await? {
                Some(c) => c,
                None if self.bounds.at_boundary() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the tunnel stream ended inside a frame",
                    ));
                }
            }
        } else {
            self.pending.split().freeze()
        };
        self.bounds.advance(&chunk)?;
        Ok(Some(chunk))
    }

    /// Where the bytes handed on so far leave the framing.
    pub fn bounds(&self) -> &Boundaries {
        &self.bounds
    }

    /// The body's next data chunk; trailers end the stream (with their
    /// error, if they carry one).
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Ok(Some(data)),
                Err(frame) => {
                    if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map)
                        && status.code() != tonic::Code::Ok
                    {
                        return Err(status);
                    }
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Frame {
        Frame {
            kind: Some(frame::Kind::Data(Bytes::from(vec![7u8; n]))),
        }
    }

    #[test]
    fn boundaries_follow_messages_cut_anywhere() {
        let mut wire = Vec::new();
        for f in [
            data(1),
            data(300),
            Frame {
                kind: Some(frame::Kind::HalfClose(true)),
            },
            data(200_000),
            Frame {
                kind: Some(frame::Kind::Error("x".into())),
            },
        ] {
            wire.extend_from_slice(&encode(&f));
        }
        let ends: Vec<usize> = {
            let mut at = 0;
            let mut ends = Vec::new();
            while at < wire.len() {
                let len = u32::from_be_bytes(wire[at + 1..at + 5].try_into().unwrap()) as usize;
                at += PREFIX + len;
                ends.push(at);
            }
            ends
        };
        for cut in [1, 2, 3, 5, 7, 4096, 65536, wire.len()] {
            let mut b = Boundaries::default();
            let mut at = 0;
            for piece in wire.chunks(cut) {
                b.advance(piece).unwrap();
                at += piece.len();
                assert_eq!(b.at_boundary(), ends.contains(&at), "cut {cut} at {at}");
            }
            assert_eq!(b.data_bytes, 1 + 300 + 200_000, "cut {cut}");
        }
    }

    #[test]
    fn data_length_is_read_from_the_message_length() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 262_144, 2_097_151, 2_097_152] {
            assert_eq!(data_len(data(n).encoded_len()), n);
        }
    }

    #[test]
    fn compressed_or_oversized_frames_are_refused() {
        let mut b = Boundaries::default();
        let err = b.advance(&[1, 0, 0, 0, 1, 0]).unwrap_err();
        assert!(err.message().contains("never compressed"), "{err}");
        let mut b = Boundaries::default();
        let err = b.advance(&[0, 0xff, 0, 0, 0]).unwrap_err();
        assert!(err.message().contains("over the limit"), "{err}");
    }
}
