//! Tunnel streams on the wire: `Frame`s in gRPC's framing, written and read
//! without tonic's codec so that a connection's bytes are never copied into
//! a message buffer.
//!
//! tonic's codec copies every message once to encode it and once more to
//! decode it (into a fresh buffer per large message), at each end and twice
//! at the coordinator: about a third of the copying on a bulk tunnel. Here a
//! data frame goes out as a few bytes of header followed by the data itself
//! ([`Outbound`]); a reader hands data on as slices of the chunks HTTP/2
//! received ([`FrameReader`]); the coordinator forwards chunks as they arrive
//! and only tracks where frames begin and end ([`WireReader`],
//! [`Boundaries`]), so that a frame of its own (an error) can go in between.
//!
//! The framing is gRPC's (one byte "compressed", four bytes of big-endian
//! length, then the protobuf `Frame`), so the methods stay gRPC methods that
//! any gRPC client can call. Hand-written because no crate exposes gRPC's
//! message framing apart from a codec; it is the five bytes above and the
//! two-field prefix of a data frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;

use crate::tunnel::{Frame, frame};

/// gRPC's message prefix: compression flag and length.
const PREFIX: usize = 5;
/// The protobuf key of `Frame.data` (field 2, length-delimited).
const DATA_KEY: u8 = 2 << 3 | 2;
/// Largest message accepted, as tonic's default decode limit (the ends send
/// up to 512 KiB of data per message, `tunnel_io::CHUNK`).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest frame read whole (targets, verdicts, attach ids are a few bytes).
const MAX_CONTROL: usize = 64 << 10;

/// The length of the frame whose gRPC prefix `prefix` starts with (at least
/// five bytes). A compressed frame is refused with `fault` (whose fault it
/// is: `InvalidArgument` from a caller, `Internal` from the coordinator),
/// one over [`MAX_MESSAGE`] as too large.
fn frame_len(prefix: &[u8], fault: tonic::Code) -> Result<usize, Status> {
    if prefix[0] != 0 {
        return Err(Status::new(fault, "tunnel frames are never compressed"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Status::resource_exhausted(format!(
            "a tunnel frame of {len} bytes is over the limit of {MAX_MESSAGE}"
        )));
    }
    Ok(len)
}

/// `frame` as one gRPC message.
pub fn encode(frame: &Frame) -> Bytes {
    let len = frame.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    frame.encode_raw(&mut out);
    out.freeze()
}

/// What precedes `len` bytes of data in a data frame: gRPC's prefix, the
/// field's key and the data's length.
fn data_head(len: usize) -> Bytes {
    let body = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
    let mut out = BytesMut::with_capacity(PREFIX + body - len);
    out.put_u8(0);
    out.put_u32(body as u32);
    out.put_u8(DATA_KEY);
    prost::encoding::encode_varint(len as u64, &mut out);
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
                let len = frame_len(&self.prefix, tonic::Code::InvalidArgument)?;
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
    body: Body,
    /// Received but not yet handed on.
    pending: BytesMut,
    bounds: Boundaries,
}

impl WireReader {
    pub fn new(body: Body) -> Self {
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
                let len = frame_len(&self.pending, tonic::Code::InvalidArgument)
                    .ok()
                    .filter(|len| *len <= MAX_CONTROL)
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "a tunnel stream must start with its target or attach frame",
                        )
                    })?;
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

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, Status> {
        next_chunk(&mut self.body).await
    }
}

/// `body`'s next data chunk; trailers end the stream (with their error, if
/// they carry one).
async fn next_chunk(body: &mut Body) -> Result<Option<Bytes>, Status> {
    loop {
        let Some(frame) = body.frame().await else {
            return Ok(None);
        };
        match frame?.into_data() {
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

/// What an end of a tunnel stream reads: data as it arrives, or a whole
/// control frame.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// Some of a data frame's bytes (a frame may come in several pieces).
    Data(Bytes),
    Frame(Frame),
}

#[derive(Debug)]
enum ReadState {
    /// Collecting a frame's prefix, key and (for data) length into `head`.
    Head,
    /// Handing on this many more bytes of data.
    Data(usize),
    /// Collecting a whole frame of this length (plus prefix) into `head`.
    Whole(usize),
}

/// Reads the frames of a tunnel stream, data without copying it.
pub struct FrameReader {
    body: Body,
    /// The rest of the last chunk received.
    pending: Bytes,
    head: BytesMut,
    state: ReadState,
}

impl FrameReader {
    pub fn new(body: Body) -> Self {
        FrameReader {
            body,
            pending: Bytes::new(),
            head: BytesMut::new(),
            state: ReadState::Head,
        }
    }

    /// The next piece; `None` when the stream ends between frames.
    pub async fn next(&mut self) -> Result<Option<Piece>, Status> {
        loop {
            let complete =
                matches!(self.state, ReadState::Whole(len) if self.head.len() == PREFIX + len);
            if self.pending.is_empty() && !complete {
                match next_chunk(&mut self.body).await? {
                    Some(chunk) => self.pending = chunk,
                    None if matches!(self.state, ReadState::Head) && self.head.is_empty() => {
                        return Ok(None);
                    }
                    None => {
                        return Err(Status::unavailable(
                            "the tunnel stream ended inside a frame",
                        ));
                    }
                }
            }
            if let Some(piece) = self.advance()? {
                return Ok(Some(piece));
            }
        }
    }

    /// Takes what it can of `pending`; a piece once one is complete.
    fn advance(&mut self) -> Result<Option<Piece>, Status> {
        match self.state {
            ReadState::Data(remaining) => {
                let piece = self.pending.split_to(remaining.min(self.pending.len()));
                let remaining = remaining - piece.len();
                self.state = if remaining == 0 {
                    ReadState::Head
                } else {
                    ReadState::Data(remaining)
                };
                Ok((!piece.is_empty()).then_some(Piece::Data(piece)))
            }
            ReadState::Whole(len) => {
                let take = (PREFIX + len - self.head.len()).min(self.pending.len());
                self.head.extend_from_slice(&self.pending.split_to(take));
                if self.head.len() < PREFIX + len {
                    return Ok(None);
                }
                let mut whole = self.head.split();
                whole.advance(PREFIX);
                self.state = ReadState::Head;
                let frame = Frame::decode(whole.freeze())
                    .map_err(|e| Status::internal(format!("a bad tunnel frame: {e}")))?;
                Ok(Some(match frame.kind {
                    Some(frame::Kind::Data(d)) => Piece::Data(d),
                    _ => Piece::Frame(frame),
                }))
            }
            ReadState::Head => {
                // A byte at a time: a head is at most ten bytes.
                while !self.pending.is_empty() {
                    self.head.put_u8(self.pending.get_u8());
                    if let Some(next) = self.head_done()? {
                        // A whole frame keeps collecting; otherwise the
                        // head has been read.
                        if !matches!(next, ReadState::Whole(_)) {
                            self.head.clear();
                        }
                        self.state = next;
                        return Ok(None);
                    }
                }
                Ok(None)
            }
        }
    }

    /// Where the frame whose start is in `head` goes next, once `head` says.
    fn head_done(&self) -> Result<Option<ReadState>, Status> {
        let h = &self.head[..];
        if h.len() < PREFIX {
            return Ok(None);
        }
        let len = frame_len(h, tonic::Code::Internal)?;
        if len == 0 {
            return Ok(Some(ReadState::Whole(0)));
        }
        match h.get(PREFIX) {
            None => return Ok(None),
            Some(&key) if key != DATA_KEY => return Ok(Some(ReadState::Whole(len))),
            Some(_) => {}
        }
        let varint = &h[PREFIX + 1..];
        match varint.last() {
            Some(b) if b & 0x80 == 0 => {}
            _ if varint.len() < 5 && varint.len() < len - 1 => return Ok(None),
            _ => return Ok(Some(ReadState::Whole(len))),
        }
        let n = prost::encoding::decode_varint(&mut &varint[..])
            .map_err(|e| Status::internal(format!("a bad tunnel frame: {e}")))?;
        // Only a frame that is its data and nothing else is read in place.
        Ok(Some(if 1 + varint.len() as u64 + n == len as u64 {
            if n == 0 {
                ReadState::Head
            } else {
                ReadState::Data(n as usize)
            }
        } else {
            ReadState::Whole(len)
        }))
    }
}

/// What [`Outbound`] queues: a control frame, or a data frame's head and its
/// data (one item, so nothing can come between them).
pub enum Chunks {
    One(Bytes),
    Two(Bytes, Bytes),
}

/// The sending side of a tunnel stream.
#[derive(Clone)]
pub struct Outbound(mpsc::Sender<Chunks>);

impl Outbound {
    /// A stream's sender and the body that sends what it queues; at most
    /// `frames` frames wait.
    pub fn new(frames: usize) -> (Outbound, OutboundBody) {
        let (tx, rx) = mpsc::channel(frames);
        (Outbound(tx), OutboundBody { rx, second: None })
    }

    /// Queues a control frame; false when the stream is gone.
    pub async fn frame(&self, kind: frame::Kind) -> bool {
        let f = Frame { kind: Some(kind) };
        self.0.send(Chunks::One(encode(&f))).await.is_ok()
    }

    /// Queues `data` as one data frame, without copying it.
    pub async fn data(&self, data: Bytes) -> bool {
        let head = data_head(data.len());
        self.0.send(Chunks::Two(head, data)).await.is_ok()
    }
}

/// A request body that sends what an [`Outbound`] queues, and ends (the
/// gRPC half-close) when every `Outbound` is dropped.
pub struct OutboundBody {
    rx: mpsc::Receiver<Chunks>,
    second: Option<Bytes>,
}

impl http_body::Body for OutboundBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(data) = self.second.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        Poll::Ready(match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Chunks::One(b)) => Some(Ok(http_body::Frame::data(b))),
            Some(Chunks::Two(head, data)) => {
                self.second = Some(data);
                Some(Ok(http_body::Frame::data(head)))
            }
            None => None,
        })
    }
}

/// The request header that may carry an `Open`'s target (a protobuf
/// `Target`), so that the coordinator can resolve it and ask the agent as
/// soon as the request's headers arrive, not once its first frame has
/// followed them. Without it, the first frame is the target.
pub const TARGET_HEADER: &str = "apiary-target-bin";

/// `target` as the value of [`TARGET_HEADER`].
pub fn target_metadata(target: &crate::tunnel::Target) -> tonic::metadata::MetadataMap {
    let mut map = tonic::metadata::MetadataMap::new();
    map.insert_bin(
        TARGET_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&target.encode_to_vec()),
    );
    map
}

/// The target in `headers`, if they carry one.
pub fn target_from_headers(
    headers: &http::HeaderMap,
) -> Result<Option<crate::tunnel::Target>, Status> {
    let Some(value) = headers.get(TARGET_HEADER) else {
        return Ok(None);
    };
    let mut only = http::HeaderMap::new();
    only.insert(TARGET_HEADER, value.clone());
    let bytes = tonic::metadata::MetadataMap::from_headers(only)
        .get_bin(TARGET_HEADER)
        .and_then(|v| v.to_bytes().ok())
        .ok_or_else(|| Status::invalid_argument(format!("{TARGET_HEADER} is not base64")))?;
    crate::tunnel::Target::decode(bytes)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{TARGET_HEADER}: {e}")))
}

/// Calls the streaming method at `path` (`/package.Service/Method`) on
/// `channel` with `metadata` and `body` as the request; the response's
/// frames once its headers are in.
pub async fn call(
    channel: Channel,
    path: &'static str,
    metadata: tonic::metadata::MetadataMap,
    body: OutboundBody,
) -> Result<FrameReader, Status> {
    use tower::ServiceExt;
    let mut req = http::Request::new(Body::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    *req.headers_mut() = metadata.into_headers();
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let response = channel
        .oneshot(req)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    // A refusal comes as a response of headers only, carrying the status.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "the coordinator answered HTTP {}",
            response.status()
        )));
    }
    Ok(FrameReader::new(response.into_body()))
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
                let len =
                    u32::from_be_bytes(wire[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
                at += PREFIX + len;
                ends.push(at);
            }
            ends
        };
        for cut in [1, 2, 3, 5, 7, 4096, 65536, wire.len()] {
            let mut b = Boundaries::default();
            let mut at = 0;
            for piece in wire.chunks(cut) {
                b.advance(piece).expect("well framed");
                at += piece.len();
                assert_eq!(b.at_boundary(), ends.contains(&at), "cut {cut} at {at}");
            }
            assert_eq!(b.data_bytes, 1 + 300 + 200_000, "cut {cut}");
        }
    }

    #[test]
    fn data_length_is_read_from_the_message_length() {
        for n in [
            0usize, 1, 127, 128, 16_383, 16_384, 262_144, 2_097_151, 2_097_152,
        ] {
            assert_eq!(data_len(data(n).encoded_len()), n);
        }
    }

    /// A request or response body that delivers `wire` in pieces of `cut`
    /// bytes.
    fn body(wire: &[u8], cut: usize) -> Body {
        let chunks: Vec<Result<http_body::Frame<Bytes>, Status>> = wire
            .chunks(cut)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        Body::new(http_body_util::StreamBody::new(tokio_stream::iter(chunks)))
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Every frame `wire` holds, read by a `FrameReader` that receives it in
    /// pieces of `cut` bytes; data frames joined.
    fn read_all(wire: &[u8], cut: usize) -> Vec<Piece> {
        let mut reader = FrameReader::new(body(wire, cut));
        block_on(async {
            let mut out: Vec<Piece> = Vec::new();
            while let Some(p) = reader.next().await.expect("frame") {
                match (out.last_mut(), p) {
                    (Some(Piece::Data(prev)), Piece::Data(d)) => {
                        let mut joined = BytesMut::from(&prev[..]);
                        joined.extend_from_slice(&d);
                        *prev = joined.freeze();
                    }
                    (_, p) => out.push(p),
                }
            }
            out
        })
    }

    #[test]
    fn a_reader_gets_every_frame_whatever_the_chunks() {
        let half_close = Frame {
            kind: Some(frame::Kind::HalfClose(true)),
        };
        let mut wire = Vec::new();
        wire.extend_from_slice(&data_head(300));
        wire.extend_from_slice(&[1u8; 300]);
        wire.extend_from_slice(&encode(&half_close));
        // A data frame written by any protobuf encoder, and an empty one.
        wire.extend_from_slice(&encode(&data(200_000)));
        wire.extend_from_slice(&data_head(0));
        wire.extend_from_slice(&encode(&Frame::default()));
        for cut in [1, 2, 6, 7, 4096, wire.len()] {
            let pieces = read_all(&wire, cut);
            assert_eq!(pieces.len(), 4, "cut {cut}: {:?}", pieces.len());
            assert_eq!(
                pieces[0],
                Piece::Data(Bytes::from(vec![1u8; 300])),
                "cut {cut}"
            );
            assert_eq!(pieces[1], Piece::Frame(half_close.clone()), "cut {cut}");
            assert_eq!(
                pieces[2],
                Piece::Data(Bytes::from(vec![7u8; 200_000])),
                "cut {cut}"
            );
            assert_eq!(pieces[3], Piece::Frame(Frame::default()), "cut {cut}");
        }
    }

    #[test]
    fn the_relay_decodes_the_first_frames_and_passes_the_rest_on_as_it_is() {
        let target = Frame {
            kind: Some(frame::Kind::Attach(42)),
        };
        let mut wire = encode(&target).to_vec();
        wire.extend_from_slice(&encode(&data(100_000)));
        wire.extend_from_slice(&encode(&Frame {
            kind: Some(frame::Kind::HalfClose(true)),
        }));
        for cut in [1, 3, 5, 9, 1000, wire.len()] {
            let mut reader = WireReader::new(body(&wire, cut));
            let (first, rest) = block_on(async {
                let first = reader.message().await.expect("first frame");
                let mut rest = Vec::new();
                while let Some(c) = reader.chunk().await.expect("chunk") {
                    rest.extend_from_slice(&c);
                }
                (first, rest)
            });
            assert_eq!(first, Some(target.clone()), "cut {cut}");
            assert_eq!(rest, wire[encode(&target).len()..], "cut {cut}");
            assert!(reader.bounds().at_boundary(), "cut {cut}");
            assert_eq!(reader.bounds().data_bytes, 100_000, "cut {cut}");
        }
    }

    #[test]
    fn a_stream_cut_inside_a_frame_or_opened_with_garbage_is_an_error_not_a_hang() {
        let wire = encode(&data(1000));
        let mut reader = WireReader::new(body(&wire[..600], 100));
        let err = block_on(async {
            while reader.chunk().await?.is_some() {}
            Ok::<_, Status>(())
        })
        .expect_err("cut");
        assert!(err.message().contains("ended inside a frame"), "{err}");

        let mut reader = FrameReader::new(body(&wire[..600], 100));
        let err = block_on(async {
            while reader.next().await?.is_some() {}
            Ok::<_, Status>(())
        })
        .expect_err("cut");
        assert!(err.message().contains("ended inside a frame"), "{err}");

        let garbage = [0u8, 0xff, 0xff, 0, 0, 1, 2, 3];
        let mut reader = WireReader::new(body(&garbage, 8));
        let err = block_on(reader.message()).expect_err("garbage");
        assert!(err.message().contains("must start with"), "{err}");
    }

    #[test]
    fn a_target_travels_in_the_headers_and_garbage_there_is_named() {
        let target = crate::tunnel::Target {
            node: "bee-1".into(),
            host: "10.232.0.5".into(),
            port: 2379,
            engine: true,
            session: "s-1".into(),
            ..Default::default()
        };
        let headers = target_metadata(&target).into_headers();
        assert_eq!(
            target_from_headers(&headers).expect("decodes"),
            Some(target)
        );
        assert_eq!(
            target_from_headers(&http::HeaderMap::new()).expect("none"),
            None
        );
        let mut bad = http::HeaderMap::new();
        bad.insert(TARGET_HEADER, http::HeaderValue::from_static("%%%"));
        let err = target_from_headers(&bad).expect_err("garbage");
        assert!(err.message().contains(TARGET_HEADER), "{err}");
    }

    #[test]
    fn compressed_or_oversized_frames_are_refused() {
        let mut b = Boundaries::default();
        let err = b.advance(&[1, 0, 0, 0, 1, 0]).expect_err("compressed");
        assert!(err.message().contains("never compressed"), "{err}");
        let mut b = Boundaries::default();
        let err = b.advance(&[0, 0xff, 0, 0, 0]).expect_err("oversized");
        assert!(err.message().contains("over the limit"), "{err}");
    }
}
