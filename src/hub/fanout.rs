//! The live fan-out of a room to its dashboard sockets: a few tasks write each committed frame
//! straight to every socket, rather than one task per socket being woken for it.
//!
//! Waking a task per socket for every event cost about a fifth of the server's CPU at 1 000
//! dashboards, on top of the kernel's TCP send, which no server avoids (`make bench`). Instead a
//! room's sockets are shared out to its *shards* (one task each, one more per core once a shard
//! has [`SHARD_MIN`] sockets). A shard follows the room's broadcast, takes every frame already
//! there (a burst goes out in one write), frames them as WebSocket messages once, and writes
//! them to each of its sockets without waiting: a socket that takes them whole costs one
//! `write`. A shard runs outside tokio's cooperative budget and yields by itself after a batch
//! when more frames wait: the budget would fail every write past the 128th of one poll as if
//! the socket were full, and hand those sockets to their connections' tasks. A shard done with
//! its own sockets writes the same frames to the other shards' sockets, from the end of their
//! lists, until it meets one that has them ([`help`]): a shard whose worker thread is held up
//! (the kernel may run the worker it just woke on the same CPU for a whole time slice) does not
//! hold up its sockets.
//!
//! What a socket cannot take now stays in its [`Outbox`] as pending chunks, shared with
//! every other socket that waits for the same frames (a chunk is a slice of the shard's buffer,
//! not a copy), which the connection's own task writes as the socket drains ([`Outbox::follow`]);
//! later frames queue behind them, and a socket with more bytes waiting than the room's
//! `socket_backlog` is dropped as too slow (4008), so a slow reader never slows the others;
//! what waits is bounded by that many bytes of frames per shard, plus a chunk handle per socket
//! and batch.
//!
//! The connection's own messages (its backlog, replies, pings, the close) go through the same
//! outbox ([`OutboxIo`] is the socket its WebSocket reads and writes), behind any pending bytes,
//! so a message is never cut by another. A write that has to wait for the socket registers the
//! outbox's own waker, which wakes every task waiting on the outbox: the socket's single
//! write-readiness slot is never taken by one task from another.
//!
//! A shard sends a socket exactly the frames after its position: frames it has had are skipped,
//! and a socket that missed some (it was attached after the shard passed them, or the shard
//! lagged) is caught up from the room's log window first, or dropped as too slow when the window
//! no longer holds them. A jump in the broadcast itself that the window cannot fill is passed on
//! as it is, as the room broadcast it: the client sees the gap and resyncs.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::{Frame, Room};
use crate::protocol::Seq;

/// A connected socket, as a WebSocket runs over it.
pub trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for T {}

/// Sockets a shard takes before the room starts another one (up to one per core).
const SHARD_MIN: usize = 64;
/// Frames a shard takes from the broadcast at once when several are there, written together: a
/// burst costs a socket one `write` per this many frames, so the shard keeps up with the ring
/// (the writer commits up to 1 024 events at once).
const FRAMES_PER_WRITE: usize = 1024;
/// Pending bytes above which the connection's own writes wait for the socket to drain.
const HIGH_WATER: usize = 64 * 1024;
/// Pending chunks written with one call when several wait.
const CHUNKS_PER_WRITE: usize = 64;

/// Where a socket's live stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Not attached yet: the connection writes its backlog.
    Starting,
    /// A shard writes the room's frames to it.
    Following,
    /// Dropped: more bytes waited for the socket than the room's socket backlog allows.
    TooSlow,
    /// The room is gone (its run was removed or the server stops).
    RoomGone,
    /// Writing to the socket failed: the client went away.
    Broken,
    /// The connection ended ([`Outbox::close`]).
    Closed,
}

/// Everything written to one dashboard socket, by its room's shard and by its own connection.
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    /// Tasks waiting for the socket to drain or for the live stream to end.
    waiting: Arc<Waiting>,
    /// Wakes `waiting`: every write that may have to wait registers this with the socket.
    waker: Waker,
}

struct OutboxInner {
    /// `None` once the connection ended: the socket closes then, not when the shard lets go.
    socket: Option<Box<dyn Socket>>,
    /// Bytes accepted and not written yet, in order, with the live frames each chunk holds;
    /// they go out before anything else.
    pending: VecDeque<(Bytes, usize)>,
    /// Bytes in `pending`.
    pending_bytes: usize,
    /// Live frames in `pending` (a frame counts until its chunk is written out).
    waiting_frames: usize,
    /// Bytes of live frames that may wait before the socket is dropped as too slow (set on
    /// attach).
    limit: usize,
    /// `seq` of the last frame queued: where the client is once it has read everything.
    position: Seq,
    live: Live,
}

/// What a shard's delivery did.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Queued (or there was nothing new); this many frames wait for the socket.
    Taken { waiting: usize },
    /// The socket lacks frames before these: catch it up first.
    Gap,
    /// The socket takes no more; the shard lets it go.
    Ended,
}

impl Outbox {
    pub fn new(socket: impl Socket) -> Arc<Outbox> {
        let waiting = Arc::new(Waiting::default());
        Arc::new(Outbox {
            inner: Mutex::new(OutboxInner {
                socket: Some(Box::new(socket)),
                pending: VecDeque::new(),
                pending_bytes: 0,
                waiting_frames: 0,
                limit: usize::MAX,
                position: 0,
                live: Live::Starting,
            }),
            waker: Waker::from(Arc::clone(&waiting)),
            waiting,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        // Every change under this lock leaves the buffer whole; a panic elsewhere cannot tear it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `seq` of the last frame queued to the socket.
    pub fn position(&self) -> Seq {
        self.lock().position
    }

    /// Where the live stream stands.
    pub fn live(&self) -> Live {
        self.lock().live
    }

    /// Waits until the live stream ends and says why, meanwhile writing pending bytes as the
    /// socket drains. The connection's task keeps this running while it is attached.
    pub async fn follow(&self) -> Live {
        std::future::poll_fn(|cx| self.poll_follow(cx)).await
    }

    fn poll_follow(&self, cx: &mut Context<'_>) -> Poll<Live> {
        // Registered before looking, so a change made right after is not missed.
        self.waiting.register(cx.waker());
        let mut inner = self.lock();
        if self.drain(&mut inner).is_err() {
            self.end(&mut inner, Live::Broken);
        }
        match inner.live {
            Live::Starting | Live::Following => Poll::Pending,
            ended @ (Live::TooSlow | Live::RoomGone | Live::Broken | Live::Closed) => Poll::Ready(ended),
        }
    }

    /// Ends the connection: the socket is closed now (the shard lets the outbox go at its next
    /// frame).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.socket = None;
        inner.pending = VecDeque::new();
        inner.pending_bytes = 0;
        inner.waiting_frames = 0;
        self.end(&mut inner, Live::Closed);
    }

    /// [`Outbox::end`] for a caller that does not hold the lock.
    fn finish(&self, why: Live) {
        let mut inner = self.lock();
        self.end(&mut inner, why);
    }

    /// Ends the live stream (unless it ended already) and tells whoever waits.
    fn end(&self, inner: &mut OutboxInner, why: Live) {
        if matches!(inner.live, Live::Starting | Live::Following) {
            inner.live = why;
        }
        self.waiting.wake_all();
    }

    /// Writes pending chunks until they are out or the socket is full (then the outbox's waker
    /// is registered with it).
    fn drain(&self, inner: &mut OutboxInner) -> io::Result<()> {
        let OutboxInner { socket, pending, pending_bytes, waiting_frames, .. } = inner;
        if pending.is_empty() {
            return Ok(());
        }
        let Some(socket) = socket.as_mut() else { return Err(io::ErrorKind::NotConnected.into()) };
        let mut cx = Context::from_waker(&self.waker);
        while !pending.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                pending.iter().take(CHUNKS_PER_WRITE).map(|(chunk, _)| IoSlice::new(chunk)).collect();
            let mut written = match Pin::new(&mut **socket).poll_write_vectored(&mut cx, &slices) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(()),
            };
            *pending_bytes -= written;
            while written > 0 {
                let Some((chunk, frames)) = pending.front_mut() else { break };
                if written < chunk.len() {
                    *chunk = chunk.slice(written..);
                    break;
                }
                written -= chunk.len();
                *waiting_frames -= *frames;
                pending.pop_front();
            }
        }
        if pending.capacity() > CHUNKS_PER_WRITE {
            *pending = VecDeque::new();
        }
        Ok(())
    }

    /// Writes `chunk` (holding `frames` live frames) behind whatever is pending, without
    /// waiting: what the socket does not take now is kept, and whoever follows the outbox
    /// writes it as the socket drains.
    fn push(&self, inner: &mut OutboxInner, chunk: Bytes, frames: usize) -> io::Result<()> {
        let kept = if inner.pending.is_empty() {
            let Some(socket) = inner.socket.as_mut() else { return Err(io::ErrorKind::NotConnected.into()) };
            let mut cx = Context::from_waker(&self.waker);
            match Pin::new(&mut **socket).poll_write(&mut cx, &chunk) {
                Poll::Ready(Ok(written)) if written == chunk.len() => return Ok(()),
                Poll::Ready(Ok(written)) => chunk.slice(written..),
                Poll::Pending => chunk,
                Poll::Ready(Err(error)) => return Err(error),
            }
        } else {
            chunk
        };
        inner.pending_bytes += kept.len();
        inner.waiting_frames += frames;
        inner.pending.push_back((kept, frames));
        self.waiting.wake_all();
        Ok(())
    }

    /// Queues a text message written for the socket's position at this moment, behind the frames
    /// up to it: a reply about the client's own message, which must look neither like a gap nor
    /// like a repeat.
    pub fn send_at_position(&self, text: impl FnOnce(Seq) -> String) -> io::Result<()> {
        let mut inner = self.lock();
        let mut message = Vec::new();
        text_message(text(inner.position).as_bytes(), &mut message);
        self.push(&mut inner, Bytes::from(message), 0)
    }

    /// Queues the frames of `batch` after the socket's position; a batch that does not follow
    /// on from it is a [`Delivery::Gap`] unless `across_gap`.
    fn deliver(&self, batch: &Batch, across_gap: bool) -> Delivery {
        let mut inner = self.lock();
        if inner.live != Live::Following {
            return Delivery::Ended;
        }
        let Some(first) = batch.first() else { return Delivery::Gap };
        if first > inner.position + 1 && !across_gap {
            return Delivery::Gap;
        }
        let Some((offset, frames)) = batch.after(inner.position) else {
            return Delivery::Taken { waiting: inner.waiting_frames };
        };
        inner.position = batch.last();
        if self.push(&mut inner, batch.bytes.slice(offset..), frames).is_err() {
            self.end(&mut inner, Live::Broken);
            return Delivery::Ended;
        }
        if inner.pending_bytes > inner.limit {
            self.end(&mut inner, Live::TooSlow);
            return Delivery::Ended;
        }
        Delivery::Taken { waiting: inner.waiting_frames }
    }
}

/// The tasks waiting on an outbox; its waker wakes them all, and each looks again.
#[derive(Default)]
struct Waiting(Mutex<Vec<Waker>>);

impl Waiting {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Wake for Waiting {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// The socket a connection's WebSocket reads and writes: reads go to the socket, writes go
/// behind the outbox's pending bytes and are always taken whole (so a message is never cut by
/// a shard's frames), waiting only while more than [`HIGH_WATER`] bytes are pending.
pub struct OutboxIo(pub Arc<Outbox>);

impl AsyncRead for OutboxIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.0.lock();
        match inner.socket.as_mut() {
            Some(socket) => Pin::new(&mut **socket).poll_read(cx, buf),
            // Closed: the end of the stream.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for OutboxIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let outbox = &self.0;
        outbox.waiting.register(cx.waker());
        let mut inner = outbox.lock();
        if inner.pending_bytes >= HIGH_WATER {
            outbox.drain(&mut inner)?;
            if inner.pending_bytes >= HIGH_WATER {
                return Poll::Pending;
            }
        }
        outbox.push(&mut inner, Bytes::copy_from_slice(bytes), 0)?;
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outbox = &self.0;
        outbox.waiting.register(cx.waker());
        let mut inner = outbox.lock();
        outbox.drain(&mut inner)?;
        if !inner.pending.is_empty() {
            return Poll::Pending;
        }
        match inner.socket.as_mut() {
            Some(socket) => Pin::new(&mut **socket).poll_flush(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        let mut inner = self.0.lock();
        match inner.socket.as_mut() {
            Some(socket) => Pin::new(&mut **socket).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Consecutive frames, framed as WebSocket text messages once for all of a shard's sockets and
/// laid back to back in one shared buffer.
#[derive(Default)]
struct Batch {
    bytes: Bytes,
    /// Each frame's `seq` and where it starts in `bytes`.
    starts: Vec<(Seq, usize)>,
}

impl Batch {
    fn of<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Batch {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for frame in frames {
            starts.push((frame.seq, bytes.len()));
            text_message(frame.text.as_bytes(), &mut bytes);
        }
        Batch { bytes: Bytes::from(bytes), starts }
    }

    fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn first(&self) -> Option<Seq> {
        self.starts.first().map(|(seq, _)| *seq)
    }

    fn last(&self) -> Seq {
        self.starts.last().map_or(0, |(seq, _)| *seq)
    }

    /// Where the frames after `position` start in `bytes`, and how many there are; `None` when
    /// there are none.
    fn after(&self, position: Seq) -> Option<(usize, usize)> {
        let skipped = self.starts.partition_point(|(seq, _)| *seq <= position);
        self.starts.get(skipped).map(|(_, offset)| (*offset, self.starts.len() - skipped))
    }
}

/// Appends `payload` to `out` as one WebSocket text message from a server (unmasked).
fn text_message(payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    // Writing to a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// A room's shards.
#[derive(Default)]
pub(super) struct Shards {
    shards: Mutex<Vec<Shard>>,
    /// Told whenever a shard has written a round, for publishers waiting in [`Shards::ready`].
    progress: Arc<tokio::sync::Notify>,
}

/// The handle of one shard task.
struct Shard {
    /// Where sockets are handed to it.
    attach: mpsc::UnboundedSender<Arc<Outbox>>,
    /// Its sockets, and the most frames one of them has waiting, for metrics and placement.
    load: Arc<Load>,
}

#[derive(Default)]
struct Load {
    sockets: AtomicUsize,
    deepest: AtomicUsize,
    /// `seq` of the last frame the shard has written out (or found nothing new after).
    seq: AtomicU64,
    /// The shard's sockets as of its last change, for the room's other shards to help with
    /// ([`help`]).
    listed: Mutex<Arc<[Arc<Outbox>]>>,
}

impl Shards {
    fn lock(&self) -> MutexGuard<'_, Vec<Shard>> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while a shard is more than `slack` events behind `published()`. Publishers wait
    /// here, so a burst cannot outrun the fan-out and overflow the broadcast ring (which would
    /// drop every socket of the shard): the run goes at the pace the server can fan it out, never
    /// at a reader's, since shards wait for no socket.
    pub(super) async fn ready(&self, published: impl Fn() -> Seq, slack: u64) {
        loop {
            let progress = self.progress.notified();
            let slowest = self
                .lock()
                .iter()
                .filter(|shard| !shard.attach.is_closed())
                .map(|shard| shard.load.seq.load(Ordering::Acquire))
                .min();
            match slowest {
                Some(seq) if published().saturating_sub(seq) > slack => progress.await,
                Some(_) | None => return,
            }
        }
    }

    /// Sockets attached, the most frames one of them has waiting, and how many shards there are.
    pub(super) fn load(&self) -> (usize, usize, usize) {
        let shards = self.lock();
        let sockets = shards.iter().map(|shard| shard.load.sockets.load(Ordering::Relaxed)).sum();
        let deepest = shards.iter().map(|shard| shard.load.deepest.load(Ordering::Relaxed)).max().unwrap_or(0);
        (sockets, deepest, shards.len())
    }
}

impl Room {
    /// Starts the live stream of a socket whose backlog, up to `position`, is written: from now
    /// on one of the room's shards writes it every frame after that.
    pub fn attach(&self, outbox: &Arc<Outbox>, position: Seq) {
        {
            let mut inner = outbox.lock();
            inner.position = position;
            inner.limit = self.socket_backlog;
            if inner.live != Live::Starting {
                return;
            }
            inner.live = Live::Following;
        }
        let mut shards = self.shards.lock();
        shards.retain(|shard| !shard.attach.is_closed());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let least = |shards: &[Shard]| {
            shards
                .iter()
                .enumerate()
                .min_by_key(|(_, shard)| shard.load.sockets.load(Ordering::Relaxed))
                .map(|(i, _)| i)
        };
        let busy = least(&shards).is_none_or(|i| shards[i].load.sockets.load(Ordering::Relaxed) >= SHARD_MIN);
        if busy && shards.len() < cores {
            let (attach, attached) = mpsc::unbounded_channel();
            let load = Arc::new(Load::default());
            let live = self.live.subscribe();
            // Everything committed so far is the log window's, not this shard's, to send.
            load.seq.store(self.seq(), Ordering::Release);
            let progress = Arc::clone(&self.shards.progress);
            // Outside tokio's budget: see the module's doc.
            let shard = run_shard(self.me.clone(), live, attached, Arc::clone(&load), progress);
            tokio::spawn(tokio::task::coop::unconstrained(shard));
            shards.push(Shard { attach, load });
        }
        let Some(shard) = least(&shards).map(|i| &shards[i]) else { return };
        shard.load.sockets.fetch_add(1, Ordering::Relaxed);
        if let Err(unsent) = shard.attach.send(Arc::clone(outbox)) {
            // The shard ended with the room's broadcast: the room is going away.
            unsent.0.finish(Live::RoomGone);
        }
    }
}

/// One shard: writes the room's frames to its sockets until the room is gone.
async fn run_shard(
    room: Weak<Room>,
    mut live: broadcast::Receiver<Frame>,
    mut attached: mpsc::UnboundedReceiver<Arc<Outbox>>,
    load: Arc<Load>,
    progress: Arc<tokio::sync::Notify>,
) {
    let mut outboxes: Vec<Arc<Outbox>> = Vec::new();
    let mut frames = Vec::with_capacity(FRAMES_PER_WRITE);
    // Sockets were added since the list the other shards help with was last published: it is
    // published once per batch, not once per socket attached.
    let mut unlisted = false;
    loop {
        tokio::select! {
            biased;
            Some(outbox) = attached.recv() => {
                if let Delivery::Taken { .. } = catch_up_or_drop(&room, &outbox) {
                    outboxes.push(outbox);
                    unlisted = true;
                }
            }
            received = live.recv() => {
                frames.clear();
                match received {
                    Ok(frame) => {
                        frames.push(frame);
                        while frames.len() < FRAMES_PER_WRITE {
                            let Ok(frame) = live.try_recv() else { break };
                            frames.push(frame);
                        }
                    }
                    // Missed frames: every socket catches up from the room's log window (the
                    // empty batch is a gap for each).
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
                let batch = Batch::of(&frames);
                let mut deepest = 0;
                let before = outboxes.len();
                outboxes.retain(|outbox| {
                    let delivery = match outbox.deliver(&batch, false) {
                        Delivery::Gap if batch.is_empty() => catch_up_or_drop(&room, outbox),
                        // The socket missed frames before these: from the log window if it still
                        // holds them; if not, the frames go out as the room broadcast them, and
                        // the client sees the gap and resyncs.
                        Delivery::Gap => match catch_up(&room, outbox) {
                            Delivery::Taken { .. } | Delivery::Gap => outbox.deliver(&batch, true),
                            Delivery::Ended => Delivery::Ended,
                        },
                        delivered @ (Delivery::Taken { .. } | Delivery::Ended) => delivered,
                    };
                    match delivery {
                        Delivery::Taken { waiting } => {
                            deepest = deepest.max(waiting);
                            true
                        }
                        Delivery::Gap | Delivery::Ended => false,
                    }
                });
                if unlisted || outboxes.len() != before {
                    load.list(&outboxes);
                    unlisted = false;
                }
                help(&room, &load, &batch);
                load.deepest.store(deepest, Ordering::Relaxed);
                if let Some(last) = frames.last() {
                    load.seq.fetch_max(last.seq, Ordering::AcqRel);
                } else if let Some(room) = room.upgrade() {
                    // Lagged: every socket was caught up to the room's newest.
                    load.seq.fetch_max(room.seq(), Ordering::AcqRel);
                }
                progress.notify_waiters();
                // The shard runs out of tokio's budget: it lets the worker's other tasks run
                // between two batches of a burst. Only then: a yield also wakes an idle worker to
                // take the shard, which after a live event finds nothing, and may be run by the
                // kernel on a CPU where another shard is still writing.
                if !live.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
        }
        load.sockets.store(outboxes.len(), Ordering::Relaxed);
    }
    for outbox in outboxes {
        outbox.finish(Live::RoomGone);
    }
}

impl Load {
    fn list(&self, outboxes: &[Arc<Outbox>]) {
        *self.listed.lock().unwrap_or_else(PoisonError::into_inner) = outboxes.into();
    }
}

/// After writing its own sockets, a shard writes `batch` to the other shards' sockets, from the
/// end of each list, until it meets one that has it (its shard got there) or lacks the frames
/// before it (its shard is behind, and catches it up). A shard whose worker thread is held up
/// (the kernel may run the worker it woke on its own CPU, for a whole time slice) thus does not
/// hold up its sockets: whoever runs writes them. Each outbox takes frames in order, once, under
/// its lock, so two shards never send a frame twice; what a socket's own shard decides
/// (catching up, dropping it) stays its own.
fn help(room: &Weak<Room>, own: &Arc<Load>, batch: &Batch) {
    if batch.is_empty() {
        return;
    }
    let Some(room) = room.upgrade() else { return };
    let others: Vec<Arc<[Arc<Outbox>]>> = room
        .shards
        .lock()
        .iter()
        .filter(|shard| !Arc::ptr_eq(&shard.load, own))
        .map(|shard| Arc::clone(&shard.load.listed.lock().unwrap_or_else(PoisonError::into_inner)))
        .collect();
    drop(room);
    for outboxes in &others {
        help_with(outboxes, batch);
    }
}

/// [`help`] with one other shard's sockets.
fn help_with(outboxes: &[Arc<Outbox>], batch: &Batch) {
    for outbox in outboxes.iter().rev() {
        if outbox.position() >= batch.last() || outbox.deliver(batch, false) == Delivery::Gap {
            break;
        }
    }
}

/// Sends a socket the frames after its position that the room's log window holds: a
/// [`Delivery::Gap`] when the window no longer reaches back that far.
fn catch_up(room: &Weak<Room>, outbox: &Outbox) -> Delivery {
    let Some(room) = room.upgrade() else {
        outbox.finish(Live::RoomGone);
        return Delivery::Ended;
    };
    let missed = room.recent_events(outbox.position());
    if missed.is_empty() {
        return if outbox.live() == Live::Following { Delivery::Taken { waiting: 0 } } else { Delivery::Ended };
    }
    outbox.deliver(&Batch::of(&missed), false)
}

/// [`catch_up`] for a socket just attached, or after the shard lagged: one the window no longer
/// reaches back for is dropped as too slow (it reconnects with `since`).
fn catch_up_or_drop(room: &Weak<Room>, outbox: &Outbox) -> Delivery {
    match catch_up(room, outbox) {
        taken @ Delivery::Taken { .. } => taken,
        Delivery::Gap => {
            outbox.finish(Live::TooSlow);
            Delivery::Ended
        }
        Delivery::Ended => Delivery::Ended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outbox attached at `position`, dropped past `limit` bytes waiting.
    fn following(socket: impl Socket, position: Seq, limit: usize) -> Arc<Outbox> {
        let outbox = Outbox::new(socket);
        let mut inner = outbox.lock();
        inner.live = Live::Following;
        inner.position = position;
        inner.limit = limit;
        drop(inner);
        outbox
    }

    fn frame(seq: Seq) -> Frame {
        Frame { seq, text: format!(r#"{{"seq":{seq}}}"#).into() }
    }

    /// A batch finds the frames after any position, framed back to back.
    #[test]
    fn a_batch_finds_the_frames_after_a_position() {
        let batch = Batch::of(&[frame(5), frame(6), frame(7)]);
        // {"seq":5} is 9 bytes: a 2-byte header and the payload.
        let cases = [
            ("before the batch", 4, Some((0, 3))),
            ("at its first frame", 5, Some((11, 2))),
            ("at its last frame", 7, None),
            ("after it", 9, None),
        ];
        for (case, position, expected) in cases {
            assert_eq!(batch.after(position), expected, "{case}");
        }
        assert_eq!(&batch.bytes[..2], &[0x81, 9], "a final text frame, unmasked, 9 bytes");
        assert_eq!(&batch.bytes[2..11], br#"{"seq":5}"#);
        assert_eq!((batch.first(), batch.last()), (Some(5), 7));
    }

    /// A socket that takes everything gets each frame once, in order; a gap is reported, not
    /// papered over; a full socket keeps frames pending and is dropped past its limit.
    #[tokio::test]
    async fn delivery_skips_what_a_socket_has_reports_gaps_and_drops_a_slow_socket() {
        let (server, mut client) = tokio::io::duplex(64);
        let outbox = following(server, 4, 8);
        assert_eq!(outbox.deliver(&Batch::of(&[frame(6)]), false), Delivery::Gap, "5 is missing");
        assert_eq!(outbox.deliver(&Batch::default(), false), Delivery::Gap, "a lagged shard's empty batch");
        assert_eq!(outbox.deliver(&Batch::of(&[frame(4), frame(5)]), false), Delivery::Taken { waiting: 0 });
        assert_eq!(outbox.position(), 5);
        let mut read = vec![0; 11];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut read).await.expect("read");
        assert_eq!(&read[2..], br#"{"seq":5}"#, "4 was skipped, 5 written");

        // The duplex holds 64 bytes of these 68: the batch's 6 frames count as waiting.
        let frames: Vec<Frame> = (6..=11).map(frame).collect();
        assert_eq!(outbox.deliver(&Batch::of(&frames), false), Delivery::Taken { waiting: 6 });
        let more: Vec<Frame> = (12..=15).map(frame).collect();
        assert_eq!(outbox.deliver(&Batch::of(&more), false), Delivery::Ended, "past 8 bytes waiting");
        assert_eq!(outbox.deliver(&Batch::of(&[frame(16)]), false), Delivery::Ended, "and takes no more");
        assert_eq!(outbox.live(), Live::TooSlow);
        assert_eq!(outbox.follow().await, Live::TooSlow);
    }

    /// Pending bytes go out as the socket drains, before the connection's own writes.
    #[tokio::test]
    async fn pending_frames_go_out_before_the_connections_own_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(16);
        let outbox = following(server, 0, 100);
        let frames: Vec<Frame> = (1..=3).map(frame).collect();
        assert!(matches!(outbox.deliver(&Batch::of(&frames), false), Delivery::Taken { waiting: 3 }));
        let mut io = OutboxIo(Arc::clone(&outbox));
        let following = Arc::clone(&outbox);
        let follow = tokio::spawn(async move { following.follow().await });
        let write = tokio::spawn(async move {
            io.write_all(b"own").await.expect("write");
            io.flush().await.expect("flush");
        });
        let mut read = vec![0; 3 * 11 + 3];
        client.read_exact(&mut read).await.expect("read");
        write.await.expect("writer");
        assert_eq!(&read[2..11], br#"{"seq":1}"#);
        assert_eq!(&read[33..], b"own", "the connection's bytes come after the frames");
        outbox.close();
        assert_eq!(follow.await.expect("follower"), Live::Closed);
    }

    /// Across a gap the frames still go out when asked (the client then resyncs by itself).
    #[tokio::test]
    async fn a_gap_is_crossed_only_when_asked() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = tokio::io::duplex(1024);
        let outbox = following(server, 1, 100);
        let later = Batch::of(&[frame(3)]);
        assert_eq!(outbox.deliver(&later, false), Delivery::Gap);
        assert_eq!(outbox.position(), 1, "nothing changed");
        assert_eq!(outbox.deliver(&later, true), Delivery::Taken { waiting: 0 });
        assert_eq!(outbox.position(), 3);
        let mut read = vec![0; 11];
        client.read_exact(&mut read).await.expect("read");
        assert_eq!(&read[2..], br#"{"seq":3}"#);
    }

    /// A shard writes every one of its sockets itself, however many it has: none is left to
    /// its connection's task (here no task follows the outboxes, so a frame left pending would
    /// never arrive). Tokio's budget once turned every TCP write past the 128th of a poll into
    /// a `Pending`: at 1 000 dashboards, 7 sockets in 8 waited for their own task to be woken.
    #[tokio::test]
    async fn a_shard_writes_every_socket_itself() {
        use tokio::io::AsyncReadExt;
        let room = crate::hub::tests::room(crate::hub::RoomLimits::default());
        // More than tokio's budget of 128 for each shard, one shard per core.
        let sockets = 200 * std::thread::available_parallelism().map_or(1, usize::from);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut clients = Vec::new();
        for _ in 0..sockets {
            let client = tokio::net::TcpStream::connect(address).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            let outbox = Outbox::new(server);
            room.attach(&outbox, room.seq());
            clients.push((client, outbox));
        }
        room.publish(crate::hub::tests::status(crate::protocol::NodeStatus::Running));
        for (i, (client, _outbox)) in clients.iter_mut().enumerate() {
            let mut header = [0; 2];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut header)).await;
            assert!(matches!(read, Ok(Ok(_))), "socket {i} got no frame");
            assert_eq!(header[0], 0x81, "socket {i}: a text frame");
        }
    }

    /// Another shard writes a batch to a shard's sockets from the end of its list, until it
    /// meets a socket that has it or one that lacks earlier frames; it never writes a frame twice.
    #[tokio::test]
    async fn a_shard_helps_another_from_the_end_of_its_list() {
        let cases: [(&str, &[Seq], &[Seq]); 4] = [
            ("their shard is held up: every socket", &[4, 4, 4], &[5, 5, 5]),
            ("their shard wrote the first two: the rest", &[5, 5, 4, 4], &[5, 5, 5, 5]),
            ("a socket lacks 4: its shard catches it up", &[4, 3, 4], &[4, 3, 5]),
            ("every socket has it", &[5, 5], &[5, 5]),
        ];
        for (case, before, after) in cases {
            let mut clients = Vec::new();
            let outboxes: Vec<Arc<Outbox>> = before
                .iter()
                .map(|&position| {
                    let (server, client) = tokio::io::duplex(1024);
                    clients.push(client);
                    following(server, position, 1024)
                })
                .collect();
            help_with(&outboxes, &Batch::of(&[frame(5)]));
            let positions: Vec<Seq> = outboxes.iter().map(|outbox| outbox.position()).collect();
            assert_eq!(positions, after, "{case}");
        }
    }
}
