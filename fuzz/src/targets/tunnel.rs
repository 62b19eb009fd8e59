//! Tunnel streams as they arrive: gRPC-framed `Frame`s cut into HTTP/2
//! data chunks anywhere, maybe ending with trailers, and the target header.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use apiary_proto::tunnel::{Frame, Target as TunnelTarget, frame};
use apiary_proto::tunnel_wire::{self, FrameReader, MAX_MESSAGE, Piece, TARGET_HEADER, WireReader};
use prost::Message;
use prost::bytes::Bytes;

use super::{Target, block_on, text};

/// A request or response body that delivers given chunks, then trailers.
struct Chunks {
    parts: VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        if let Some(p) = self.parts.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(p))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }
}

/// A stream from fuzz bytes: byte 0 says how many chunk lengths follow
/// (low three bits) and whether trailers end the stream (top bit, their
/// grpc-status from the last byte); the rest is the stream, cut into
/// chunks of those lengths in turn. Also returns the stream's bytes and
/// the trailers' status code.
fn stream(data: &[u8]) -> (tonic::body::Body, Vec<u8>, Option<i32>) {
    let Some((&head, rest)) = data.split_first() else {
        return (tonic::body::Body::empty(), Vec::new(), None);
    };
    let k = usize::from(head & 7).min(rest.len());
    let (lens, mut rest) = rest.split_at(k);
    let mut code = None;
    if head & 0x80 != 0
        && let Some((&last, body)) = rest.split_last()
    {
        code = Some(i32::from(last % 17));
        rest = body;
    }
    let mut parts = VecDeque::new();
    let mut at = 0;
    let mut i = 0;
    while at < rest.len() {
        let n = lens
            .get(i % k.max(1))
            .map_or(rest.len(), |b| 1 + usize::from(*b) * 7);
        let end = (at + n).min(rest.len());
        parts.push_back(Bytes::copy_from_slice(&rest[at..end]));
        at = end;
        i += 1;
    }
    let trailers = code.map(|c| {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from(c));
        t.insert("grpc-message", http::HeaderValue::from_static("fuzz"));
        t
    });
    let body = tonic::body::Body::new(Chunks { parts, trailers });
    (body, rest.to_vec(), code)
}

/// What a reader hands on, flattened: data byte by byte, control frames whole.
#[derive(Debug, PartialEq)]
enum Event {
    Byte(u8),
    Frame(Frame),
}

/// gRPC's framing read by the book, one message at a time with prost:
/// the events, and whether the stream was well formed to its end.
fn reference(stream: &[u8], code: Option<i32>) -> (Vec<Event>, bool) {
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 0 {
            return (events, false);
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > MAX_MESSAGE || rest.len() < 5 + len {
            return (events, false);
        }
        match Frame::decode(&rest[5..5 + len]) {
            Ok(Frame {
                kind: Some(frame::Kind::Data(d)),
            }) => events.extend(d.iter().map(|b| Event::Byte(*b))),
            Ok(f) => events.push(Event::Frame(f)),
            Err(_) => return (events, false),
        }
        rest = &rest[5 + len..];
    }
    (events, code.unwrap_or(0) == 0)
}

pub const TUNNEL_FRAMES: Target = Target {
    name: "tunnel_frames",
    covers: "proto/src/tunnel_wire.rs: FrameReader::next (what ctl and agents read from a tunnel stream)",
    run: tunnel_frames,
    dict: &["\0\0\0\0", "\x12", "\x0a", "\x22", "\x28"],
    max_len: 64 << 10,
    test_mutations: 3000,
    known: None,
};

/// `FrameReader` agrees with the by-the-book reading: the same data and
/// frames in the same order, an error exactly when the stream is not
/// well formed (after at most the beginning of a frame's data).
fn tunnel_frames(data: &[u8]) {
    let (body, bytes, code) = stream(data);
    let (want, well_formed) = reference(&bytes, code);
    let mut got = Vec::new();
    let mut reader = FrameReader::new(body);
    let ended = block_on(async {
        loop {
            match reader.next().await {
                Ok(Some(Piece::Data(d))) => got.extend(d.iter().map(|b| Event::Byte(*b))),
                Ok(Some(Piece::Frame(f))) => got.push(Event::Frame(f)),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    });
    assert_eq!(
        ended,
        well_formed,
        "FrameReader {} a stream that is {}well formed",
        if ended { "accepted" } else { "refused" },
        if well_formed { "" } else { "not " }
    );
    if well_formed {
        assert!(got == want, "FrameReader read other frames than sent");
    } else {
        // Data may be handed on before its frame turns out to be cut short.
        let same = got.len() >= want.len() && got[..want.len()] == want[..];
        let only_data = got[want.len().min(got.len())..]
            .iter()
            .all(|e| matches!(e, Event::Byte(_)));
        assert!(same && only_data, "FrameReader read other frames than sent");
    }
}

pub const TUNNEL_RELAY: Target = Target {
    name: "tunnel_relay",
    covers: "proto/src/tunnel_wire.rs: WireReader::message, WireReader::chunk, Boundaries::advance (the coordinator's relay)",
    run: tunnel_relay,
    dict: &["\0\0\0\0", "\x12", "\x0a", "\x2a"],
    max_len: 64 << 10,
    test_mutations: 3000,
    known: None,
};

/// The relay decodes the opening frames (one or two, by the top bit of
/// the last byte) and then forwards the rest byte for byte: nothing lost,
/// nothing added, and never more data counted than bytes forwarded.
fn tunnel_relay(data: &[u8]) {
    let two = data.last().is_some_and(|b| b & 0x40 != 0);
    let (body, bytes, _) = stream(data);
    let mut reader = WireReader::new(body);
    block_on(async {
        // Where each decoded frame ends, from its own length prefix.
        let mut consumed = 0usize;
        for _ in 0..if two { 2 } else { 1 } {
            match reader.message().await {
                Ok(Some(_)) => {
                    let p = &bytes[consumed..consumed + 5];
                    consumed += 5 + u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
                }
                Ok(None) | Err(_) => return,
            }
        }
        let mut forwarded = Vec::new();
        loop {
            match reader.chunk().await {
                Ok(Some(c)) => forwarded.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            reader.bounds().at_boundary(),
            "the relay ended inside a frame"
        );
        assert!(
            reader.bounds().data_bytes <= forwarded.len() as u64,
            "the relay counted more data than it forwarded"
        );
        assert!(
            forwarded == bytes[consumed..],
            "the relay forwarded other bytes than were sent after the opening frames"
        );
    });
}

pub const TUNNEL_TARGET: Target = Target {
    name: "tunnel_target",
    covers: "proto/src/tunnel_wire.rs: target_from_headers (the apiary-target-bin header); ctl/src/tunnel.rs: parse_target; api/src/tunnel.rs: AllowList::parse, allows",
    run: tunnel_target,
    dict: &[
        "database:admin",
        ":",
        "127.0.0.1",
        "/8",
        "/128",
        "=",
        "-bin",
    ],
    max_len: 4096,
    test_mutations: 3000,
    known: None,
};

/// The header value decodes or is refused, and a target that decodes
/// comes back the same through `target_metadata`.
fn tunnel_target(data: &[u8]) {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(TARGET_HEADER, value);
        if let Ok(Some(target)) = tunnel_wire::target_from_headers(&headers) {
            let back = tunnel_wire::target_metadata(&target).into_headers();
            let again = tunnel_wire::target_from_headers(&back);
            assert!(
                matches!(&again, Ok(Some(t)) if *t == target),
                "a target does not survive its header: {target:?} → {again:?}"
            );
        }
    }
    let s = text(data);
    let _: Result<TunnelTarget, _> = apiary_ctl::tunnel::parse_target(&s);
    let entries: Vec<String> = s.lines().map(str::to_string).collect();
    if let Ok(list) = apiary_api::tunnel::AllowList::parse(&entries) {
        let _ = list.to_string();
        for ip in [
            "127.0.0.1",
            "::1",
            "10.232.1.2",
            "0.0.0.0",
            "255.255.255.255",
            "::",
        ] {
            let _ = list.allows(ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()));
        }
    }
}
