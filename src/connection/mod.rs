//! One connection's state machine: handshake, open, closing, draining, dead.
//!
//! A `Connection` owns its socket, buffers, decoder and handler, and is driven by the event loop:
//! [`Connection::drive`] reads, decodes and calls the handler **one callback at a time**, returning
//! [`Drive::Yield`] whenever a callback queued commands, so the loop applies them (to this or any
//! other connection) before the next callback. A connection is never removed while one of its
//! callbacks runs: it reports [`Drive::Dead`] and the loop removes it afterwards.
//!
//! Data flows one way: socket -> read buffer -> decoder -> handler; handler -> sender -> loop ->
//! [`Connection::apply`] -> write queue -> socket.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | the state, reading (`drive`), writing (`flush`), timers and keep-alive |
//! | `handshake.rs` | resolve and connect (clients), the opening handshake in both roles, `open` |
//! | `receive.rs` | decoding frames and dispatching them to the handler at its level |
//! | `send.rs` | applying `Sender` commands: messages, prepared frames, frame and streaming APIs |
//! | `closing.rs` | the closing handshake, failing with the RFC's code, `on_close` exactly once |

mod closing;
mod handshake;
mod receive;
mod send;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token as MioToken};

use crate::error::{Error, HandshakeError, Result};
use crate::handler::{Handler, Level};
use crate::prepared::PreparedMessage;
use crate::protocol::assembler::Accumulator;
use crate::protocol::close::{truncate_reason, CloseCode, CloseFrame};
use crate::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use crate::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::protocol::handshake::client::{ClientRequest, ResponseParser, ServerResponse, WsUrl};
use crate::protocol::handshake::headers::{encode_key, HeadLimits};
use crate::protocol::handshake::server::{Rejection, RequestParser};
use crate::protocol::mask::MaskGen;
use crate::protocol::message::{Message, MessageKind};
use crate::read_buffer::ReadBuffer;
use crate::runtime::timers::{TimerKey, TimerKind, Timers};
use crate::sender::{ConnId, LoopShared, Op, SlotState};
use crate::settings::Settings;
use crate::write_queue::WriteQueue;

/// Bytes queued on a connection beyond which it is written at once instead of at the end of
/// the turn.
const CORK_LIMIT: usize = 256 * 1024;

// Undecoded bytes up to `SMALL_LEFTOVER` are always copied out of the loop's read buffer, also
// when a callback yielded (more frames may follow in the buffer); see `drive`.
use crate::read_buffer::{COMPLETION_ROOM, SMALL_LEFTOVER};

/// What the loop lends a connection while driving it.
pub(crate) struct Ctx<'a> {
    pub settings: &'a Settings,
    pub shared: &'a Arc<LoopShared>,
    pub timers: &'a mut Timers,
    pub mask: &'a mut MaskGen,
    pub registry: &'a Registry,
    pub loop_rbuf: &'a mut ReadBuffer,
    pub buf_pool: &'a mut Vec<BytesMut>,
    /// Buffers large leftovers were copied into, for reuse.
    pub leftover_pool: &'a mut Vec<BytesMut>,
    pub now: Instant,
}

/// What [`Connection::drive`] asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// A callback queued commands: apply them, then drive again.
    Yield,
    /// Nothing more to do until the next readiness event or timer.
    Idle,
    /// The read budget is spent but more input may be waiting: drive again after the others.
    More,
    /// Remove the connection.
    Dead,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Client: waiting for name resolution.
    Resolving,
    /// Client: TCP connect in progress.
    Connecting,
    /// Server: reading the upgrade request.
    ServerHandshake,
    /// Client: request sent, reading the response.
    ClientHandshake,
    /// Client: the server refused the upgrade; reading its response body.
    ClientRejected,
    /// Messages flow.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// The closing handshake is over (or the connection failed): flush, then wait for the TCP
    /// close (a server half-closes first), up to the close timeout.
    Draining,
    /// To be removed.
    Dead,
}

/// Client handshake state.
#[derive(Debug)]
struct ClientHs {
    url: WsUrl,
    key: String,
    request: ClientRequest,
    parser: ResponseParser,
    addrs: Vec<SocketAddr>,
    rejected: Option<(ServerResponse, usize)>,
}

/// State of a message being sent with the frame or streaming API.
#[derive(Debug, Default)]
struct Outgoing {
    /// The kind of the message in progress.
    kind: Option<MessageKind>,
    /// Its first frame is queued (later frames are continuations).
    first_sent: bool,
    /// Whole messages sent while it is in progress, with their reserved bytes.
    deferred: std::collections::VecDeque<(Message, usize)>,
    /// Streaming: payload bytes still due for the current frame, and its mask and offset.
    frame_left: u64,
    frame_mask: Option<[u8; 4]>,
    frame_offset: u64,
}

/// One WebSocket connection.
pub(crate) struct Connection<H> {
    pub id: ConnId,
    pub role: Role,
    pub socket: Option<TcpStream>,
    pub peer: Option<SocketAddr>,
    pub handler: H,
    pub phase: Phase,
    server_hs: Option<Box<RequestParser>>,
    client_hs: Option<Box<ClientHs>>,
    pub rbuf: ReadBuffer,
    /// `rbuf` is a full-size buffer lent by the loop and kept (see `return_buffer`), not a
    /// leftover copy of the connection's own.
    holds_read_buffer: bool,
    pub wq: WriteQueue,
    decoder: Decoder,
    acc: Accumulator,
    level: Level,
    msg_kind: Option<MessageKind>,
    opened: bool,
    close_reported: bool,
    close_sent: bool,
    /// Scheduled timers of this connection, cancelled when they stop applying.
    open_timer: Option<TimerKey>,
    close_timer: Option<TimerKey>,
    keepalive_timer: Option<TimerKey>,
    shutdown_after_flush: bool,
    /// Close the socket once the write queue is empty (a server after a clean closing handshake).
    close_after_flush: bool,
    shut_down: bool,
    write_interest: bool,
    /// Readable readiness not yet consumed (edge-triggered: read until a short read).
    want_read: bool,
    /// The peer half-closed: read to EOF.
    read_closed: bool,
    budget: usize,
    /// Bytes still missing from a binary frame awaited whole at the end of the buffer (0: none).
    awaiting: usize,
    pub flush_scheduled: bool,
    /// The write queue stood above the low-water mark after a flush: call `on_writable` when
    /// it drains.
    backlogged: bool,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    out: Outgoing,
}

impl<H> std::fmt::Debug for Connection<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("phase", &self.phase)
            .finish()
    }
}

fn decoder_config(role: Role, s: &Settings) -> DecoderConfig {
    DecoderConfig {
        role,
        max_frame_size: s.max_frame_size,
        max_message_size: s.max_message_size,
        max_fragments: s.max_fragments,
        allowed_rsv: 0,
    }
}

/// Run a handler callback, turning a panic into [`Error::HandlerPanic`] when configured.
fn guard<R>(catch: bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
    if !catch {
        return f();
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Err(Error::HandlerPanic(msg))
        }
    }
}

impl<H: Handler> Connection<H> {
    fn new(id: ConnId, role: Role, handler: H, settings: &Settings, now: Instant) -> Self {
        Connection {
            id,
            role,
            socket: None,
            peer: None,
            handler,
            phase: Phase::Dead,
            server_hs: None,
            client_hs: None,
            rbuf: ReadBuffer::new(),
            holds_read_buffer: false,
            wq: WriteQueue::new(),
            decoder: Decoder::new(decoder_config(role, settings)),
            acc: Accumulator::new(),
            level: Level::Message,
            msg_kind: None,
            opened: false,
            close_reported: false,
            close_sent: false,
            open_timer: None,
            close_timer: None,
            keepalive_timer: None,
            shutdown_after_flush: false,
            close_after_flush: false,
            shut_down: false,
            write_interest: false,
            want_read: false,
            read_closed: false,
            budget: 0,
            awaiting: 0,
            flush_scheduled: false,
            backlogged: false,
            last_rx: now,
            ping_sent: None,
            out: Outgoing::default(),
        }
    }

    /// A server connection for an accepted socket.
    pub fn accepted(id: ConnId, socket: TcpStream, peer: SocketAddr, handler: H, ctx: &mut Ctx<'_>) -> Self {
        let mut c = Self::new(id, Role::Server, handler, ctx.settings, ctx.now);
        let limits =
            HeadLimits { max_bytes: ctx.settings.max_handshake_bytes, max_headers: ctx.settings.max_handshake_headers };
        c.socket = Some(socket);
        c.peer = Some(peer);
        c.phase = Phase::ServerHandshake;
        c.server_hs = Some(Box::new(RequestParser::new(limits)));
        c.open_timer = Some(ctx.timers.schedule(ctx.now + ctx.settings.open_timeout, id, TimerKind::OpenHandshake));
        c
    }

    /// A client connection to `url`, waiting for its addresses.
    pub fn client(id: ConnId, url: WsUrl, request: ClientRequest, handler: H, ctx: &mut Ctx<'_>) -> Self {
        let mut c = Self::new(id, Role::Client, handler, ctx.settings, ctx.now);
        let mut nonce = [0u8; 16];
        ctx.mask.fill(&mut nonce);
        let limits =
            HeadLimits { max_bytes: ctx.settings.max_handshake_bytes, max_headers: ctx.settings.max_handshake_headers };
        c.client_hs = Some(Box::new(ClientHs {
            url,
            key: encode_key(&nonce),
            request,
            parser: ResponseParser::new(limits),
            addrs: Vec::new(),
            rejected: None,
        }));
        c.phase = Phase::Resolving;
        c.open_timer = Some(ctx.timers.schedule(ctx.now + ctx.settings.open_timeout, id, TimerKind::OpenHandshake));
        c
    }

    fn token(&self) -> MioToken {
        MioToken(self.id.slot as usize)
    }

    /// Readiness from the poller.
    pub fn ready(&mut self, readable: bool, writable: bool, read_closed: bool, ctx: &mut Ctx<'_>) -> Drive {
        if self.phase == Phase::Connecting && (writable || readable || read_closed) {
            return self.connect_done(ctx);
        }
        if readable || read_closed {
            self.want_read = true;
            self.read_closed |= read_closed;
            self.budget = ctx.settings.read_budget;
        }
        if writable && !self.wq.is_empty() {
            match self.flush_now(ctx) {
                Drive::Idle => {}
                other => return other,
            }
        }
        self.drive(ctx)
    }

    /// Continue after [`Drive::More`]: a fresh read budget for this turn.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        self.budget = ctx.settings.read_budget;
        self.drive(ctx)
    }

    /// Drive the connection: decode what is buffered, read more while allowed. Returns after at
    /// most one handler callback that queued commands.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        // Read into the loop's buffer (large, shared by all connections); the leftover from last
        // time moves into it first. A connection that kept the buffer it read into (see
        // `return_buffer`) reads into that one instead.
        debug_assert_eq!(ctx.loop_rbuf.filled(), 0);
        if !self.holds_read_buffer {
            ctx.loop_rbuf.rewind(ctx.settings.read_buffer_size + COMPLETION_ROOM);
            if self.rbuf.filled() > 0 {
                ctx.loop_rbuf.extend_from_slice(self.rbuf.data());
            }
            self.rbuf.release_leftover(ctx.leftover_pool);
            std::mem::swap(&mut self.rbuf, ctx.loop_rbuf);
        }
        let budget = self.budget;
        let r = self.drive_inner(ctx);
        // A small leftover is always copied out. A larger one (one partial frame, at most a
        // binary frame awaited whole: half the read buffer) only when this pass read at least as
        // many bytes, so copying never costs more than reading did (a peer trickling a large
        // frame byte by byte must not make every byte cost a copy of the whole partial frame),
        // and never after a callback that yielded: the rest of the buffer, possibly many frames,
        // is decoded next.
        let read = budget.saturating_sub(self.budget);
        let copy_limit = match r {
            Drive::Yield => SMALL_LEFTOVER,
            _ => SMALL_LEFTOVER.max(read.min(ctx.settings.read_buffer_size / 2 + MAX_HEADER_LEN)),
        };
        self.return_buffer(ctx, copy_limit);
        r
    }

    /// Give the read buffer back to the loop, keeping a copy of what is left undecoded (a partial
    /// frame, a handshake head) in a buffer of the connection's own, so the loop reads every
    /// connection into the same, cache-warm buffer. Over `copy_limit` bytes the connection keeps
    /// the buffer instead, and the loop takes another from its pool.
    ///
    /// `../shared/bench` scenario c (64 KiB echoes): a connection holding a partial frame used to
    /// keep the whole buffer, so the loop rotated through several and the kernel's copy into
    /// them ran at about half the speed of a copy into one warm buffer (`perf`: 8.8 vs 4.85 us
    /// per message); copying the partial frame out and back costs less.
    fn return_buffer(&mut self, ctx: &mut Ctx<'_>, copy_limit: usize) {
        let left = self.rbuf.filled();
        if left > copy_limit {
            self.holds_read_buffer = true;
            return;
        }
        self.holds_read_buffer = false;
        let own = if left > 0 {
            let large = ctx.settings.read_buffer_size / 2 + MAX_HEADER_LEN;
            ReadBuffer::leftover(self.rbuf.data(), ctx.leftover_pool, large)
        } else {
            ReadBuffer::new()
        };
        let mut read = std::mem::replace(&mut self.rbuf, own);
        read.consume(left);
        let mut previous = std::mem::replace(ctx.loop_rbuf, read);
        previous.recycle_into(ctx.buf_pool);
    }

    fn drive_inner(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let mut completion_read = true;
        loop {
            let phase = self.phase;
            match self.process(ctx) {
                // The handshake completed: frames that arrived with it are already buffered
                // and the socket may be drained, so decode them before reading again.
                Step::Continue if self.phase != phase && self.rbuf.filled() > 0 => continue,
                Step::Continue => {}
                Step::Yield => return Drive::Yield,
                Step::Dead => return Drive::Dead,
            }
            if self.phase == Phase::Dead {
                return Drive::Dead;
            }
            if !self.want_read {
                return Drive::Idle;
            }
            // Reads may go COMPLETION_ROOM past the budget: in `../shared/bench` scenario c (four
            // pipelined 64 KiB frames, 262,200 bytes, against a 256 KiB budget) a read of exactly
            // the budget left 56 bytes for a second `recv` and almost a whole frame to copy.
            let mut max = ctx.settings.read_buffer_size.min(self.budget) + COMPLETION_ROOM;
            if self.budget == 0 {
                // The budget ran out inside a frame awaited whole: if its rest fits the room the
                // buffer keeps for this, read it now (once per pass, up to COMPLETION_ROOM more),
                // so the pass ends at a frame boundary instead of leaving most of a frame to be
                // copied out of the loop's buffer and back.
                let room = self.rbuf.spare().min(COMPLETION_ROOM);
                if !completion_read || self.awaiting == 0 || self.awaiting > room {
                    return Drive::More;
                }
                completion_read = false;
                max = room;
            }
            let Some(sock) = self.socket.as_ref() else { return Drive::Idle };
            match self.rbuf.read_from(sock, max, ctx.buf_pool) {
                Ok((0, _)) => return self.eof(ctx),
                Ok((n, room)) => {
                    self.budget = self.budget.saturating_sub(n);
                    self.last_rx = ctx.now;
                    self.ping_sent = None;
                    // A short read drained the socket: with edge-triggered readiness, the next
                    // data brings a new event, so the read that would return WouldBlock is skipped.
                    if n < room && !self.read_closed {
                        self.want_read = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.want_read = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(e),
            }
        }
    }

    fn eof(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        self.want_read = false;
        match self.phase {
            Phase::Open | Phase::Closing => {
                log::debug!("{} {:?}: connection dropped without a close frame", self.id, self.peer);
                self.report_close(ctx, CloseCode::ABNORMAL, "");
                self.phase = Phase::Dead;
            }
            Phase::ClientRejected => return self.finish_rejected(),
            Phase::ServerHandshake | Phase::ClientHandshake => {
                log::debug!("{} {:?}: closed during the opening handshake", self.id, self.peer);
                if self.role == Role::Client {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "server closed during the handshake");
                    return self.fail_handshake(Error::Io(e));
                }
                self.phase = Phase::Dead;
            }
            _ => self.phase = Phase::Dead,
        }
        Drive::Dead
    }

    fn io_error(&mut self, e: io::Error) -> Drive {
        log::debug!("{} {:?}: I/O error: {e}", self.id, self.peer);
        let opened = self.opened && !self.close_reported;
        self.call_error(Error::Io(e));
        if opened {
            self.close_reported = true;
            let catch = true;
            let _ = guard(catch, || {
                self.handler.on_close(CloseCode::ABNORMAL, "");
                Ok(())
            });
        }
        self.phase = Phase::Dead;
        Drive::Dead
    }

    fn call_error(&mut self, e: Error) {
        let _ = guard(true, || {
            self.handler.on_error(e);
            Ok(())
        });
    }

    /// Decode and dispatch buffered input: at most one callback that queued commands.
    fn process(&mut self, ctx: &mut Ctx<'_>) -> Step {
        match self.phase {
            Phase::ServerHandshake => self.server_handshake(ctx),
            Phase::ClientHandshake => self.client_handshake(ctx),
            Phase::ClientRejected => {
                if self.rejected_body_complete() {
                    self.finish_rejected();
                    return Step::Dead;
                }
                Step::Continue
            }
            Phase::Open | Phase::Closing => self.frames(ctx),
            Phase::Draining => {
                let n = self.rbuf.filled();
                self.rbuf.consume(n);
                Step::Continue
            }
            Phase::Dead => Step::Dead,
            Phase::Resolving | Phase::Connecting => Step::Continue,
        }
    }

    fn schedule_flush(&mut self) {
        self.flush_scheduled = true;
    }

    /// Writes are corked until the end of the turn, except when a connection has a lot queued:
    /// then it is written at once, so many commands applied in one turn (a burst of broadcasts
    /// from another thread, say) reach the kernel instead of piling up against the queue limit.
    fn flush_if_large(&mut self, ctx: &mut Ctx<'_>) {
        if self.wq.len() >= CORK_LIMIT {
            // An error here shows up again, and is handled, at the scheduled flush.
            let _ = self.flush(ctx);
            self.flush_scheduled = true;
        }
    }

    /// Write what is queued; manage write interest and the server's half-close.
    pub fn flush(&mut self, ctx: &mut Ctx<'_>) -> io::Result<()> {
        self.flush_scheduled = false;
        let Some(sock) = self.socket.as_mut() else { return Ok(()) };
        if self.phase == Phase::Connecting {
            return Ok(());
        }
        let n = self.wq.write_to(sock)?;
        ctx.shared.slots.release(self.id.slot as usize, n);
        let token = MioToken(self.id.slot as usize);
        if self.wq.is_empty() {
            if self.write_interest {
                ctx.registry.reregister(sock, token, Interest::READABLE)?;
                self.write_interest = false;
            }
            if self.close_after_flush {
                self.phase = Phase::Dead;
            } else if self.shutdown_after_flush && !self.shut_down {
                self.shut_down = true;
                let _ = sock.shutdown(Shutdown::Write);
            }
        } else if !self.write_interest {
            ctx.registry.reregister(sock, token, Interest::READABLE | Interest::WRITABLE)?;
            self.write_interest = true;
        }
        Ok(())
    }

    /// Flush and report what to do with the connection; tells the handler when a backlog
    /// drained below the low-water mark.
    pub fn flush_now(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        if let Err(e) = self.flush(ctx) {
            return self.io_error(e);
        }
        if self.phase == Phase::Dead {
            return Drive::Dead;
        }
        let low = ctx.settings.send_queue_low_water;
        if self.wq.len() > low {
            self.backlogged = true;
        } else if self.backlogged && matches!(self.phase, Phase::Open) {
            self.backlogged = false;
            let r = guard(ctx.settings.catch_panics, || self.handler.on_writable());
            return match self.after_callback(ctx, r) {
                Step::Yield => Drive::Yield,
                _ if self.phase == Phase::Dead => Drive::Dead,
                _ => Drive::Idle,
            };
        }
        Drive::Idle
    }

    /// A timer of this connection fired.
    pub fn timer(&mut self, kind: TimerKind, ctx: &mut Ctx<'_>) -> Drive {
        // The timer that fired has left the heap.
        match kind {
            TimerKind::OpenHandshake => self.open_timer = None,
            TimerKind::CloseHandshake => self.close_timer = None,
            TimerKind::KeepAlive => self.keepalive_timer = None,
            TimerKind::User(..) => {}
        }
        match kind {
            TimerKind::OpenHandshake => {
                if matches!(
                    self.phase,
                    Phase::Resolving
                        | Phase::Connecting
                        | Phase::ServerHandshake
                        | Phase::ClientHandshake
                        | Phase::ClientRejected
                ) {
                    log::debug!("{} {:?}: opening handshake timed out", self.id, self.peer);
                    return self.fail_handshake(Error::Handshake(HandshakeError::Timeout));
                }
                Drive::Idle
            }
            TimerKind::CloseHandshake => {
                if matches!(self.phase, Phase::Closing | Phase::Draining) {
                    log::debug!("{} {:?}: closing handshake timed out", self.id, self.peer);
                    if !self.close_reported {
                        self.call_error(Error::Timeout("closing handshake"));
                        self.report_close(ctx, CloseCode::ABNORMAL, "");
                    }
                    self.phase = Phase::Dead;
                    return Drive::Dead;
                }
                Drive::Idle
            }
            TimerKind::KeepAlive => self.keepalive(ctx),
            TimerKind::User(token, _) => {
                if !matches!(self.phase, Phase::Open | Phase::Closing) {
                    return Drive::Idle;
                }
                let r = guard(ctx.settings.catch_panics, || self.handler.on_timeout(token));
                match self.after_callback(ctx, r) {
                    Step::Yield => Drive::Yield,
                    _ if self.phase == Phase::Dead => Drive::Dead,
                    _ => Drive::Idle,
                }
            }
        }
    }

    fn keepalive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        if self.phase != Phase::Open {
            return Drive::Idle;
        }
        let s = ctx.settings;
        let now = ctx.now;
        let idle = now.saturating_duration_since(self.last_rx);
        if let Some(limit) = s.idle_timeout {
            if idle >= limit {
                log::debug!("{} {:?}: idle for {idle:?}, closing", self.id, self.peer);
                self.close(ctx, CloseCode::GOING_AWAY, "idle timeout");
                return Drive::Idle;
            }
        }
        let mut next = s.idle_timeout.map(|d| self.last_rx + d);
        if let Some(interval) = s.keepalive_interval {
            match self.ping_sent {
                Some(sent) if now.saturating_duration_since(sent) >= s.keepalive_timeout => {
                    log::info!("{} {:?}: no answer to keep-alive ping, dropping", self.id, self.peer);
                    self.call_error(Error::Timeout("keep-alive"));
                    self.report_close(ctx, CloseCode::ABNORMAL, "");
                    self.phase = Phase::Dead;
                    return Drive::Dead;
                }
                Some(sent) => {
                    next = Some(next.map_or(sent + s.keepalive_timeout, |n| n.min(sent + s.keepalive_timeout)))
                }
                None if idle >= interval => {
                    self.queue_control(ctx, OpCode::Ping, &Bytes::new());
                    self.ping_sent = Some(now);
                    let at = now + s.keepalive_timeout;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                None => {
                    let at = self.last_rx + interval;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        if let Some(at) = next {
            let at = at.max(now + std::time::Duration::from_millis(1));
            self.keepalive_timer = Some(ctx.timers.schedule(at, self.id, TimerKind::KeepAlive));
        }
        Drive::Idle
    }

    /// Final bookkeeping before removal: `on_close(1006)` if an open connection never reported
    /// its close (the loop is shutting down, say).
    pub fn finish(&mut self, ctx: &mut Ctx<'_>) {
        if self.opened && !self.close_reported {
            self.report_close(ctx, CloseCode::ABNORMAL, "");
        }
        // Answers queued in this very pass (a close reply, an HTTP error, echoes) still go out
        // when the peer's FIN arrived with its last bytes: one non-blocking write attempt.
        if let Some(sock) = self.socket.as_mut() {
            if !self.wq.is_empty() && self.phase != Phase::Connecting {
                if let Ok(n) = self.wq.write_to(sock) {
                    ctx.shared.slots.release(self.id.slot as usize, n);
                }
            }
        }
        self.cancel_timers(ctx);
        let dropped = self.wq.clear();
        ctx.shared.slots.release(self.id.slot as usize, dropped);
        // Closing the socket removes it from epoll: no deregistering syscall needed.
        self.socket = None;
    }
}

impl<H> Connection<H> {
    /// Remove this connection's open-handshake timer (the handshake is over).
    pub(crate) fn cancel_open_timer(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(key) = self.open_timer.take() {
            ctx.timers.cancel(key, self.id, TimerKind::OpenHandshake);
        }
    }

    /// Remove every connection timer still scheduled (user timers of a connection that is gone
    /// are dropped when they come due).
    fn cancel_timers(&mut self, ctx: &mut Ctx<'_>) {
        self.cancel_open_timer(ctx);
        if let Some(key) = self.close_timer.take() {
            ctx.timers.cancel(key, self.id, TimerKind::CloseHandshake);
        }
        if let Some(key) = self.keepalive_timer.take() {
            ctx.timers.cancel(key, self.id, TimerKind::KeepAlive);
        }
    }
}

/// Result of one processing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Yield,
    Dead,
}
