//! Moving one TCP connection's bytes over a tunnel stream, for both ends that
//! hold a socket (ctl's local side, the agent's target side).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::tunnel::{Frame, frame};

/// Largest data frame: big enough for throughput, small enough that the
/// bounded channels on the way cap memory per connection.
pub const CHUNK: usize = 64 * 1024;

pub fn data(bytes: Vec<u8>) -> Frame {
    Frame {
        kind: Some(frame::Kind::Data(bytes)),
    }
}

/// Copies `tcp` ⇄ the stream until both directions are done. A TCP EOF is sent
/// as `half_close`, a received `half_close` shuts our write side, an `error`
/// frame or a failed stream resets the connection.
pub async fn pipe(tcp: TcpStream, mut inbound: Streaming<Frame>, outbound: mpsc::Sender<Frame>) {
    let (mut rd, mut wr) = tcp.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = outbound
                        .send(Frame {
                            kind: Some(frame::Kind::HalfClose(true)),
                        })
                        .await;
                    return;
                }
                Ok(n) => {
                    if outbound.send(data(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = outbound
                        .send(Frame {
                            kind: Some(frame::Kind::Error(format!("connection reset: {e}"))),
                        })
                        .await;
                    return;
                }
            }
        }
    };
    // Each direction ends on its own (half-close); the connection ends when
    // both have. A reset (an error frame, a failed stream) ends both at once.
    let upstream = tokio::spawn(upstream);
    let reset = loop {
        match inbound.message().await {
            Ok(Some(Frame {
                kind: Some(frame::Kind::Data(d)),
            })) => {
                if wr.write_all(&d).await.is_err() {
                    break true;
                }
            }
            Ok(Some(Frame {
                kind: Some(frame::Kind::HalfClose(_)),
            }))
            | Ok(None) => {
                let _ = wr.shutdown().await;
                break false;
            }
            Ok(Some(Frame {
                kind: Some(frame::Kind::Error(_)),
            }))
            | Err(_) => break true,
            Ok(Some(_)) => {}
        }
    };
    if reset {
        upstream.abort();
    } else {
        let _ = upstream.await;
    }
}
