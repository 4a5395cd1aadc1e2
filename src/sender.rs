//! [`Sender`]: the cheap, cloneable handle through which anyone sends to a connection.
//!
//! A `Sender` never touches a socket. It queues a [`Command`] for the event loop:
//!
//! - on the loop's own thread (inside a handler callback) into a thread-local queue that the loop
//!   drains right after the callback returns: no lock, no syscall;
//! - on any other thread into a bounded queue that the loop empties a batch at a time
//!   ([`CommandQueue`]), plus at most one `Waker` wake-up per batch (the first command after the
//!   loop last emptied the queue wakes it; the rest ride along).
//!
//! A `Sender` names its connection by slot and generation ([`ConnId`]). The loop's [`SlotTable`]
//! records, per slot, the generation of its current connection, whether it is open, and how many
//! bytes are queued for it. Sending to a closed connection therefore fails at once with
//! [`Error::ConnectionClosed`], and a command that races with a close is dropped by the loop when
//! the generation no longer matches, never delivered to a newer connection in the same slot.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::prepared::PreparedMessage;
use crate::protocol::close::CloseCode;
use crate::protocol::frame::header_len;
use crate::protocol::message::Message;
use crate::runtime::command_queue::{CommandQueue, PushError};

/// Identifies one connection of one event loop: its slot and the slot's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Index in the loop's connection table (also the mio token).
    pub slot: u32,
    /// How many connections the slot has held before this one.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// A user timer's token, handed back to [`Handler::on_timeout`](crate::Handler::on_timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// A scheduled timer, for [`Sender::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeoutHandle(pub(crate) u64);

/// What a command is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Conn(ConnId),
    /// Every open connection of the loop.
    All,
    /// The loop itself.
    Loop,
}

/// What the loop is asked to do.
#[derive(Debug)]
pub(crate) enum Op {
    Send(Message),
    SendPrepared(PreparedMessage),
    Close(CloseCode, String),
    Ping(Bytes),
    Pong(Bytes),
    Timeout {
        delay: Duration,
        token: Token,
        handle: TimeoutHandle,
    },
    Cancel(TimeoutHandle),
    Shutdown,
    /// Open a client connection in the slot the sender reserved.
    Connect(String),
    /// DNS resolution finished for a connecting client.
    Resolved(std::io::Result<Vec<std::net::SocketAddr>>),
    /// Frame and streaming APIs: a message of this kind starts.
    BeginMessage(crate::MessageKind),
    /// Frame-level API: a data frame of the message being sent piece by piece.
    Frame {
        payload: Bytes,
        fin: bool,
    },
    /// Streaming API: a frame header whose payload follows in `FrameData` chunks.
    FrameHeader {
        len: u64,
    },
    /// Streaming API: raw payload bytes of the frame announced by `FrameHeader`.
    FrameData(Bytes),
}

/// A queued instruction for the event loop.
#[derive(Debug)]
pub(crate) struct Command {
    pub target: Target,
    pub op: Op,
    /// Bytes this command added to the target's `buffered` count (returned when it is dropped).
    pub accounted: usize,
}

const STATE_FREE: u64 = 0;
const STATE_CONNECTING: u64 = 1;
const STATE_OPEN: u64 = 2;
const STATE_CLOSING: u64 = 3;

/// Per-slot status shared between the loop and every `Sender`.
#[derive(Debug, Default)]
struct Slot {
    /// `generation << 2 | state`.
    status: AtomicU64,
    /// Bytes queued for this connection: accepted by `send` but not yet written to the socket.
    buffered: AtomicUsize,
}

/// The status of every slot of one loop (fixed size: `Settings::max_connections`).
#[derive(Debug)]
pub(crate) struct SlotTable {
    slots: Box<[Slot]>,
}

/// Connection states visible to senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Connecting,
    Open,
    Closing,
}

impl SlotTable {
    pub fn new(n: usize) -> Self {
        SlotTable { slots: (0..n).map(|_| Slot::default()).collect() }
    }

    /// The generation the next connection in `slot` gets.
    pub fn next_generation(&self, slot: usize) -> u32 {
        let s = self.slots[slot].status.load(Ordering::Acquire);
        ((s >> 2) as u32).wrapping_add(1)
    }

    pub fn set(&self, id: ConnId, state: SlotState) {
        let st = match state {
            SlotState::Free => STATE_FREE,
            SlotState::Connecting => STATE_CONNECTING,
            SlotState::Open => STATE_OPEN,
            SlotState::Closing => STATE_CLOSING,
        };
        let slot = &self.slots[id.slot as usize];
        if state == SlotState::Connecting {
            slot.buffered.store(0, Ordering::Relaxed);
        }
        slot.status.store((id.generation as u64) << 2 | st, Ordering::Release);
    }

    /// Open -> Closing for this generation only (a no-op if the slot moved on meanwhile).
    pub fn mark_closing(&self, id: ConnId) {
        let slot = &self.slots[id.slot as usize];
        let open = (id.generation as u64) << 2 | STATE_OPEN;
        let closing = (id.generation as u64) << 2 | STATE_CLOSING;
        let _ = slot.status.compare_exchange(open, closing, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn state(&self, id: ConnId) -> SlotState {
        let Some(slot) = self.slots.get(id.slot as usize) else { return SlotState::Free };
        let s = slot.status.load(Ordering::Acquire);
        if (s >> 2) as u32 != id.generation {
            return SlotState::Free;
        }
        match s & 3 {
            STATE_CONNECTING => SlotState::Connecting,
            STATE_OPEN => SlotState::Open,
            STATE_CLOSING => SlotState::Closing,
            _ => SlotState::Free,
        }
    }

    pub fn buffered(&self, id: ConnId) -> usize {
        self.slots.get(id.slot as usize).map_or(0, |s| s.buffered.load(Ordering::Relaxed))
    }

    /// Reserve `n` bytes of `id`'s send queue, or fail without reserving.
    pub fn reserve(&self, id: ConnId, n: usize, max: usize) -> Result<()> {
        let slot = &self.slots[id.slot as usize];
        let before = slot.buffered.fetch_add(n, Ordering::Relaxed);
        if before + n > max {
            slot.buffered.fetch_sub(n, Ordering::Relaxed);
            return Err(Error::SendQueueFull { queued: before, max });
        }
        Ok(())
    }

    /// Account bytes the loop queued on its own (pongs, close frames, broadcasts).
    pub fn add(&self, slot: usize, n: usize) {
        self.slots[slot].buffered.fetch_add(n, Ordering::Relaxed);
    }

    /// Return bytes written to the socket, or dropped (saturating at zero: a reservation that
    /// raced with the slot's reuse must not wrap the new connection's count).
    pub fn release(&self, slot: usize, n: usize) {
        if n > 0 {
            let _ = self.slots[slot]
                .buffered
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
        }
    }
}

/// What every `Sender` of one loop shares.
pub(crate) struct LoopShared {
    pub loop_id: usize,
    /// Commands from other threads (see [`CommandQueue`]).
    pub queue: CommandQueue<Command>,
    pub waker: mio::Waker,
    /// Set when a wake-up is pending, so a burst of sends costs one `Waker::wake`.
    pub woken: AtomicBool,
    pub slots: SlotTable,
    pub next_timer: AtomicU64,
    pub max_send_queue: usize,
    pub stats: crate::runtime::event_loop::LoopCounters,
    /// Bytes of broadcasts queued but not yet applied: counted in every connection's
    /// `buffered_amount`, so an application pacing itself by it sees broadcasts in flight too.
    pub pending_broadcast: AtomicUsize,
}

impl fmt::Debug for LoopShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopShared").field("loop_id", &self.loop_id).finish_non_exhaustive()
    }
}

thread_local! {
    /// The id of the loop running on this thread (0: none).
    static CURRENT_LOOP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Commands issued on the loop's own thread, drained by the loop after each callback.
    static LOCAL_QUEUE: RefCell<VecDeque<Command>> = const { RefCell::new(VecDeque::new()) };
}

/// Mark this thread as running loop `id` (0 to clear).
pub(crate) fn set_current_loop(id: usize) {
    CURRENT_LOOP.with(|c| c.set(id));
}

/// Move the commands queued on this thread into `out`.
pub(crate) fn take_local(out: &mut Vec<Command>) {
    LOCAL_QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if !q.is_empty() {
            out.extend(q.drain(..));
        }
    });
}

/// What [`pop_local_for`] found at the front of this thread's local queue.
pub(crate) enum LocalFront {
    /// A command for the connection asked about, taken off the queue.
    Mine(Command),
    /// A command for someone else: the loop must apply it.
    Other,
    /// Nothing queued.
    Empty,
}

/// The first queued command, if it is addressed to connection `id` (so the connection can apply
/// it at once, in order, without a round trip through the loop); one look at the queue.
pub(crate) fn pop_local_for(id: ConnId) -> LocalFront {
    LOCAL_QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        match q.front() {
            None => LocalFront::Empty,
            Some(c) if c.target == Target::Conn(id) => q.pop_front().map_or(LocalFront::Empty, LocalFront::Mine),
            Some(_) => LocalFront::Other,
        }
    })
}

/// Whether commands are waiting in this thread's local queue.
pub(crate) fn has_local() -> bool {
    LOCAL_QUEUE.with(|q| !q.borrow().is_empty())
}

/// Sends messages and commands to one connection (or, for a loop handle, to the loop).
///
/// `Clone + Send + Sync`: keep one in the handler, hand clones to other connections' handlers or to
/// other threads. Every method returns at once; none blocks the caller or the loop.
#[derive(Clone)]
pub struct Sender {
    id: Option<ConnId>,
    client: bool,
    shared: Arc<LoopShared>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("id", &self.id).field("loop", &self.shared.loop_id).finish()
    }
}

impl Sender {
    pub(crate) fn new(id: Option<ConnId>, client: bool, shared: Arc<LoopShared>) -> Self {
        Sender { id, client, shared }
    }

    /// The connection this sender names (`None` for a loop handle from
    /// [`WebSocket::sender`](crate::WebSocket::sender)).
    pub fn connection_id(&self) -> Option<ConnId> {
        self.id
    }

    /// The connection id, for connection senders.
    ///
    /// # Panics
    /// Never: a loop handle returns the id `#0.0` and [`connection_id`](Self::connection_id) tells
    /// the two apart.
    pub fn id(&self) -> ConnId {
        self.id.unwrap_or(ConnId { slot: 0, generation: 0 })
    }

    /// Whether the connection is open (its handshake done, no close frame sent or received yet).
    pub fn is_open(&self) -> bool {
        self.id.is_some_and(|id| self.shared.slots.state(id) == SlotState::Open)
    }

    /// The loop's counters: open connections, accepted and closed totals, timers.
    pub fn loop_stats(&self) -> crate::LoopStats {
        self.shared.stats.snapshot()
    }

    /// Bytes queued for this connection and not yet accepted by the kernel (like the browser's
    /// `WebSocket.bufferedAmount`). A game server can skip or coalesce updates for a slow client
    /// when this grows.
    pub fn buffered_amount(&self) -> usize {
        self.id.map_or(0, |id| self.shared.slots.buffered(id) + self.shared.pending_broadcast.load(Ordering::Relaxed))
    }

    /// Queue a text or binary message (anything `Into<Message>`: `&str`, `String`, `Vec<u8>`,
    /// `Bytes`, ...).
    ///
    /// Fails with [`Error::ConnectionClosed`] when the connection is closed or closing, and with
    /// [`Error::SendQueueFull`] when the message would take the connection's queue past
    /// `Settings::max_send_queue` (the message is then not queued).
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        let id = self.open_id()?;
        let n = header_len(msg.len() as u64, self.client) + msg.len();
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: Op::Send(msg), accounted: n })
    }

    /// Queue a message framed once by [`PreparedMessage::new`]: on a server connection the same
    /// reference-counted bytes are queued without any per-send framing or copy.
    pub fn send_prepared(&self, msg: &PreparedMessage) -> Result<()> {
        let id = self.open_id()?;
        let n = msg.frame_len(self.client);
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: Op::SendPrepared(msg.clone()), accounted: n })
    }

    /// Start the closing handshake with `code` and `reason` (at most 123 bytes; longer is cut at a
    /// character boundary). [`Handler::on_close`](crate::Handler::on_close) follows when the peer
    /// answers or the close timeout expires.
    pub fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        let code = code.into();
        if !code.is_sendable() {
            return Err(Error::InvalidUse("close code may not be sent (RFC 6455 §7.4)"));
        }
        let id = self.open_id()?;
        self.push(Command { target: Target::Conn(id), op: Op::Close(code, reason.to_string()), accounted: 0 })?;
        // From now on sends fail, even before the loop has applied the close.
        self.shared.slots.mark_closing(id);
        Ok(())
    }

    /// Send a ping with `payload` (at most 125 bytes).
    pub fn ping(&self, payload: impl Into<Bytes>) -> Result<()> {
        let payload = payload.into();
        self.control(payload, Op::Ping)
    }

    /// Send an unsolicited pong with `payload` (at most 125 bytes; a heartbeat the peer need not
    /// answer).
    pub fn pong(&self, payload: impl Into<Bytes>) -> Result<()> {
        let payload = payload.into();
        self.control(payload, Op::Pong)
    }

    fn control(&self, payload: Bytes, op: fn(Bytes) -> Op) -> Result<()> {
        if payload.len() > crate::protocol::frame::MAX_CONTROL_PAYLOAD {
            return Err(Error::InvalidUse("control frame payload longer than 125 bytes"));
        }
        let id = self.open_id()?;
        let n = header_len(payload.len() as u64, self.client) + payload.len();
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: op(payload), accounted: n })
    }

    /// Call [`Handler::on_timeout`](crate::Handler::on_timeout) with `token` after `delay`
    /// (millisecond resolution). Returns a handle for [`cancel`](Self::cancel).
    pub fn timeout(&self, delay: Duration, token: Token) -> Result<TimeoutHandle> {
        let id = self.id.ok_or(Error::InvalidUse("timeouts belong to a connection"))?;
        let handle = TimeoutHandle(self.shared.next_timer.fetch_add(1, Ordering::Relaxed));
        self.push(Command { target: Target::Conn(id), op: Op::Timeout { delay, token, handle }, accounted: 0 })?;
        Ok(handle)
    }

    /// Cancel a timer set with [`timeout`](Self::timeout). Cancelling a timer that already fired
    /// does nothing.
    pub fn cancel(&self, handle: TimeoutHandle) -> Result<()> {
        let target = self.id.map_or(Target::Loop, Target::Conn);
        self.push(Command { target, op: Op::Cancel(handle), accounted: 0 })
    }

    /// Queue `msg` for every open connection of this loop (including this one). The message is
    /// framed once per role and shared by reference between connections.
    ///
    /// A connection whose queue the message would take past `Settings::max_send_queue` is closed
    /// with 1008 (it is too far behind to keep up); until the loop applies the broadcast, its size
    /// counts in every connection's [`buffered_amount`](Self::buffered_amount).
    pub fn broadcast(&self, msg: impl Into<Message>) -> Result<()> {
        self.broadcast_prepared(&PreparedMessage::new(msg.into()))
    }

    /// Queue a prepared message for every open connection of this loop (see
    /// [`broadcast`](Self::broadcast)).
    pub fn broadcast_prepared(&self, msg: &PreparedMessage) -> Result<()> {
        let n = msg.frame_len(true);
        self.shared.pending_broadcast.fetch_add(n, Ordering::Relaxed);
        self.push(Command { target: Target::All, op: Op::SendPrepared(msg.clone()), accounted: n })
    }

    /// Shut the whole loop down gracefully: stop accepting, close every connection with 1001
    /// (Going Away), wait for their closing handshakes up to the close timeout, then return from
    /// `run()`.
    pub fn shutdown(&self) -> Result<()> {
        self.push(Command { target: Target::Loop, op: Op::Shutdown, accounted: 0 })
    }

    /// Open a new client connection to `url` on this loop. Its handler comes from the loop's
    /// factory ([`Factory::client_connected`](crate::Factory::client_connected)).
    pub fn connect(&self, url: &str) -> Result<()> {
        crate::protocol::handshake::client::WsUrl::parse(url)?;
        self.push(Command { target: Target::Loop, op: Op::Connect(url.to_string()), accounted: 0 })
    }

    /// Reserve queue bytes, re-checking afterwards that the connection did not close meanwhile
    /// (so a reservation never lands on a newer connection that reused the slot).
    fn reserve(&self, id: ConnId, n: usize) -> Result<()> {
        self.shared.slots.reserve(id, n, self.shared.max_send_queue)?;
        if self.shared.slots.state(id) != SlotState::Open {
            self.shared.slots.release(id.slot as usize, n);
            return Err(Error::ConnectionClosed);
        }
        Ok(())
    }

    fn open_id(&self) -> Result<ConnId> {
        let id = self.id.ok_or(Error::InvalidUse("a loop handle has no connection to send to"))?;
        match self.shared.slots.state(id) {
            SlotState::Open => Ok(id),
            _ => Err(Error::ConnectionClosed),
        }
    }

    /// Frame and streaming APIs: start a message of `kind`, to be sent frame by frame with
    /// [`send_frame`](Self::send_frame) or streamed with [`begin_frame`](Self::begin_frame) and
    /// [`send_frame_data`](Self::send_frame_data), and finished with
    /// [`end_message`](Self::end_message). Whole messages sent with [`send`](Self::send) meanwhile
    /// wait until the message ends (data frames of two messages never interleave); pings and pongs
    /// go out at once.
    pub fn begin_message(&self, kind: crate::MessageKind) -> Result<()> {
        let id = self.open_id()?;
        self.push(Command { target: Target::Conn(id), op: Op::BeginMessage(kind), accounted: 0 })
    }

    /// Frame API: send `payload` as the next (non-final) frame of the message begun with
    /// [`begin_message`](Self::begin_message).
    pub fn send_frame(&self, payload: impl Into<Bytes>) -> Result<()> {
        self.frame(payload.into(), false)
    }

    /// Frame and streaming APIs: finish the message with a final, empty frame.
    pub fn end_message(&self) -> Result<()> {
        self.frame(Bytes::new(), true)
    }

    /// Frame API: send `payload` as the final frame of the message (instead of
    /// [`end_message`](Self::end_message)'s empty one).
    pub fn end_message_with(&self, payload: impl Into<Bytes>) -> Result<()> {
        self.frame(payload.into(), true)
    }

    fn frame(&self, payload: Bytes, fin: bool) -> Result<()> {
        let id = self.open_id()?;
        let n = header_len(payload.len() as u64, self.client) + payload.len();
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: Op::Frame { payload, fin }, accounted: n })
    }

    /// Streaming API: start a (non-final) frame of `len` payload bytes, to be sent with
    /// [`send_frame_data`](Self::send_frame_data) until `len` bytes have gone out. Sending more
    /// or fewer fails the connection (1011): the header has announced the length.
    pub fn begin_frame(&self, len: u64) -> Result<()> {
        let id = self.open_id()?;
        let n = header_len(len, self.client);
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: Op::FrameHeader { len }, accounted: n })
    }

    /// Streaming API: the next chunk of the current frame's payload.
    pub fn send_frame_data(&self, chunk: impl Into<Bytes>) -> Result<()> {
        let data = chunk.into();
        let id = self.open_id()?;
        let n = data.len();
        self.reserve(id, n)?;
        self.push(Command { target: Target::Conn(id), op: Op::FrameData(data), accounted: n })
    }

    fn push(&self, cmd: Command) -> Result<()> {
        if CURRENT_LOOP.with(|c| c.get()) == self.shared.loop_id {
            LOCAL_QUEUE.with(|q| q.borrow_mut().push_back(cmd));
            return Ok(());
        }
        if let Err((cmd, e)) = self.shared.queue.push(cmd) {
            match cmd.target {
                Target::Conn(id) => self.shared.slots.release(id.slot as usize, cmd.accounted),
                Target::All => {
                    self.shared.pending_broadcast.fetch_sub(cmd.accounted, Ordering::Relaxed);
                }
                Target::Loop => {}
            }
            return Err(match e {
                PushError::Full => Error::ChannelFull,
                PushError::Closed => Error::LoopGone,
            });
        }
        // One wake-up per batch: a plain load first, so a burst of sends does not bounce the
        // flag's cache line with read-modify-writes while a wake-up is already pending.
        if !self.shared.woken.load(Ordering::Acquire) && !self.shared.woken.swap(true, Ordering::AcqRel) {
            self.shared.waker.wake().map_err(|_| Error::LoopGone)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_generations_distinguish_connections() {
        let t = SlotTable::new(4);
        let a = ConnId { slot: 1, generation: t.next_generation(1) };
        t.set(a, SlotState::Open);
        assert_eq!(t.state(a), SlotState::Open);
        t.set(a, SlotState::Free);
        let b = ConnId { slot: 1, generation: t.next_generation(1) };
        assert_ne!(a.generation, b.generation);
        t.set(b, SlotState::Open);
        assert_eq!(t.state(a), SlotState::Free, "old generation must not see the new connection");
        assert_eq!(t.state(b), SlotState::Open);
        assert_eq!(t.state(ConnId { slot: 99, generation: 1 }), SlotState::Free);
    }

    #[test]
    fn reserve_enforces_the_limit_without_leaking() {
        let t = SlotTable::new(1);
        let id = ConnId { slot: 0, generation: 1 };
        t.set(id, SlotState::Connecting);
        t.reserve(id, 60, 100).unwrap();
        match t.reserve(id, 41, 100) {
            Err(Error::SendQueueFull { queued: 60, max: 100 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(t.buffered(id), 60);
        t.release(0, 60);
        assert_eq!(t.buffered(id), 0);
    }
}
