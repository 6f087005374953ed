//! The fan-out bench's dashboards: plain sockets read by one epoll loop per thread, server frames
//! parsed by hand, so the load generator spends its CPU on the kernel's share of each message
//! rather than on a WebSocket library, timers and task wake-ups (it shares the two cores with the
//! server it measures).
//!
//! Only what a stream subscriber needs: the upgrade handshake, unmasked server frames (text,
//! ping, close), and masked pongs back. Level-triggered epoll with one `read` per readiness, so a
//! message costs one `epoll_wait` share and one `read`, not a second `read` that finds nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Bytes read at a time; a buffer grows when one frame is bigger.
const READ_CHUNK: usize = 16 * 1024;
/// A subscriber that hears nothing for this long is given up on.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// One connected dashboard.
pub struct Subscriber {
    stream: TcpStream,
    /// Bytes read and not yet parsed into frames.
    pending: Inbox,
    /// Events (frames carrying a send time) received so far.
    received: u64,
    /// Closed by the server (too slow, or shutting down) or broken.
    closed: bool,
}

/// What one reading thread saw.
#[derive(Default)]
pub struct Received {
    /// Events each subscriber received, in the thread's order.
    pub per_subscriber: Vec<u64>,
    /// Publish→receive latency of every event, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When the last event arrived.
    pub last: Option<Instant>,
    /// For each event (by its send time), the latency of its first and of its last arrival at
    /// this thread's subscribers, in microseconds.
    pub per_event: std::collections::HashMap<u64, (u32, u32)>,
}

/// Widens the first and last arrival of the event sent at `sent` (in [`Received::per_event`])
/// to take in `(first, last)`.
pub fn widen(per_event: &mut std::collections::HashMap<u64, (u32, u32)>, sent: u64, (first, last): (u32, u32)) {
    let both = per_event.entry(sent).or_insert((first, last));
    *both = (both.0.min(first), both.1.max(last));
}

/// A WebSocket frame from the server.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close,
    /// Binary, pong or continuation frames: not part of a stream, skipped.
    Other,
}

impl Subscriber {
    /// A subscriber on a socket that is already a WebSocket (the floor bench's).
    pub fn from_stream(stream: TcpStream) -> Result<Subscriber, String> {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Subscriber { stream, pending: Inbox::default(), received: 0, closed: false })
    }

    /// Connects and upgrades (with a bearer token when given). With a token (dagstream), it
    /// reads the first frame, the snapshot; a server of the seed's design sends none.
    pub fn connect(addr: &str, path: &str, token: Option<&str>) -> Result<Subscriber, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: ZGFnc3RyZWFtLWJlbmNoIQ==\r\nSec-WebSocket-Version: 13\r\n\
             {authorization}\r\n"
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut pending = Inbox::default();
        let head_end = loop {
            if let Some(end) = pending.data().windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if pending.read_from(&mut stream).map_err(|e| e.to_string())? == 0 {
                return Err("the server closed the connection during the upgrade".to_owned());
            }
        };
        if !pending.data().starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&pending.data()[..head_end]).into_owned();
            return Err(format!("the upgrade was refused: {head}"));
        }
        pending.consume(head_end);
        let mut subscriber = Subscriber { stream, pending, received: 0, closed: false };
        while token.is_some() {
            match parse(subscriber.pending.data())? {
                Some((_snapshot, used)) => {
                    subscriber.pending.consume(used);
                    break;
                }
                None => {
                    if subscriber.pending.read_from(&mut subscriber.stream).map_err(|e| e.to_string())? == 0 {
                        return Err("the server closed the connection before the snapshot".to_owned());
                    }
                }
            }
        }
        subscriber.stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(subscriber)
    }

    /// Reads once and handles every complete frame; the event times go to `received`.
    fn on_readable(&mut self, received: &mut Received) {
        match self.pending.read_from(&mut self.stream) {
            Ok(0) => self.closed = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => self.closed = true,
        }
        let arrived = super::fanout::now_ns();
        let mut consumed = 0;
        while !self.closed {
            let (frame, used) = match parse(&self.pending.data()[consumed..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            };
            match frame {
                Frame::Text(text) => {
                    if let Some(sent) = std::str::from_utf8(text).ok().and_then(super::fanout::sent_ns) {
                        self.received += 1;
                        let micros = (arrived.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32;
                        received.latencies_us.push(micros);
                        widen(&mut received.per_event, sent, (micros, micros));
                        received.last = Some(Instant::now());
                    }
                }
                Frame::Ping(payload) => {
                    let pong = masked_frame(0xA, payload);
                    // Small enough to go out whole; a failure shows up as a close later.
                    let _ = self.stream.write_all(&pong);
                }
                Frame::Close => self.closed = true,
                Frame::Other => {}
            }
            consumed += used;
        }
        self.pending.consume(consumed);
    }
}

/// Bytes read from a socket and not yet parsed. The buffer only grows, and is zeroed only when
/// it does: zeroing a fresh chunk before every read was a memset per message per subscriber.
#[derive(Default)]
struct Inbox {
    buffer: Vec<u8>,
    /// How much of `buffer` holds read bytes.
    filled: usize,
}

impl Inbox {
    fn data(&self) -> &[u8] {
        &self.buffer[..self.filled]
    }

    /// Reads what is there, once, with room for at least [`READ_CHUNK`] bytes.
    fn read_from(&mut self, stream: &mut TcpStream) -> std::io::Result<usize> {
        if self.buffer.len() - self.filled < READ_CHUNK {
            self.buffer.resize(self.filled + READ_CHUNK, 0);
        }
        let read = stream.read(&mut self.buffer[self.filled..])?;
        self.filled += read;
        Ok(read)
    }

    /// Drops the first `used` bytes (parsed frames).
    fn consume(&mut self, used: usize) {
        self.buffer.copy_within(used..self.filled, 0);
        self.filled -= used;
    }
}

/// The first complete frame in `bytes` and the bytes it takes; `None` if it is not all there.
fn parse(bytes: &[u8]) -> Result<Option<(Frame<'_>, usize)>, String> {
    let [first, second, rest @ ..] = bytes else { return Ok(None) };
    if second & 0x80 != 0 {
        return Err("a server frame was masked".to_owned());
    }
    let (length, header) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(eight) => (u64::from_be_bytes(eight.try_into().map_err(|_| "frame length".to_owned())?), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let Ok(length) = usize::try_from(length) else { return Err("a frame longer than memory".to_owned()) };
    let Some(payload) = bytes.get(header..header + length) else { return Ok(None) };
    let fin = first & 0x80 != 0;
    let frame = match first & 0x0F {
        0x1 if fin => Frame::Text(payload),
        0x1 => return Err("a fragmented text frame (the server sends whole messages)".to_owned()),
        0x8 => Frame::Close,
        0x9 => Frame::Ping(payload),
        _ => Frame::Other,
    };
    Ok(Some((frame, header + length)))
}

/// A text frame as a server sends it (unmasked, whole).
pub fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match text.len() {
        short @ 0..=125 => frame.push(short as u8),
        medium @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            frame.push(127);
            frame.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// A client frame (`opcode`, short payload) masked with a zero key, as the protocol requires.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let length = payload.len().min(125);
    let mut frame = vec![0x80 | opcode, 0x80 | length as u8, 0, 0, 0, 0];
    frame.extend_from_slice(&payload[..length]);
    frame
}

/// Reads until every subscriber has `events` events, is closed, or heard nothing for
/// [`SILENCE_LIMIT`].
pub fn receive(mut subscribers: Vec<Subscriber>, events: u64) -> Result<Received, String> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| e.to_string())?;
    for (index, subscriber) in subscribers.iter().enumerate() {
        epoll
            .add(subscriber.stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, index as u64))
            .map_err(|e| format!("epoll: {e}"))?;
    }
    let mut received =
        Received { latencies_us: Vec::with_capacity(subscribers.len() * events as usize), ..Received::default() };
    let mut open = subscribers.len();
    let mut ready = vec![EpollEvent::empty(); 256];
    let mut last_heard = Instant::now();
    while open > 0 && last_heard.elapsed() < SILENCE_LIMIT {
        let count = match epoll.wait(&mut ready, EpollTimeout::from(100u16)) {
            Ok(count) => count,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("epoll: {e}")),
        };
        if count > 0 {
            last_heard = Instant::now();
        }
        for event in &ready[..count] {
            let Some(subscriber) = subscribers.get_mut(event.data() as usize) else { continue };
            subscriber.on_readable(&mut received);
            if subscriber.closed || subscriber.received >= events {
                let _ = epoll.delete(subscriber.stream.as_fd());
                open -= 1;
            }
        }
    }
    received.per_subscriber = subscribers.iter().map(|s| s.received).collect();
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::{Frame, masked_frame, parse};

    #[test]
    fn frames_are_parsed_only_when_complete() {
        let text = [&[0x81, 5][..], b"hello"].concat();
        assert_eq!(parse(&text).unwrap(), Some((Frame::Text(b"hello"), 7)));
        assert_eq!(parse(&text[..6]).unwrap(), None, "a frame missing a byte waits for it");
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse(&long).unwrap().map(|(_, used)| used), Some(260));
        assert_eq!(parse(&[0x89, 0]).unwrap(), Some((Frame::Ping(b""), 2)));
        assert_eq!(parse(&[0x88, 0]).unwrap(), Some((Frame::Close, 2)));
        assert!(parse(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "server frames are never masked");
        assert!(parse(&[0x01, 0]).is_err(), "fragments are refused");
        let built = super::text_frame(&"y".repeat(300));
        assert_eq!(parse(&built).unwrap().map(|(_, used)| used), Some(304), "what text_frame builds parses back");
    }

    #[test]
    fn a_pong_is_masked_and_carries_the_ping_payload() {
        assert_eq!(masked_frame(0xA, b"ab"), vec![0x8A, 0x82, 0, 0, 0, 0, b'a', b'b']);
    }
}
