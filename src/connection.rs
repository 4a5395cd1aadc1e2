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
use crate::protocol::frame::{header_len, FrameHeader, OpCode};
use crate::protocol::handshake::client::{ClientRequest, ResponseParser, ServerResponse, WsUrl};
use crate::protocol::handshake::headers::{encode_key, HeadLimits};
use crate::protocol::handshake::server::{Rejection, RequestParser};
use crate::protocol::mask::MaskGen;
use crate::protocol::message::{Message, MessageKind};
use crate::read_buffer::ReadBuffer;
use crate::runtime::timers::{TimerKind, Timers};
use crate::sender::{ConnId, LoopShared, Op, SlotState};
use crate::settings::Settings;
use crate::write_queue::WriteQueue;

/// Bytes queued on a connection beyond which it is written at once instead of at the end of
/// the turn.
const CORK_LIMIT: usize = 256 * 1024;

/// What the loop lends a connection while driving it.
pub(crate) struct Ctx<'a> {
    pub settings: &'a Settings,
    pub shared: &'a Arc<LoopShared>,
    pub timers: &'a mut Timers,
    pub mask: &'a mut MaskGen,
    pub registry: &'a Registry,
    pub loop_rbuf: &'a mut ReadBuffer,
    pub buf_pool: &'a mut Vec<BytesMut>,
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
    pub wq: WriteQueue,
    decoder: Decoder,
    acc: Accumulator,
    level: Level,
    msg_kind: Option<MessageKind>,
    opened: bool,
    close_reported: bool,
    close_sent: bool,
    close_timer: bool,
    shutdown_after_flush: bool,
    shut_down: bool,
    write_interest: bool,
    /// Readable readiness not yet consumed (edge-triggered: read until a short read).
    want_read: bool,
    /// The peer half-closed: read to EOF.
    read_closed: bool,
    budget: usize,
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
            wq: WriteQueue::new(),
            decoder: Decoder::new(decoder_config(role, settings)),
            acc: Accumulator::new(),
            level: Level::Message,
            msg_kind: None,
            opened: false,
            close_reported: false,
            close_sent: false,
            close_timer: false,
            shutdown_after_flush: false,
            shut_down: false,
            write_interest: false,
            want_read: false,
            read_closed: false,
            budget: 0,
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
        ctx.timers.schedule(ctx.now + ctx.settings.open_timeout, id, TimerKind::OpenHandshake);
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
        ctx.timers.schedule(ctx.now + ctx.settings.open_timeout, id, TimerKind::OpenHandshake);
        c
    }

    fn token(&self) -> MioToken {
        MioToken(self.id.slot as usize)
    }

    /// Name resolution finished: connect to the first address that works.
    pub fn resolved(&mut self, addrs: io::Result<Vec<SocketAddr>>, ctx: &mut Ctx<'_>) -> Drive {
        if self.phase != Phase::Resolving {
            return Drive::Idle;
        }
        match addrs {
            Ok(a) if !a.is_empty() => {
                if let Some(hs) = self.client_hs.as_mut() {
                    hs.addrs = a;
                    hs.addrs.reverse(); // pop() takes them in the resolver's order
                }
                self.connect_next(ctx, None)
            }
            Ok(_) => self.fail_handshake(Error::Io(io::Error::new(io::ErrorKind::NotFound, "no address for host"))),
            Err(e) => self.fail_handshake(Error::Io(e)),
        }
    }

    fn connect_next(&mut self, ctx: &mut Ctx<'_>, last_err: Option<io::Error>) -> Drive {
        if let Some(mut old) = self.socket.take() {
            let _ = ctx.registry.deregister(&mut old);
        }
        let Some(addr) = self.client_hs.as_mut().and_then(|h| h.addrs.pop()) else {
            let e = last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
            return self.fail_handshake(Error::Io(e));
        };
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = ctx.registry.register(&mut s, self.token(), Interest::READABLE | Interest::WRITABLE) {
                    return self.fail_handshake(Error::Io(e));
                }
                self.write_interest = true;
                self.socket = Some(s);
                self.peer = Some(addr);
                self.phase = Phase::Connecting;
                Drive::Idle
            }
            Err(e) => self.connect_next(ctx, Some(e)),
        }
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

    fn connect_done(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let sock = self.socket.as_mut().expect("connecting socket");
        let err = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Drive::Idle, // spurious
                Err(e) => Some(e),
            },
        };
        if let Some(e) = err {
            return self.connect_next(ctx, Some(e));
        }
        if ctx.settings.tcp_nodelay {
            let _ = sock.set_nodelay(true);
        }
        let hs = self.client_hs.as_ref().expect("client handshake");
        let mut req = Vec::with_capacity(256);
        hs.request.write(&hs.url, &hs.key, &mut req);
        self.wq.push_slice(&req);
        ctx.shared.slots.add(self.id.slot as usize, req.len());
        self.phase = Phase::ClientHandshake;
        self.want_read = true;
        self.budget = ctx.settings.read_budget;
        if let Err(e) = self.flush(ctx) {
            return self.io_error(e);
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
        // Read into the loop's buffer (large, shared by all connections); a leftover partial
        // frame from last time moves into it first.
        debug_assert_eq!(ctx.loop_rbuf.filled(), 0);
        if self.rbuf.filled() > 0 {
            ctx.loop_rbuf.extend_from_slice(self.rbuf.data());
        }
        self.rbuf.clear();
        std::mem::swap(&mut self.rbuf, ctx.loop_rbuf);
        let r = self.drive_inner(ctx);
        self.return_buffer(ctx);
        r
    }

    /// Give the loop's buffer back, keeping a copy of what is left undecoded: at most a partial
    /// frame header, control frame or handshake head (payload is handed out as it arrives), so a
    /// few bytes, bounded by the handshake limits.
    fn return_buffer(&mut self, ctx: &mut Ctx<'_>) {
        std::mem::swap(&mut self.rbuf, ctx.loop_rbuf);
        let left = ctx.loop_rbuf.filled();
        if left > 0 {
            self.rbuf.extend_from_slice(ctx.loop_rbuf.data());
            ctx.loop_rbuf.consume(left);
        }
    }

    fn drive_inner(&mut self, ctx: &mut Ctx<'_>) -> Drive {
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
            if self.budget == 0 {
                return Drive::More;
            }
            let Some(sock) = self.socket.as_ref() else { return Drive::Idle };
            let max = ctx.settings.read_buffer_size.min(self.budget);
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

    fn fail_handshake(&mut self, e: Error) -> Drive {
        log::debug!("{} {:?}: handshake failed: {e}", self.id, self.peer);
        self.call_error(e);
        self.phase = Phase::Dead;
        Drive::Dead
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

    fn server_handshake(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let parser = self.server_hs.as_mut().expect("server handshake state");
        let parsed = parser.parse(self.rbuf.data());
        let (request, head_len) = match parsed {
            Ok(None) => return Step::Continue,
            Ok(Some(r)) => r,
            Err(e) => {
                log::debug!("{} {:?}: rejected handshake: {e}", self.id, self.peer);
                let rejection = Rejection::from_error(&e);
                self.call_error(Error::Handshake(e));
                return self.reject(ctx, &rejection);
            }
        };
        self.rbuf.consume(head_len);
        self.server_hs = None;
        let catch = ctx.settings.catch_panics;
        let decision = match catch_unwind(AssertUnwindSafe(|| self.handler.on_request(&request))) {
            Ok(d) => d,
            Err(_) if catch => Err(Rejection::new(500)),
            Err(p) => std::panic::resume_unwind(p),
        };
        match decision {
            Ok(response) => {
                let mut head = Vec::with_capacity(160);
                response.write(request.key(), &mut head);
                self.wq.push_slice(&head);
                ctx.shared.slots.add(self.id.slot as usize, head.len());
                self.schedule_flush();
                self.open(ctx)
            }
            Err(rejection) => {
                self.call_error(Error::Handshake(HandshakeError::RejectedByHandler(rejection.status())));
                self.reject(ctx, &rejection)
            }
        }
    }

    fn reject(&mut self, ctx: &mut Ctx<'_>, rejection: &Rejection) -> Step {
        let mut out = Vec::with_capacity(256);
        rejection.write(&mut out);
        self.wq.push_slice(&out);
        ctx.shared.slots.add(self.id.slot as usize, out.len());
        self.server_hs = None;
        self.enter_draining(ctx);
        Step::Continue
    }

    fn client_handshake(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let hs = self.client_hs.as_mut().expect("client handshake state");
        let (response, head_len) = match hs.parser.parse(self.rbuf.data()) {
            Ok(None) => return Step::Continue,
            Ok(Some(r)) => r,
            Err(e) => {
                self.fail_handshake(Error::Handshake(e));
                return Step::Dead;
            }
        };
        if response.status() != 101 {
            hs.rejected = Some((response, head_len));
            self.phase = Phase::ClientRejected;
            if self.rejected_body_complete() {
                self.finish_rejected();
                return Step::Dead;
            }
            return Step::Continue;
        }
        if let Err(e) = response.validate(&hs.key, &hs.request) {
            self.fail_handshake(Error::Handshake(e));
            return Step::Dead;
        }
        self.rbuf.consume(head_len);
        let catch = ctx.settings.catch_panics;
        if let Err(e) = guard(catch, || self.handler.on_response(&response)) {
            self.fail_handshake(e);
            return Step::Dead;
        }
        self.client_hs = None;
        self.open(ctx)
    }

    fn rejected_body_complete(&self) -> bool {
        let Some((resp, head)) = self.client_hs.as_ref().and_then(|h| h.rejected.as_ref()) else { return true };
        match resp.content_length() {
            Some(n) => self.rbuf.filled() >= head + n.min(64 * 1024),
            None => self.rbuf.filled() >= head + 64 * 1024,
        }
    }

    fn finish_rejected(&mut self) -> Drive {
        let Some((resp, head)) = self.client_hs.as_mut().and_then(|h| h.rejected.take()) else {
            self.phase = Phase::Dead;
            return Drive::Dead;
        };
        let data = self.rbuf.data();
        let end = match resp.content_length() {
            Some(n) => (head + n).min(data.len()),
            None => data.len().min(head + 64 * 1024),
        };
        let body = data[head.min(end)..end].to_vec();
        let headers =
            resp.headers().iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())).collect();
        self.fail_handshake(Error::Handshake(HandshakeError::Rejected { status: resp.status(), headers, body }))
    }

    fn open(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.phase = Phase::Open;
        self.opened = true;
        self.last_rx = ctx.now;
        ctx.shared.slots.set(self.id, SlotState::Open);
        self.level = self.handler.level();
        if self.level == Level::Stream {
            self.decoder.config_mut().max_message_size = None;
        }
        if ctx.settings.keepalive_interval.is_some() || ctx.settings.idle_timeout.is_some() {
            let first = [ctx.settings.keepalive_interval, ctx.settings.idle_timeout].into_iter().flatten().min();
            if let Some(d) = first {
                ctx.timers.schedule(ctx.now + d, self.id, TimerKind::KeepAlive);
            }
        }
        let catch = ctx.settings.catch_panics;
        let r = guard(catch, || self.handler.on_open());
        self.after_callback(ctx, r)
    }

    /// Decode frames and dispatch their events.
    fn frames(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let mut data = self.rbuf.take_data();
        let step = self.frames_from(ctx, &mut data);
        self.rbuf.restore(data);
        step
    }

    fn frames_from(&mut self, ctx: &mut Ctx<'_>, data: &mut BytesMut) -> Step {
        let catch = ctx.settings.catch_panics;
        loop {
            if self.level == Level::Message {
                match self.decoder.try_whole_message(data) {
                    Ok(Some((kind, payload))) => {
                        let msg = match kind {
                            MessageKind::Text => Message::Text(crate::Utf8Bytes::from_validated(payload)),
                            MessageKind::Binary => Message::Binary(payload),
                        };
                        let r = guard(catch, || self.handler.on_message(msg));
                        match self.after_callback(ctx, r) {
                            Step::Continue => continue,
                            other => return other,
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::debug!("{} {:?}: protocol error: {e}", self.id, self.peer);
                        self.fail(ctx, Error::Protocol(e));
                        return Step::Continue;
                    }
                }
            }
            let ev = self.decoder.next_event(data);
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => return Step::Continue,
                Err(e) => {
                    log::debug!("{} {:?}: protocol error: {e}", self.id, self.peer);
                    self.fail(ctx, Error::Protocol(e));
                    return Step::Continue;
                }
            };
            let r = match (ev, self.level) {
                (Event::MessageBegin { kind, .. }, level) => {
                    self.msg_kind = Some(kind);
                    if level == Level::Message {
                        continue;
                    }
                    guard(catch, || self.handler.on_message_begin(kind))
                }
                (Event::FrameBegin { len, .. }, Level::Stream) => guard(catch, || self.handler.on_frame_begin(len)),
                (Event::FrameBegin { .. }, _) => continue,
                (Event::FrameData(chunk), Level::Stream) => guard(catch, || self.handler.on_frame_data(chunk)),
                (Event::FrameData(chunk), _) => {
                    self.acc.push(chunk);
                    continue;
                }
                (Event::FrameEnd { .. }, Level::Stream) => guard(catch, || self.handler.on_frame_end()),
                (Event::FrameEnd { .. }, Level::Frame) => {
                    let payload = self.acc.take();
                    guard(catch, || self.handler.on_message_frame(payload))
                }
                (Event::FrameEnd { .. }, Level::Message) => continue,
                (Event::MessageEnd, Level::Message) => {
                    let kind = self.msg_kind.take().unwrap_or(MessageKind::Binary);
                    let msg = self.acc.take_message(kind);
                    guard(catch, || self.handler.on_message(msg))
                }
                (Event::MessageEnd, _) => {
                    self.msg_kind = None;
                    guard(catch, || self.handler.on_message_end())
                }
                (Event::Ping(payload), _) => {
                    // A peer that pings without reading must not grow our queue: past the send
                    // queue limit, pings go unanswered (RFC 6455 §5.5.3 lets an endpoint answer
                    // only the most recent of several pings).
                    let room = ctx.shared.slots.buffered(self.id) + payload.len() + 6 <= ctx.settings.max_send_queue;
                    if ctx.settings.auto_pong && !self.close_sent && room {
                        self.queue_control(ctx, OpCode::Pong, &payload);
                    }
                    guard(catch, || self.handler.on_ping(payload))
                }
                (Event::Pong(payload), _) => guard(catch, || self.handler.on_pong(payload)),
                (Event::Close(frame), _) => {
                    self.peer_closed(ctx, frame);
                    return Step::Continue;
                }
            };
            match self.after_callback(ctx, r) {
                Step::Continue => {}
                other => return other,
            }
        }
    }

    /// After a handler callback: fail on error, yield if it queued commands.
    fn after_callback(&mut self, ctx: &mut Ctx<'_>, r: Result<()>) -> Step {
        if let Err(e) = r {
            if let Error::HandlerPanic(msg) = &e {
                log::error!("{} {:?}: handler panicked: {msg}", self.id, self.peer);
            }
            self.fail(ctx, e);
        }
        // Commands for this connection (an echo, a close) are applied here, in order; the loop
        // is asked to step in only for commands addressed elsewhere.
        while let Some(cmd) = crate::sender::pop_local_for(self.id) {
            if self.apply(cmd.op, cmd.accounted, ctx) == Drive::Dead {
                self.phase = Phase::Dead;
                return Step::Dead;
            }
        }
        if crate::sender::has_local() {
            Step::Yield
        } else {
            Step::Continue
        }
    }

    /// The peer's close frame arrived.
    fn peer_closed(&mut self, ctx: &mut Ctx<'_>, frame: Option<CloseFrame>) {
        let (code, reason) = match &frame {
            Some(f) => (f.code, f.reason.to_string()),
            None => (CloseCode::NO_STATUS, String::new()),
        };
        log::debug!("{} {:?}: peer closed with {code} {reason:?}", self.id, self.peer);
        if !self.close_sent {
            // Echo the peer's code (RFC 6455 §5.5.1); an empty close is answered with an empty one.
            let mut payload = BytesMut::new();
            if frame.is_some() {
                CloseFrame::write_payload(code, "", &mut payload);
            }
            self.send_close_payload(ctx, payload.freeze());
        }
        self.acc.clear();
        self.report_close(ctx, code, &reason);
        self.enter_draining(ctx);
    }

    /// Fail the connection (RFC 6455 §7.1.7): close frame with the error's code if still possible,
    /// `on_error`, `on_close`, then drain.
    pub fn fail(&mut self, ctx: &mut Ctx<'_>, e: Error) {
        match self.phase {
            Phase::Open | Phase::Closing => {
                let code = e.close_code();
                let code = if code.is_sendable() { code } else { CloseCode::INTERNAL_ERROR };
                let reason = match &e {
                    Error::Protocol(p) => p.to_string(),
                    _ => String::new(),
                };
                if !self.close_sent {
                    let mut payload = BytesMut::new();
                    CloseFrame::write_payload(code, &reason, &mut payload);
                    self.send_close_payload(ctx, payload.freeze());
                }
                self.call_error(e);
                self.acc.clear();
                self.report_close(ctx, code, truncate_reason(&reason));
                self.enter_draining(ctx);
            }
            Phase::Draining | Phase::Dead => {}
            _ => {
                self.call_error(e);
                self.phase = Phase::Dead;
            }
        }
    }

    fn report_close(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        if self.opened && !self.close_reported {
            self.close_reported = true;
            ctx.shared.slots.set(self.id, SlotState::Closing);
            let _ = guard(ctx.settings.catch_panics, || {
                self.handler.on_close(code, reason);
                Ok(())
            });
        }
    }

    /// The closing handshake is over: flush, half-close (server), wait for the TCP close.
    fn enter_draining(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Dead {
            return;
        }
        self.phase = Phase::Draining;
        ctx.shared.slots.set(self.id, SlotState::Closing);
        if self.role == Role::Server {
            self.shutdown_after_flush = true;
        }
        self.schedule_flush();
        self.arm_close_timer(ctx);
    }

    fn arm_close_timer(&mut self, ctx: &mut Ctx<'_>) {
        if !self.close_timer {
            self.close_timer = true;
            ctx.timers.schedule(ctx.now + ctx.settings.close_timeout, self.id, TimerKind::CloseHandshake);
        }
    }

    fn send_close_payload(&mut self, ctx: &mut Ctx<'_>, payload: Bytes) {
        self.finish_streamed_frame(ctx);
        self.queue_control(ctx, OpCode::Close, &payload);
        self.close_sent = true;
        self.arm_close_timer(ctx);
    }

    fn mask_key(&self, ctx: &mut Ctx<'_>) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(ctx.mask.next_key()),
            Role::Server => None,
        }
    }

    /// Queue a control frame the loop sends on its own (pong, close), accounting its bytes.
    fn queue_control(&mut self, ctx: &mut Ctx<'_>, op: OpCode, payload: &Bytes) {
        let key = self.mask_key(ctx);
        let n = self.wq.push_frame(op, true, 0, payload, key);
        ctx.shared.slots.add(self.id.slot as usize, n);
        self.schedule_flush();
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
            if self.shutdown_after_flush && !self.shut_down {
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
            ctx.timers.schedule(at.max(now + std::time::Duration::from_millis(1)), self.id, TimerKind::KeepAlive);
        }
        Drive::Idle
    }

    /// Start the closing handshake.
    fn close(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        match self.phase {
            Phase::Open => {
                let mut payload = BytesMut::new();
                CloseFrame::write_payload(code, reason, &mut payload);
                self.send_close_payload(ctx, payload.freeze());
                ctx.shared.slots.set(self.id, SlotState::Closing);
                if self.phase != Phase::Dead {
                    self.phase = Phase::Closing;
                }
            }
            Phase::Closing | Phase::Draining | Phase::Dead => {}
            _ => self.phase = Phase::Dead,
        }
    }

    /// Apply a command from a [`Sender`](crate::Sender). `accounted` bytes were reserved for it.
    pub fn apply(&mut self, op: Op, accounted: usize, ctx: &mut Ctx<'_>) -> Drive {
        let slot = self.id.slot as usize;
        let sending = self.phase == Phase::Open && !self.close_sent;
        match op {
            Op::Send(msg) if sending && self.out.kind.is_some() => self.out.deferred.push_back((msg, accounted)),
            Op::Send(msg) if sending => {
                let n = self.queue_message(ctx, &msg);
                self.settle(ctx, accounted, n);
            }
            Op::SendPrepared(p) if sending => {
                let n = self.queue_prepared(ctx, &p);
                self.settle(ctx, accounted, n);
            }
            Op::Ping(p) if sending => {
                let key = self.mask_key(ctx);
                let n = self.wq.push_frame(OpCode::Ping, true, 0, &p, key);
                self.settle(ctx, accounted, n);
            }
            Op::Pong(p) if sending => {
                let key = self.mask_key(ctx);
                let n = self.wq.push_frame(OpCode::Pong, true, 0, &p, key);
                self.settle(ctx, accounted, n);
            }
            Op::BeginMessage(kind) if sending => {
                if self.out.kind.is_some() || self.out.frame_left > 0 {
                    return self.misuse(ctx, "begin_message while a message is in progress");
                }
                self.out.kind = Some(kind);
                self.out.first_sent = false;
            }
            Op::Frame { payload, fin } if sending => {
                if self.out.kind.is_none() || self.out.frame_left > 0 {
                    ctx.shared.slots.release(slot, accounted);
                    return self
                        .misuse(ctx, "send_frame/end_message without begin_message, or inside a streamed frame");
                }
                let n = self.queue_api_frame(ctx, &payload, fin);
                self.settle(ctx, accounted, n);
                if fin {
                    self.send_deferred(ctx);
                }
            }
            Op::FrameHeader { len } if sending => {
                if self.out.kind.is_none() || self.out.frame_left > 0 {
                    ctx.shared.slots.release(slot, accounted);
                    return self.misuse(ctx, "begin_frame without begin_message, or before the previous frame's data");
                }
                let n = self.queue_stream_header(ctx, len);
                self.settle(ctx, accounted, n);
            }
            Op::FrameData(data) if sending => {
                if data.len() as u64 > self.out.frame_left {
                    ctx.shared.slots.release(slot, accounted);
                    return self.misuse(ctx, "send_frame_data beyond the length given to begin_frame");
                }
                let n = self.queue_stream_data(&data);
                self.settle(ctx, accounted, n);
            }
            Op::Close(code, reason) => {
                ctx.shared.slots.release(slot, accounted);
                self.close(ctx, code, &reason);
                if self.phase == Phase::Dead {
                    return Drive::Dead;
                }
            }
            Op::Timeout { delay, token, handle } => ctx.timers.schedule_user(ctx.now, delay, self.id, token, handle),
            Op::Cancel(handle) => ctx.timers.cancel_user(handle),
            Op::Resolved(addrs) => return self.resolved(addrs, ctx),
            _ => ctx.shared.slots.release(slot, accounted),
        }
        Drive::Idle
    }

    /// Account the difference between what a sender reserved and what was queued.
    fn settle(&mut self, ctx: &mut Ctx<'_>, reserved: usize, queued: usize) {
        let slot = self.id.slot as usize;
        if queued > reserved {
            ctx.shared.slots.add(slot, queued - reserved);
        } else {
            ctx.shared.slots.release(slot, reserved - queued);
        }
        self.schedule_flush();
        self.flush_if_large(ctx);
    }

    /// Queue a whole message (split into frames with `auto_fragment_size`). Returns bytes queued.
    fn queue_message(&mut self, ctx: &mut Ctx<'_>, msg: &Message) -> usize {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        let payload = match msg {
            Message::Text(t) => t.as_bytes().clone(),
            Message::Binary(b) => b.clone(),
        };
        match ctx.settings.auto_fragment_size {
            Some(size) if size > 0 && payload.len() > size => {
                let mut n = 0;
                let mut off = 0;
                while off < payload.len() {
                    let end = (off + size).min(payload.len());
                    let opcode = if off == 0 { op } else { OpCode::Continuation };
                    let key = self.mask_key(ctx);
                    n += self.wq.push_frame(opcode, end == payload.len(), 0, &payload.slice(off..end), key);
                    off = end;
                }
                n
            }
            _ => {
                let key = self.mask_key(ctx);
                self.wq.push_frame(op, true, 0, &payload, key)
            }
        }
    }

    /// Queue a prepared message: by reference on a server, masked per send on a client.
    pub fn queue_prepared(&mut self, ctx: &mut Ctx<'_>, p: &PreparedMessage) -> usize {
        match self.role {
            Role::Server => {
                let frame = p.server_frame().clone();
                let n = frame.len();
                self.wq.push_bytes(frame);
                n
            }
            Role::Client => self.queue_message_single(ctx, p.message()),
        }
    }

    fn queue_message_single(&mut self, ctx: &mut Ctx<'_>, msg: &Message) -> usize {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        let payload = msg.clone().into_bytes();
        let key = self.mask_key(ctx);
        self.wq.push_frame(op, true, 0, &payload, key)
    }

    /// Broadcast: queue a prepared message if the connection is open; returns bytes queued.
    pub fn broadcast(&mut self, ctx: &mut Ctx<'_>, p: &PreparedMessage) -> usize {
        if self.phase != Phase::Open || self.close_sent {
            return 0;
        }
        let queued = ctx.shared.slots.buffered(self.id);
        if queued + p.frame_len(self.role == Role::Client) > ctx.settings.max_send_queue {
            // A broadcast has no sender to report `SendQueueFull` to, and silently skipping the
            // message would lose it while the connection stays open: a client this far behind
            // is closed instead (1008), and the rest of the loop goes on.
            log::info!("{} {:?}: send queue full ({queued} bytes) on broadcast, closing", self.id, self.peer);
            self.close(ctx, CloseCode::POLICY_VIOLATION, "send queue full");
            return 0;
        }
        let n = self.queue_prepared(ctx, p);
        ctx.shared.slots.add(self.id.slot as usize, n);
        self.schedule_flush();
        self.flush_if_large(ctx);
        n
    }

    fn next_opcode(&mut self) -> OpCode {
        let op = match self.out.kind {
            _ if self.out.first_sent => OpCode::Continuation,
            Some(MessageKind::Text) => OpCode::Text,
            _ => OpCode::Binary,
        };
        self.out.first_sent = true;
        op
    }

    fn queue_api_frame(&mut self, ctx: &mut Ctx<'_>, payload: &Bytes, fin: bool) -> usize {
        let opcode = self.next_opcode();
        let key = self.mask_key(ctx);
        let n = self.wq.push_frame(opcode, fin, 0, payload, key);
        if fin {
            self.out.kind = None;
            self.out.first_sent = false;
        }
        n
    }

    fn queue_stream_header(&mut self, ctx: &mut Ctx<'_>, len: u64) -> usize {
        let opcode = self.next_opcode();
        let mask = self.mask_key(ctx);
        let header = FrameHeader { fin: false, rsv: 0, opcode, mask, payload_len: len };
        self.out.frame_left = len;
        self.out.frame_mask = mask;
        self.out.frame_offset = 0;
        self.wq.push_header(&header)
    }

    fn queue_stream_data(&mut self, data: &Bytes) -> usize {
        let n = self.wq.push_payload(data, self.out.frame_mask, self.out.frame_offset);
        self.out.frame_offset += data.len() as u64;
        self.out.frame_left -= data.len() as u64;
        n
    }

    /// A frame whose header announced more payload than was sent must be completed before any
    /// other frame (the peer counts bytes): pad it with zeros. The message stays unfinished (no
    /// FIN), so the peer never delivers it. Padding is bounded; past the bound the connection is
    /// dropped without a close frame instead.
    fn finish_streamed_frame(&mut self, ctx: &mut Ctx<'_>) {
        let left = self.out.frame_left;
        if left == 0 {
            return;
        }
        if left > 1 << 20 {
            log::warn!("{} {:?}: {left} bytes of a streamed frame unsent; dropping the connection", self.id, self.peer);
            self.wq.clear();
            self.phase = Phase::Dead;
            return;
        }
        let pad = Bytes::from(vec![0u8; left as usize]);
        let n = self.queue_stream_data(&pad);
        ctx.shared.slots.add(self.id.slot as usize, n);
    }

    /// Send the whole messages that waited for a frame-API message to end.
    fn send_deferred(&mut self, ctx: &mut Ctx<'_>) {
        while let Some((msg, reserved)) = self.out.deferred.pop_front() {
            let n = self.queue_message(ctx, &msg);
            self.settle(ctx, reserved, n);
        }
    }

    /// Local misuse of the frame or streaming API: the bytes on the wire can no longer be
    /// framed correctly, so the connection fails with 1011.
    fn misuse(&mut self, ctx: &mut Ctx<'_>, what: &'static str) -> Drive {
        log::error!("{} {:?}: {what}", self.id, self.peer);
        self.fail(ctx, Error::InvalidUse(what));
        if self.phase == Phase::Dead {
            Drive::Dead
        } else {
            Drive::Idle
        }
    }

    /// Shut down gracefully: close with 1001 if open, drop if not yet open.
    pub fn going_away(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        match self.phase {
            Phase::Open => {
                self.close(ctx, CloseCode::GOING_AWAY, "server shutting down");
                Drive::Idle
            }
            Phase::Closing | Phase::Draining => Drive::Idle,
            _ => {
                self.phase = Phase::Dead;
                Drive::Dead
            }
        }
    }

    /// Final bookkeeping before removal: `on_close(1006)` if an open connection never reported
    /// its close (the loop is shutting down, say).
    pub fn finish(&mut self, ctx: &mut Ctx<'_>) {
        if self.opened && !self.close_reported {
            self.report_close(ctx, CloseCode::ABNORMAL, "");
        }
        let dropped = self.wq.clear();
        ctx.shared.slots.release(self.id.slot as usize, dropped);
        if let Some(mut s) = self.socket.take() {
            let _ = ctx.registry.deregister(&mut s);
        }
    }

    /// Bytes held in buffers (for memory accounting in tests).
    #[allow(dead_code)]
    pub fn buffered_capacity(&self) -> usize {
        self.rbuf.capacity() + self.wq.capacity()
    }

    /// The frame header length for a payload on this connection (masking adds 4 bytes).
    #[allow(dead_code)]
    pub fn header_len(&self, payload: u64) -> usize {
        header_len(payload, self.role == Role::Client)
    }
}

/// Result of one processing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Yield,
    Dead,
}
