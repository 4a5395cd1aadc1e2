//! The event loop: one thread, one mio `Poll`, every socket.
//!
//! Each turn: poll (with the nearest timer as timeout), accept on ready listeners, drive ready
//! connections, apply commands (local ones after every callback, cross-thread ones from the
//! channel), fire due timers, and flush every connection that has something queued: one vectored
//! write per connection per turn, however many messages were queued in it.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token as MioToken, Waker};
use slab::Slab;

use crate::connection::{Connection, Ctx, Drive};
use crate::error::{Error, Result};
use crate::handler::Factory;
use crate::protocol::handshake::client::{ClientRequest, WsUrl};
use crate::protocol::mask::MaskGen;
use crate::read_buffer::ReadBuffer;
use crate::runtime::command_queue::CommandQueue;
use crate::runtime::timers::Timers;
use crate::sender::{self, Command, ConnId, LoopShared, Op, Sender, SlotState, SlotTable, Target};
use crate::settings::Settings;

const WAKER: MioToken = MioToken(usize::MAX);
const LISTENER_BASE: usize = usize::MAX / 2;
/// After the process ran out of file descriptors, accepting is retried this often.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Command slots the cross-thread batch vector keeps between bursts.
const INBOX_KEEP: usize = 1024;

static NEXT_LOOP_ID: AtomicUsize = AtomicUsize::new(1);

/// The context lent to a connection: every loop field but the connection table, borrowed
/// field by field so the table itself stays free to index.
macro_rules! ctx {
    ($lp:ident) => {
        Ctx {
            settings: &$lp.settings,
            shared: &$lp.shared,
            timers: &mut $lp.timers,
            mask: &mut $lp.mask,
            registry: $lp.poll.registry(),
            loop_rbuf: &mut $lp.rbuf,
            buf_pool: &mut $lp.buf_pool,
            leftover_pool: &mut $lp.leftover_pool,
            now: $lp.now,
        }
    };
}

/// Counters of one loop, for monitoring and for leak tests ([`Sender::loop_stats`] reads them
/// while the loop runs; gauges are updated once per loop turn).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Connections currently in the loop's table.
    pub connections: usize,
    /// Connections accepted (servers) or opened (clients) since the loop started.
    pub accepted: u64,
    /// Connections removed since the loop started.
    pub closed: u64,
    /// Timers scheduled: connection timers still in force and live user timers.
    pub timers: usize,
    /// Times accepting was paused because of the connection or file-descriptor limit.
    pub accept_pauses: u64,
}

/// The loop's counters, shared with every `Sender` so they can be read while it runs.
#[derive(Debug, Default)]
pub(crate) struct LoopCounters {
    pub connections: AtomicUsize,
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub timers: AtomicUsize,
    pub accept_pauses: AtomicU64,
}

impl LoopCounters {
    pub fn snapshot(&self) -> LoopStats {
        LoopStats {
            connections: self.connections.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            timers: self.timers.load(Ordering::Relaxed),
            accept_pauses: self.accept_pauses.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct EventLoop<F: Factory> {
    poll: Poll,
    events: Events,
    settings: Settings,
    factory: F,
    conns: Slab<Connection<F::Handler>>,
    listeners: Vec<Option<TcpListener>>,
    shared: Arc<LoopShared>,
    /// The batch of cross-thread commands being applied (swapped with the queue's vector).
    inbox: Vec<Command>,
    timers: Timers,
    mask: MaskGen,
    rbuf: ReadBuffer,
    buf_pool: Vec<bytes::BytesMut>,
    /// Buffers for connections' large leftovers (partial frames), reused.
    leftover_pool: Vec<bytes::BytesMut>,
    cmds: Vec<Command>,
    /// Readiness events of the current turn (reused, so polling allocates nothing).
    batch: Vec<(usize, bool, bool, bool)>,
    ready: VecDeque<(usize, ConnId)>,
    flush: Vec<usize>,
    accept_paused: bool,
    accept_retry_at: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    now: Instant,
}

impl<F: Factory> std::fmt::Debug for EventLoop<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("connections", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl<F: Factory> Drop for EventLoop<F> {
    /// Senders on other threads now get [`Error::LoopGone`]; commands still queued are dropped.
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

/// Clears the thread's current-loop mark even if `run` unwinds.
struct LoopMark;

impl Drop for LoopMark {
    fn drop(&mut self) {
        sender::set_current_loop(0);
    }
}

impl<F: Factory> EventLoop<F> {
    pub fn new(factory: F, settings: Settings) -> Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(LoopShared {
            loop_id: NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed),
            queue: CommandQueue::new(settings.channel_capacity),
            waker,
            woken: AtomicBool::new(false),
            slots: SlotTable::new(settings.max_connections),
            next_timer: AtomicU64::new(1),
            max_send_queue: settings.max_send_queue,
            stats: LoopCounters::default(),
            pending_broadcast: AtomicUsize::new(0),
        });
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(1024),
            factory,
            conns: Slab::new(),
            listeners: Vec::new(),
            shared,
            inbox: Vec::new(),
            timers: Timers::default(),
            mask: MaskGen::new(),
            rbuf: ReadBuffer::new(),
            buf_pool: Vec::new(),
            leftover_pool: Vec::new(),
            cmds: Vec::new(),
            batch: Vec::with_capacity(1024),
            ready: VecDeque::new(),
            flush: Vec::new(),
            accept_paused: false,
            accept_retry_at: None,
            shutdown_deadline: None,
            now: Instant::now(),
            settings,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn loop_sender(&self) -> Sender {
        Sender::new(None, false, self.shared.clone())
    }

    pub fn stats(&self) -> LoopStats {
        self.shared.stats.snapshot()
    }

    /// Publish the gauges (connections, timers) once per turn.
    fn publish_gauges(&self) {
        self.shared.stats.connections.store(self.conns.len(), Ordering::Relaxed);
        self.shared.stats.timers.store(self.timers.len(), Ordering::Relaxed);
    }

    pub fn listen(&mut self, addr: SocketAddr) -> Result<SocketAddr> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        if self.settings.tcp_nodelay {
            // Inherited by accepted sockets on Linux (see `accept`).
            socket.set_tcp_nodelay(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(self.settings.listen_backlog.max(1))?;
        let mut l = TcpListener::from_std(socket.into());
        let token = MioToken(LISTENER_BASE + self.listeners.len());
        self.poll.registry().register(&mut l, token, Interest::READABLE)?;
        let local = l.local_addr()?;
        self.listeners.push(Some(l));
        Ok(local)
    }

    pub fn connect(&mut self, url: &str, request: ClientRequest) -> Result<Sender> {
        let url = WsUrl::parse(url)?;
        if self.conns.len() >= self.settings.max_connections {
            return Err(Error::TooManyConnections);
        }
        self.now = Instant::now();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let id = ConnId { slot: slot as u32, generation: self.shared.slots.next_generation(slot) };
        self.shared.slots.set(id, SlotState::Connecting);
        let out = Sender::new(Some(id), true, self.shared.clone());
        let handler = self.factory.client_connected(out.clone());
        let literal = url.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, url.port));
        let (host, port) = (url.host.clone(), url.port);
        let mut ctx = ctx!(self);
        let mut conn = Connection::client(id, url, request, handler, &mut ctx);
        match literal {
            Some(addr) => {
                conn.resolved(Ok(vec![addr]), &mut ctx);
            }
            None => {
                // Name resolution blocks: it runs on a short-lived thread and reports back
                // through the command channel, so the loop never waits for DNS.
                let shared = self.shared.clone();
                std::thread::Builder::new().name("wsloop-resolve".into()).spawn(move || {
                    let r = (host.as_str(), port).to_socket_addrs().map(|a| a.collect::<Vec<_>>());
                    let cmd = Command { target: Target::Conn(id), op: Op::Resolved(r), accounted: 0 };
                    if shared.queue.push_internal(cmd).is_ok() && !shared.woken.swap(true, Ordering::AcqRel) {
                        let _ = shared.waker.wake();
                    }
                })?;
            }
        }
        let dead = conn.phase == crate::connection::Phase::Dead;
        self.conns.insert(conn);
        self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if dead {
            self.remove(slot);
        }
        Ok(out)
    }

    /// Run until shut down, or until there is nothing left to serve.
    pub fn run(&mut self) -> Result<()> {
        sender::set_current_loop(self.shared.loop_id);
        let _mark = LoopMark;
        // Commands issued before `run` (from this thread) are in the local queue.
        self.apply_local();
        loop {
            self.now = Instant::now();
            if self.finished() {
                break;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            self.now = Instant::now();
            // Events are copied out so handlers can run while `self` is borrowed mutably.
            let mut batch = std::mem::take(&mut self.batch);
            batch.clear();
            for ev in self.events.iter() {
                batch.push((ev.token().0, ev.is_readable(), ev.is_writable(), ev.is_read_closed() || ev.is_error()));
            }
            for &(token, r, w, closed) in &batch {
                if token == WAKER.0 {
                    continue; // the channel is drained below, every turn
                } else if token >= LISTENER_BASE {
                    self.accept(token - LISTENER_BASE);
                } else if let Some(id) = self.conns.get(token).map(|c| c.id) {
                    self.drive(id, |c, ctx| c.ready(r, w, closed, ctx));
                }
            }
            self.batch = batch;
            self.drain_channel();
            for _ in 0..self.ready.len() {
                let Some((_, id)) = self.ready.pop_front() else { break };
                self.drive(id, |c, ctx| c.resume(ctx));
            }
            self.fire_timers();
            if self.accept_retry_at.is_some_and(|t| t <= self.now) {
                self.accept_retry_at = None;
                self.resume_accept();
            }
            self.flush_all();
            self.publish_gauges();
        }
        self.publish_gauges();
        self.factory.on_shutdown();
        Ok(())
    }

    fn finished(&mut self) -> bool {
        if let Some(deadline) = self.shutdown_deadline {
            if self.conns.is_empty() {
                return true;
            }
            if self.now >= deadline {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for k in keys {
                    self.remove(k);
                }
                return true;
            }
            return false;
        }
        self.conns.is_empty()
            && self.listeners.iter().all(Option::is_none)
            && self.shared.queue.is_empty()
            && !sender::has_local()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        // Commands queued from other threads need no look here: one queued after the loop last
        // emptied the queue has woken the poll.
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut t = self.timers.next_timeout(self.now);
        for extra in [self.accept_retry_at, self.shutdown_deadline].into_iter().flatten() {
            let d = extra.saturating_duration_since(self.now) + Duration::from_millis(1);
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        t
    }

    /// Call `f` on connection `id` with a context, then follow its request.
    fn drive(&mut self, id: ConnId, f: impl FnOnce(&mut Connection<F::Handler>, &mut Ctx<'_>) -> Drive) {
        let mut d = match self.with_conn(id, f) {
            Some(d) => d,
            None => return,
        };
        loop {
            match d {
                Drive::Yield => {
                    self.apply_local();
                    d = match self.with_conn(id, |c, ctx| c.drive(ctx)) {
                        Some(d) => d,
                        None => break,
                    };
                }
                Drive::More => {
                    self.ready.push_back((id.slot as usize, id));
                    break;
                }
                Drive::Idle => break,
                Drive::Dead => {
                    self.remove(id.slot as usize);
                    break;
                }
            }
        }
        // Callbacks that ended the connection (on_close, on_error) may have queued commands for
        // other connections.
        self.apply_local();
        self.flush_all();
    }

    fn with_conn<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Connection<F::Handler>, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let conn = self.conns.get_mut(id.slot as usize).filter(|c| c.id == id)?;
        let mut ctx = ctx!(self);
        let r = f(conn, &mut ctx);
        if conn.flush_scheduled {
            self.flush.push(id.slot as usize);
        }
        Some(r)
    }

    fn flush_all(&mut self) {
        while let Some(slot) = self.flush.pop() {
            let Some(id) = self.conns.get(slot).filter(|c| c.flush_scheduled).map(|c| c.id) else { continue };
            match self.with_conn(id, |c, ctx| c.flush_now(ctx)) {
                Some(Drive::Dead) => self.remove(slot),
                Some(Drive::Yield) => self.apply_local(),
                _ => {}
            }
        }
    }

    fn accept(&mut self, index: usize) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        loop {
            if self.conns.len() >= self.settings.max_connections {
                if !self.accept_paused {
                    log::warn!("connection limit ({}) reached: accepting paused", self.settings.max_connections);
                    self.shared.stats.accept_pauses.fetch_add(1, Ordering::Relaxed);
                }
                self.accept_paused = true;
                return;
            }
            let Some(listener) = self.listeners.get(index).and_then(Option::as_ref) else { return };
            match listener.accept() {
                Ok((mut socket, peer)) => {
                    // Linux copies TCP_NODELAY from the listener to accepted sockets (set in
                    // `listen`), which saves a setsockopt per connection; elsewhere set it here.
                    if self.settings.tcp_nodelay && !cfg!(target_os = "linux") {
                        let _ = socket.set_nodelay(true);
                    }
                    debug_assert!(
                        !self.settings.tcp_nodelay || socket.nodelay().unwrap_or(true),
                        "TCP_NODELAY inherited"
                    );
                    let entry = self.conns.vacant_entry();
                    let slot = entry.key();
                    let id = ConnId { slot: slot as u32, generation: self.shared.slots.next_generation(slot) };
                    if let Err(e) = self.poll.registry().register(&mut socket, MioToken(slot), Interest::READABLE) {
                        log::warn!("cannot register accepted socket from {peer}: {e}");
                        continue;
                    }
                    self.shared.slots.set(id, SlotState::Connecting);
                    let handler = self.factory.connection_made(Sender::new(Some(id), false, self.shared.clone()));
                    let mut ctx = ctx!(self);
                    let conn = Connection::accepted(id, socket, peer, handler, &mut ctx);
                    self.conns.insert(conn);
                    self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    log::trace!("{id} accepted from {peer}");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources. Busy-looping on accept
                    // would burn the core; pause and retry when a connection closes, or soon.
                    log::warn!("accept failed ({e}); accepting paused for {ACCEPT_RETRY:?}");
                    self.shared.stats.accept_pauses.fetch_add(1, Ordering::Relaxed);
                    self.accept_paused = true;
                    self.accept_retry_at = Some(self.now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn resume_accept(&mut self) {
        if !self.accept_paused {
            return;
        }
        self.accept_paused = false;
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.try_remove(slot) else { return };
        let mut ctx = ctx!(self);
        conn.finish(&mut ctx);
        self.shared.slots.set(conn.id, SlotState::Free);
        self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
        log::trace!("{} removed", conn.id);
        self.factory.connection_lost(conn.handler);
        self.apply_local();
        if self.accept_paused && self.accept_retry_at.is_none() {
            self.resume_accept();
        }
    }

    fn apply_local(&mut self) {
        loop {
            let mut cmds = std::mem::take(&mut self.cmds);
            sender::take_local(&mut cmds);
            if cmds.is_empty() {
                self.cmds = cmds;
                return;
            }
            for cmd in cmds.drain(..) {
                self.apply(cmd);
            }
            self.cmds = cmds;
        }
    }

    fn drain_channel(&mut self) {
        // Cleared before the batch is taken: a command queued after this wakes the next poll.
        self.shared.woken.store(false, Ordering::Release);
        let mut inbox = std::mem::take(&mut self.inbox);
        self.shared.queue.take_all(&mut inbox);
        let batch = inbox.len();
        for cmd in inbox.drain(..) {
            self.apply(cmd);
            self.apply_local();
        }
        // Once a burst is over (a small batch), give back what it grew the vector to: the
        // queue's capacity bounds a batch, not the memory an idle loop keeps. During a burst the
        // two vectors keep their size, so sustained cross-thread traffic allocates nothing.
        if batch <= INBOX_KEEP / 4 && inbox.capacity() > INBOX_KEEP {
            inbox.shrink_to(INBOX_KEEP);
        }
        self.inbox = inbox;
    }

    fn apply(&mut self, cmd: Command) {
        match cmd.target {
            Target::Conn(id) => {
                if let Op::Cancel(h) = cmd.op {
                    self.timers.cancel_user(h);
                    return;
                }
                let accounted = cmd.accounted;
                // A connection that is gone needs no accounting: its slot's count is reset when
                // the slot is reused.
                if let Some(Drive::Dead) = self.with_conn(id, |c, ctx| c.apply(cmd.op, accounted, ctx)) {
                    self.remove(id.slot as usize);
                }
            }
            Target::All => {
                if let Op::SendPrepared(p) = cmd.op {
                    let ids: Vec<ConnId> = self.conns.iter().map(|(_, c)| c.id).collect();
                    for id in ids {
                        self.with_conn(id, |c, ctx| c.broadcast(ctx, &p));
                    }
                }
                self.shared.pending_broadcast.fetch_sub(cmd.accounted, Ordering::Relaxed);
            }
            Target::Loop => match cmd.op {
                Op::Shutdown => self.begin_shutdown(),
                Op::Connect(url) => {
                    if let Err(e) = self.connect(&url, ClientRequest::default()) {
                        log::warn!("connect to {url} failed: {e}");
                    }
                }
                Op::Cancel(h) => self.timers.cancel_user(h),
                _ => {}
            },
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("shutting down: closing {} connection(s) with 1001", self.conns.len());
        self.shutdown_deadline = Some(self.now + self.settings.close_timeout + Duration::from_millis(100));
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        let ids: Vec<ConnId> = self.conns.iter().map(|(_, c)| c.id).collect();
        for id in ids {
            if self.with_conn(id, |c, ctx| c.going_away(ctx)) == Some(Drive::Dead) {
                self.remove(id.slot as usize);
            }
        }
        self.flush_all();
    }

    fn fire_timers(&mut self) {
        while let Some((id, kind)) = self.timers.pop_due(self.now) {
            self.drive(id, |c, ctx| c.timer(kind, ctx));
        }
    }
}
