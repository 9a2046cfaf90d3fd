//! One WebSocket, as frames in and frames out.
//!
//! The read half runs in its own task ([`Reader::spawn`]): it reassembles
//! fragmented messages, enforces the size limit (1009) and UTF-8 (1007),
//! decodes each message into typed protocol commands, and hands them to the
//! session as [`Inbound`]. The write half ([`Writer`]) writes what the
//! session has buffered as text frames of bounded size, always cutting
//! between two protocol messages, and gives back memory a large reply took.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Chain};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::protocol::{self, Request};
use crate::MAX_MESSAGE_BYTES;

/// Output is written in frames of at most this size (a single protocol
/// message larger than this still goes in one frame of its own).
pub(crate) const MAX_FRAME_OUT: usize = 64 * 1024;
/// An output buffer that grew beyond this is given back after a write.
const KEEP_OUT_CAPACITY: usize = 16 * 1024;

/// What the reader hands the session.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// The commands of one data message, in order.
    Commands(Vec<(u32, Request)>),
    /// A data message that is not a valid command list.
    Malformed(protocol::DecodeError),
    /// A WebSocket ping to answer.
    Ping(Bytes),
    /// The peer sent a close frame.
    Close,
    /// A protocol violation: close with this code.
    Fail(u16, &'static str),
}

fn owned(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

fn message(bytes: &[u8]) -> Inbound {
    if std::str::from_utf8(bytes).is_err() {
        return Inbound::Fail(1007, "invalid utf-8");
    }
    match protocol::decode_commands(bytes) {
        Ok(cmds) => Inbound::Commands(cmds),
        Err(err) => Inbound::Malformed(err),
    }
}

/// A byte stream that splits into a read half and a write half that share
/// no lock: the reader task and the session each own one.
pub(crate) trait Split: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

/// An upgraded TCP connection: the socket, and what hyper had already read
/// past the upgrade request (a client may send its first frame at once).
pub(crate) struct Upgraded {
    pub(crate) stream: TcpStream,
    pub(crate) read_ahead: Bytes,
}

impl Split for Upgraded {
    type Read = Chain<std::io::Cursor<Bytes>, OwnedReadHalf>;
    type Write = OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        let (read, write) = self.stream.into_split();
        (std::io::Cursor::new(self.read_ahead).chain(read), write)
    }
}

/// The socket's read half, shared so that the session can take it back from
/// the reader and drain it after sending a close frame. Closing a socket with
/// unread input makes the kernel send RST, which can destroy the close frame
/// before the client reads it.
struct SharedRead<R>(Arc<std::sync::Mutex<R>>);

impl<R: AsyncRead + Unpin> AsyncRead for SharedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

/// The read half of a connection, running as its own task.
pub(crate) struct Reader<R> {
    socket: Arc<std::sync::Mutex<R>>,
    task: tokio::task::JoinHandle<()>,
}

/// Splits an upgraded socket into its reader (a task feeding `Inbound`
/// into the returned channel) and its writer.
pub(crate) fn split<S: Split>(
    stream: S,
    write_timeout: Duration,
) -> (Reader<S::Read>, mpsc::Receiver<Inbound>, Writer<S::Write>) {
    let (read, write_half) = stream.split();
    let read = Arc::new(std::sync::Mutex::new(read));
    let (mut rd, wr) = fastwebsockets::after_handshake_split(
        SharedRead(Arc::clone(&read)),
        write_half,
        fastwebsockets::Role::Server,
    );
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    // fastwebsockets refuses frames whose length is >= this limit.
    rd.set_max_message_size(MAX_MESSAGE_BYTES + 1);
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(read_loop(rd, tx));
    (
        Reader { socket: read, task },
        rx,
        Writer {
            wr,
            timeout: write_timeout,
        },
    )
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Stops the reader, then reads what the client still sends (its close
    /// echo) until it closes, at most 2 s and 1 MiB.
    pub(crate) async fn drain(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Ok(read) = Arc::try_unwrap(self.socket) {
            let read = read.into_inner().unwrap_or_else(|e| e.into_inner());
            let mut limited = tokio::io::AsyncReadExt::take(read, 1 << 20);
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::copy(&mut limited, &mut tokio::io::sink()),
            )
            .await;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: WebSocketRead<R>, tx: mpsc::Sender<Inbound>) {
    let mut partial: Option<BytesMut> = None;
    loop {
        let frame = rd
            .read_frame::<_, std::io::Error>(&mut |_| async { Ok(()) })
            .await;
        let event = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        Some(Inbound::Fail(1002, "expected continuation"))
                    } else if frame.fin {
                        Some(message(&frame.payload))
                    } else {
                        partial = Some(BytesMut::from(&frame.payload[..]));
                        None
                    }
                }
                OpCode::Continuation => match partial.as_mut() {
                    None => Some(Inbound::Fail(1002, "unexpected continuation")),
                    Some(buf) if buf.len() + frame.payload.len() > MAX_MESSAGE_BYTES => {
                        Some(Inbound::Fail(1009, "message too big"))
                    }
                    Some(buf) => {
                        buf.extend_from_slice(&frame.payload);
                        if frame.fin {
                            let whole = partial.take().unwrap_or_default();
                            Some(message(&whole))
                        } else {
                            None
                        }
                    }
                },
                OpCode::Close => Some(Inbound::Close),
                OpCode::Ping => Some(Inbound::Ping(owned(frame.payload))),
                OpCode::Pong => None,
            },
            Err(WebSocketError::FrameTooLarge) => Some(Inbound::Fail(1009, "message too big")),
            Err(WebSocketError::InvalidUTF8) => Some(Inbound::Fail(1007, "invalid utf-8")),
            Err(
                WebSocketError::UnexpectedEOF
                | WebSocketError::IoError(_)
                | WebSocketError::ConnectionClosed,
            ) => return,
            Err(_) => Some(Inbound::Fail(1002, "protocol error")),
        };
        if let Some(event) = event {
            let stop = matches!(event, Inbound::Close | Inbound::Fail(..));
            if tx.send(event).await.is_err() || stop {
                return;
            }
        }
    }
}

/// The write half of a connection.
pub(crate) struct Writer<W> {
    wr: WebSocketWrite<W>,
    timeout: Duration,
}

/// The socket failed or stalled: the connection is over.
#[derive(Debug)]
pub(crate) struct WriteFailed;

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn frame(&mut self, frame: Frame<'_>) -> Result<(), WriteFailed> {
        match tokio::time::timeout(self.timeout, self.wr.write_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    /// Writes `out` (protocol messages separated by `\n`) as text frames of
    /// at most [`MAX_FRAME_OUT`] bytes, then empties it, giving back memory a
    /// large reply took.
    pub(crate) async fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), WriteFailed> {
        if out.is_empty() {
            return Ok(());
        }
        let result = async {
            let mut rest: &[u8] = out;
            while !rest.is_empty() {
                let cut = frame_end(rest, MAX_FRAME_OUT);
                let (head, tail) = rest.split_at(cut);
                self.frame(Frame::text(Payload::Borrowed(head))).await?;
                rest = tail.strip_prefix(b"\n").unwrap_or(tail);
            }
            Ok(())
        }
        .await;
        out.clear();
        if out.capacity() > KEEP_OUT_CAPACITY {
            *out = Vec::with_capacity(KEEP_OUT_CAPACITY / 4);
        }
        result
    }

    pub(crate) async fn pong(&mut self, payload: Bytes) -> Result<(), WriteFailed> {
        self.frame(Frame::pong(Payload::Owned(payload.to_vec())))
            .await
    }

    /// Sends a close frame and flushes it (bounded: the peer may not read).
    pub(crate) async fn close(&mut self, code: u16, reason: &str, within: Duration) {
        let send = async {
            let _ = self
                .wr
                .write_frame(Frame::close(code, reason.as_bytes()))
                .await;
            let _ = self.wr.flush().await;
        };
        let _ = tokio::time::timeout(within, send).await;
    }
}

/// Where the first frame of `buf` ends: the last message boundary (`\n`)
/// within `max` bytes, or the end of the first message if it alone is
/// larger.
fn frame_end(buf: &[u8], max: usize) -> usize {
    if buf.len() <= max {
        return buf.len();
    }
    match buf[..=max].iter().rposition(|&b| b == b'\n') {
        Some(0) | None => buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len()),
        Some(i) => i,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_between_messages() {
        assert_eq!(frame_end(b"abc", 10), 3);
        assert_eq!(frame_end(b"aaaa\nbbbb\ncccc", 10), 9);
        assert_eq!(frame_end(b"aaaa\nbbbb\ncccc", 9), 9);
        assert_eq!(frame_end(b"aaaa\nbbbb\ncccc", 8), 4);
        // A message larger than the bound goes alone, whole.
        assert_eq!(frame_end(b"aaaaaaaaaaaa\nb", 4), 12);
        assert_eq!(frame_end(b"aaaaaaaaaaaa", 4), 12);
    }

    #[test]
    fn messages_become_commands() {
        match message(br#"{"id":1,"ping":{}}"#) {
            Inbound::Commands(c) => assert_eq!(c.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(message(b"{nope"), Inbound::Malformed(_)));
        assert!(matches!(message(b"\xff"), Inbound::Fail(1007, _)));
    }
}
