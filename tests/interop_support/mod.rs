//! Shared helpers for the interoperability tests (`tests/interop_*.rs`): wsloop against WebSocket
//! implementations nobody here wrote, in both directions.
//!
//! - [`OurServer`]: a wsloop server on 127.0.0.1 port 0 (`WebSocket::spawn`) whose handlers echo,
//!   obey `cmd:` messages and report every event through a channel ([`EventLog`]).
//! - [`OurClients`]: wsloop client connections on one loop, driven from the test thread through
//!   their `Sender`s, reporting events the same way.
//! - [`TheirServer`]: the other library's echo server (a peer process, or a thread for
//!   tungstenite), reporting what it saw as text lines ([`LineLog`]).
//! - [`run_peer_client`]: run the other library's scripted client and collect its verdict.
//! - [`ensure_peers`]: install the Python/Node peers on demand (`scripts/install-peers.sh`).
//! - The scenarios of "our client -> their server" ([`our_client_echo`], ...), written once and
//!   run against every library, and the server-side assertions of "their client -> our server"
//!   ([`assert_echo_session`], ...).
//!
//! The messages and conventions are mirrored in `tests/peers/ws_peer.py` and `ws_peer.js`: the
//! peers' server prints `PORT n`, `OPEN <path> <protocol|->`, `PING <hex>`, `PONG <hex>` and
//! `CLOSED <code> <hex reason|->`; both servers (theirs and ours) echo every message, except
//! `cmd:ping <payload>` (send a ping) and `cmd:close <code> <reason>` (close); their server echoes
//! in 3 fragments on path `/frag`, ours reports frames (handler level `Frame`) on path `/frames`.
//!
//! Every wait is bounded; child processes are killed and loops shut down on drop, even when a
//! test panics.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wsloop::{
    Bytes, ClientRequest, CloseCode, Factory, Handler, Level, Message, MessageKind, Rejection, Request, Response,
    Sender, ServerResponse, Settings, Utf8Bytes, WebSocket,
};

/// The longest any single wait may take (an event, a line, a process start).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// The longest a peer's scripted client may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Multi-byte UTF-8 (2-, 3- and 4-byte characters). Same string in the peers.
pub const UTF8: &str = "héllo wörld — 日本語 — 🦀🎉 — ∑≠∞";
/// Binary message sizes of the echo script: around every frame length encoding, up to 16 MiB
/// (wsloop's default `max_frame_size`, which a frame may reach but not exceed).
pub const BINARY_SIZES: [usize; 10] = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 16 << 20];
/// Sent fragmented, split inside multi-byte characters (see [`frag_text_chunks`]).
pub const FRAG_TEXT: &str = "fragmented ✓ 日本語 🦀!";
/// The subprotocols every client offers, in order of preference.
pub const OFFERED: [&str; 3] = ["v3.wsloop", "v2.wsloop", "v1.wsloop"];
/// The subprotocols every server supports (deliberately not in the client's order).
pub const SUPPORTED: [&str; 2] = ["v1.wsloop", "v2.wsloop"];
/// What a server picks: the first offered protocol it supports.
pub const CHOSEN: &str = "v2.wsloop";
/// Connections of the concurrency scenarios.
pub const CONCURRENT: usize = 100;

// ------------------------------------------------------------------------------------------------
// Test data

/// `n` deterministic bytes: byte `k` is `(7k + n) mod 251` (the same in every peer).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|k| ((k * 7 + n) % 251) as u8).collect()
}

/// The echo script, in order: texts (short, empty, multi-byte UTF-8, 162 KB of it) and binaries of
/// every size in [`BINARY_SIZES`]. Mirrored by `script()` in the peers.
pub fn script_messages() -> Vec<Message> {
    let mut v = vec![Message::text("hello"), Message::text(""), Message::text(UTF8), Message::text(UTF8.repeat(3000))];
    v.extend(BINARY_SIZES.iter().map(|&n| Message::binary(pattern(n))));
    v
}

/// The messages of connection `i` in the concurrency scenarios.
pub fn concurrent_messages(i: usize) -> Vec<Message> {
    vec![
        Message::text(format!("conn {i} msg 0 ✓")),
        Message::binary(pattern(1000 + i)),
        Message::text(format!("conn {i} msg 2")),
    ]
}

/// [`FRAG_TEXT`] as 3 raw UTF-8 chunks: cut 1 byte into "✓" (3 bytes) and 2 bytes into "🦀" (4).
pub fn frag_text_chunks() -> Vec<Vec<u8>> {
    let b = FRAG_TEXT.as_bytes();
    let i = FRAG_TEXT.find('✓').unwrap() + 1;
    let j = FRAG_TEXT.find('🦀').unwrap() + 2;
    vec![b[..i].to_vec(), b[i..j].to_vec(), b[j..].to_vec()]
}

/// The fragmented binary message: 3 bytes, an empty fragment, 70,000 bytes.
pub fn frag_binary_chunks() -> Vec<Vec<u8>> {
    vec![vec![0, 1, 2], vec![], pattern(70_000)]
}

/// The large fragmented message: 1 MiB in 16 fragments of 64 KiB.
pub fn frag_big_chunks() -> Vec<Vec<u8>> {
    pattern(1 << 20).chunks(65536).map(<[u8]>::to_vec).collect()
}

/// Lowercase hex, `-` for empty (the peers' line format).
pub fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn describe(m: &Message) -> String {
    let b = m.as_bytes();
    let head: Vec<u8> = b.iter().take(16).copied().collect();
    format!("{:?} of {} bytes starting {}", m.kind(), b.len(), hex(&head))
}

/// Assert `got` is `want` byte for byte, of the same kind, with a useful message when not.
#[track_caller]
pub fn assert_same_message(got: &Message, want: &Message, what: &str) {
    assert_eq!(got.kind(), want.kind(), "{what}: kind differs (got {}, want {})", describe(got), describe(want));
    if got.as_bytes() != want.as_bytes() {
        let first = got.as_bytes().iter().zip(want.as_bytes()).position(|(a, b)| a != b);
        panic!(
            "{what}: payload differs: got {}, want {}; first differing byte at {:?}",
            describe(got),
            describe(want),
            first
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Events of our handlers

/// Something one of our handlers saw.
#[derive(Debug, Clone)]
pub enum Ev {
    /// Server: the upgrade request (path and offered subprotocols).
    Request { path: String, protocols: Vec<String> },
    /// Client: the server's response (status and selected subprotocol).
    Response { status: u16, protocol: Option<String> },
    /// The connection opened.
    Open,
    /// A whole data message; with the frame level, the payload size of every frame.
    Message { msg: Message, frames: Option<Vec<usize>> },
    /// A ping arrived.
    Ping(Bytes),
    /// A pong arrived.
    Pong(Bytes),
    /// `on_close`.
    Close { code: u16, reason: String },
    /// `on_error`, or a failure inside the test handler.
    Error(String),
}

/// Events of every connection of one loop, tagged with the connection's index (servers: in
/// accept order; clients: in the order they were opened).
pub struct EventLog {
    rx: Receiver<(usize, Ev)>,
    pending: VecDeque<(usize, Ev)>,
    /// Every event received so far, in order.
    pub all: Vec<(usize, Ev)>,
}

impl EventLog {
    fn new(rx: Receiver<(usize, Ev)>) -> Self {
        EventLog { rx, pending: VecDeque::new(), all: Vec::new() }
    }

    fn recv(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(e) => {
                self.all.push(e.clone());
                self.pending.push_back(e);
                true
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The next not yet consumed event of connection `conn`.
    #[track_caller]
    pub fn next(&mut self, conn: usize, what: &str) -> Ev {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.pending.iter().position(|(c, _)| *c == conn) {
                return self.pending.remove(i).unwrap().1;
            }
            if !self.recv(deadline) {
                panic!("conn {conn}: timed out after {TIMEOUT:?} waiting for {what}; events so far:\n{}", self.dump());
            }
        }
    }

    /// Wait until `done` holds for the events received so far (consumed or not).
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut(&[(usize, Ev)]) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(&self.all) {
            if !self.recv(deadline) {
                panic!("timed out after {TIMEOUT:?} waiting for {what}; events so far:\n{}", self.dump());
            }
        }
    }

    /// Every event of connection `conn` received so far.
    pub fn of(&self, conn: usize) -> Vec<Ev> {
        self.all.iter().filter(|(c, _)| *c == conn).map(|(_, e)| e.clone()).collect()
    }

    /// The events so far, one a line (long lists are cut).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (c, e) in self.all.iter().take(400) {
            s.push_str(&format!("  [{c}] {e:?}\n"));
        }
        if self.all.len() > 400 {
            s.push_str(&format!("  ... and {} more\n", self.all.len() - 400));
        }
        s
    }

    /// The index of the connection whose request had `path`, waiting for it.
    #[track_caller]
    pub fn conn_with_path(&mut self, path: &str) -> usize {
        let mut found = None;
        self.wait_until(&format!("a request for {path}"), |all| {
            found = all.iter().find_map(|(c, e)| match e {
                Ev::Request { path: p, .. } if p == path => Some(*c),
                _ => None,
            });
            found.is_some()
        });
        found.unwrap()
    }
}

fn is_close_of(e: &(usize, Ev), conn: usize) -> bool {
    e.0 == conn && matches!(e.1, Ev::Close { .. })
}

// ------------------------------------------------------------------------------------------------
// Our handler and factory

/// One handler for both roles: reports every callback; as a server it picks a subprotocol,
/// echoes, and obeys `cmd:ping` / `cmd:close`.
struct Probe {
    conn: usize,
    out: Sender,
    tx: mpsc::Sender<(usize, Ev)>,
    server: bool,
    level: Level,
    kind: Option<MessageKind>,
    frames: Vec<Bytes>,
}

impl Probe {
    fn emit(&self, ev: Ev) {
        let _ = self.tx.send((self.conn, ev));
    }

    fn message(&mut self, msg: Message, frames: Option<Vec<usize>>) -> wsloop::Result<()> {
        self.emit(Ev::Message { msg: msg.clone(), frames });
        if !self.server {
            return Ok(());
        }
        if let Some(cmd) = msg.as_text().and_then(|t| t.strip_prefix("cmd:")) {
            if let Some(payload) = cmd.strip_prefix("ping ") {
                return self.out.ping(Bytes::copy_from_slice(payload.as_bytes()));
            }
            if let Some(rest) = cmd.strip_prefix("close ") {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                return self.out.close(CloseCode(code.parse().unwrap_or(1000)), reason);
            }
        }
        self.out.send(msg)
    }
}

impl Handler for Probe {
    fn on_request(&mut self, request: &Request) -> Result<Response, Rejection> {
        let path = request.path().to_string();
        if path == "/frames" {
            self.level = Level::Frame;
        }
        self.emit(Ev::Request { path, protocols: request.protocols().to_vec() });
        let chosen = request.protocols().iter().find(|p| SUPPORTED.contains(&p.as_str()));
        Ok(match chosen {
            Some(p) => Response::accept().with_protocol(p.clone()),
            None => Response::accept(),
        })
    }

    fn on_response(&mut self, response: &ServerResponse) -> wsloop::Result<()> {
        self.emit(Ev::Response { status: response.status(), protocol: response.protocol().map(str::to_string) });
        Ok(())
    }

    fn on_open(&mut self) -> wsloop::Result<()> {
        self.emit(Ev::Open);
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        self.message(msg, None)
    }

    fn on_close(&mut self, code: CloseCode, reason: &str) {
        self.emit(Ev::Close { code: code.0, reason: reason.to_string() });
    }

    fn on_error(&mut self, err: wsloop::Error) {
        self.emit(Ev::Error(err.to_string()));
    }

    fn on_ping(&mut self, payload: Bytes) -> wsloop::Result<()> {
        self.emit(Ev::Ping(payload));
        Ok(())
    }

    fn on_pong(&mut self, payload: Bytes) -> wsloop::Result<()> {
        self.emit(Ev::Pong(payload));
        Ok(())
    }

    fn level(&self) -> Level {
        self.level
    }

    fn on_message_begin(&mut self, kind: MessageKind) -> wsloop::Result<()> {
        if self.kind.is_some() {
            self.emit(Ev::Error("on_message_begin while a message was in progress".into()));
        }
        self.kind = Some(kind);
        self.frames.clear();
        Ok(())
    }

    fn on_message_frame(&mut self, payload: Bytes) -> wsloop::Result<()> {
        if self.kind.is_none() {
            self.emit(Ev::Error("on_message_frame outside a message".into()));
        }
        self.frames.push(payload);
        Ok(())
    }

    fn on_message_end(&mut self) -> wsloop::Result<()> {
        let Some(kind) = self.kind.take() else {
            self.emit(Ev::Error("on_message_end outside a message".into()));
            return Ok(());
        };
        let sizes = self.frames.iter().map(Bytes::len).collect();
        let joined = Bytes::from(self.frames.concat());
        self.frames.clear();
        let msg = match kind {
            MessageKind::Binary => Message::binary(joined),
            MessageKind::Text => match Utf8Bytes::try_from(joined) {
                Ok(t) => Message::text(t),
                Err(e) => {
                    self.emit(Ev::Error(format!("frame-level text message is not UTF-8: {e}")));
                    return Ok(());
                }
            },
        };
        self.message(msg, Some(sizes))
    }
}

struct ProbeFactory {
    tx: mpsc::Sender<(usize, Ev)>,
    next: Arc<AtomicUsize>,
    client_levels: Vec<Level>,
}

impl ProbeFactory {
    fn probe(&mut self, out: Sender, server: bool) -> Probe {
        let conn = self.next.fetch_add(1, Ordering::SeqCst);
        let level = if server { Level::Message } else { self.client_levels.get(conn).copied().unwrap_or_default() };
        Probe { conn, out, tx: self.tx.clone(), server, level, kind: None, frames: Vec::new() }
    }
}

impl Factory for ProbeFactory {
    type Handler = Probe;

    fn connection_made(&mut self, out: Sender) -> Probe {
        self.probe(out, true)
    }

    fn client_connected(&mut self, out: Sender) -> Probe {
        self.probe(out, false)
    }
}

/// The settings of our loops: defaults, minus keep-alive pings (they would add events).
pub fn settings() -> Settings {
    Settings { keepalive_interval: None, ..Settings::default() }
}

/// Shut a loop down and wait (bounded) for its thread; `Ok` if `run()` returned `Ok`.
fn stop_loop(stop: &Sender, handle: &mut Option<JoinHandle<wsloop::Result<()>>>) -> Result<(), String> {
    let Some(h) = handle.take() else { return Ok(()) };
    let _ = stop.shutdown();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.is_finished() {
        if Instant::now() > deadline {
            return Err("the wsloop thread did not finish within 10 s of shutdown()".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match h.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("run() returned an error: {e}")),
        Err(_) => Err("the wsloop thread panicked".into()),
    }
}

// ------------------------------------------------------------------------------------------------
// Our server

/// A wsloop echo server on 127.0.0.1 (port 0), running on its own thread.
pub struct OurServer {
    pub addr: SocketAddr,
    pub events: EventLog,
    stop: Sender,
    handle: Option<JoinHandle<wsloop::Result<()>>>,
}

impl OurServer {
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel();
        let factory = ProbeFactory { tx, next: Arc::new(AtomicUsize::new(0)), client_levels: Vec::new() };
        let mut ws = WebSocket::with_settings(factory, settings()).expect("wsloop loop");
        let addr = ws.listen("127.0.0.1:0").expect("listen on 127.0.0.1:0");
        let stop = ws.sender();
        let handle = Some(ws.spawn().expect("spawn the wsloop thread"));
        OurServer { addr, events: EventLog::new(rx), stop, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Shut the server down; it must stop cleanly.
    pub fn stop(mut self) {
        if let Err(e) = stop_loop(&self.stop, &mut self.handle) {
            panic!("our server: {e}");
        }
    }
}

impl Drop for OurServer {
    fn drop(&mut self) {
        let _ = stop_loop(&self.stop, &mut self.handle);
    }
}

// ------------------------------------------------------------------------------------------------
// Our clients

/// One client connection to open.
pub struct ClientSpec {
    pub url: String,
    pub protocols: Vec<String>,
    pub level: Level,
}

impl ClientSpec {
    pub fn new(url: String) -> Self {
        ClientSpec { url, protocols: Vec::new(), level: Level::Message }
    }

    pub fn offering(mut self, protocols: &[&str]) -> Self {
        self.protocols = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }
}

/// wsloop client connections on one loop (its own thread), driven through their `Sender`s.
pub struct OurClients {
    pub out: Vec<Sender>,
    pub events: EventLog,
    stop: Sender,
    handle: Option<JoinHandle<wsloop::Result<()>>>,
}

impl OurClients {
    pub fn start(specs: Vec<ClientSpec>) -> Self {
        let (tx, rx) = mpsc::channel();
        let client_levels = specs.iter().map(|s| s.level).collect();
        let factory = ProbeFactory { tx, next: Arc::new(AtomicUsize::new(0)), client_levels };
        let mut ws = WebSocket::with_settings(factory, settings()).expect("wsloop loop");
        let out = specs
            .into_iter()
            .map(|s| {
                let req = ClientRequest { protocols: s.protocols, ..ClientRequest::default() };
                ws.connect_with(&s.url, req).unwrap_or_else(|e| panic!("connect_with({}): {e}", s.url))
            })
            .collect();
        let stop = ws.sender();
        let handle = Some(ws.spawn().expect("spawn the wsloop thread"));
        OurClients { out, events: EventLog::new(rx), stop, handle }
    }

    pub fn one(spec: ClientSpec) -> Self {
        Self::start(vec![spec])
    }

    /// Wait for connection `conn`'s `on_response` (status 101) and `on_open`; the selected
    /// subprotocol.
    #[track_caller]
    pub fn expect_open(&mut self, conn: usize) -> Option<String> {
        let protocol = match self.events.next(conn, "on_response") {
            Ev::Response { status: 101, protocol } => protocol,
            other => panic!("conn {conn}: expected on_response with status 101, got {other:?}"),
        };
        match self.events.next(conn, "on_open") {
            Ev::Open => protocol,
            other => panic!("conn {conn}: expected on_open, got {other:?}"),
        }
    }

    /// The next event of `conn`, which must be a data message.
    #[track_caller]
    pub fn expect_message(&mut self, conn: usize) -> (Message, Option<Vec<usize>>) {
        match self.events.next(conn, "a message") {
            Ev::Message { msg, frames } => (msg, frames),
            other => panic!("conn {conn}: expected a message, got {other:?}"),
        }
    }

    /// Send `msg` on `conn` and expect it back byte-exact, as the next event.
    #[track_caller]
    pub fn roundtrip(&mut self, conn: usize, msg: &Message, what: &str) {
        self.out[conn].send(msg.clone()).unwrap_or_else(|e| panic!("{what}: send {}: {e}", describe(msg)));
        let (got, _) = self.expect_message(conn);
        assert_same_message(&got, msg, what);
    }

    /// The next event of `conn`, which must be `on_close`: its code and reason.
    #[track_caller]
    pub fn expect_close(&mut self, conn: usize) -> (u16, String) {
        match self.events.next(conn, "on_close") {
            Ev::Close { code, reason } => (code, reason),
            other => panic!("conn {conn}: expected on_close, got {other:?}"),
        }
    }

    /// Wait for the loop to end by itself (every connection closed) and check it ended cleanly.
    pub fn finish(mut self) {
        let h = self.handle.take().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "the client loop did not end after its connections closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("client loop run() returned an error: {e}"),
            Err(_) => panic!("client loop thread panicked"),
        }
    }
}

impl Drop for OurClients {
    fn drop(&mut self) {
        let _ = stop_loop(&self.stop, &mut self.handle);
    }
}

// ------------------------------------------------------------------------------------------------
// Lines reported by their servers

/// Text lines from their server (its stdout, or a thread), kept for waiting and inspection.
pub struct LineLog {
    rx: Receiver<String>,
    /// Every line so far.
    pub lines: Vec<String>,
    /// Waits look at the lines from this index on (see [`mark`](Self::mark)).
    from: usize,
}

impl LineLog {
    pub fn new(rx: Receiver<String>) -> Self {
        LineLog { rx, lines: Vec::new(), from: 0 }
    }

    /// Start a new scenario: later waits only look at lines that arrive from now on.
    pub fn mark(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        self.from = self.lines.len();
    }

    /// Wait until at least `n` lines since the [`mark`](Self::mark) satisfy `pred`.
    #[track_caller]
    pub fn wait_count(&mut self, n: usize, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while self.lines[self.from..].iter().filter(|l| pred(l)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.lines.push(l),
                Err(e) => panic!(
                    "timed out ({e:?}) waiting for {what} from their server; its lines so far:\n  {}",
                    self.lines.iter().take(300).cloned().collect::<Vec<_>>().join("\n  ")
                ),
            }
        }
    }

    /// Wait for the exact line `line`.
    #[track_caller]
    pub fn wait_line(&mut self, line: &str) {
        self.wait_count(1, &format!("the line {line:?}"), |l| l == line);
    }
}

/// Their echo server: where it listens, what it reported, and what keeps it alive.
pub struct TheirServer {
    pub port: u16,
    pub lines: LineLog,
    pub name: String,
    /// Stops the server when dropped (kills the process, or stops the thread).
    pub _guard: Box<dyn Send>,
}

impl TheirServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

// ------------------------------------------------------------------------------------------------
// Peer processes

/// The external peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    Node,
}

impl Lang {
    fn part(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Node => "node",
        }
    }

    fn command(self) -> Command {
        let peers = root().join("tests/peers");
        let mut c = match self {
            Lang::Python => {
                let mut c = Command::new(peers.join(".venv/bin/python"));
                // No __pycache__ in the work tree.
                c.env("PYTHONDONTWRITEBYTECODE", "1").arg(peers.join("ws_peer.py"));
                c
            }
            Lang::Node => {
                let mut c = Command::new("node");
                c.arg(peers.join("ws_peer.js"));
                c
            }
        };
        c.current_dir(&peers);
        c
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Make sure the peer for `lang` is installed: run `scripts/install-peers.sh <lang>` once per test
/// binary (it returns at once when already installed, and installs into tests/peers otherwise).
/// Panics, failing the test, with the script's output if it fails.
pub fn ensure_peers(lang: Lang) {
    static PYTHON: OnceLock<Result<(), String>> = OnceLock::new();
    static NODE: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match lang {
        Lang::Python => &PYTHON,
        Lang::Node => &NODE,
    };
    if let Err(e) = cell.get_or_init(|| install(lang)) {
        panic!("the {} interop peer is not available and installing it failed:\n{e}", lang.part());
    }
}

fn install(lang: Lang) -> Result<(), String> {
    let script = root().join("scripts/install-peers.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(lang.part()).current_dir(root());
    let out = wait_output(cmd, Duration::from_secs(900), "scripts/install-peers.sh")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} {}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            script.display(),
            lang.part(),
            out.status,
            out.stdout,
            out.stderr
        ))
    }
}

/// A child process that is killed (and reaped) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Read `r` to the end on a thread, into a shared string.
fn drain(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// A finished process's status and output.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to completion within `timeout` (killing it if it takes longer).
fn wait_output(mut cmd: Command, timeout: Duration, what: &str) -> Result<Output, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?);
    let stdout = drain(child.0.stdout.take().unwrap());
    let stderr = drain(child.0.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                drop(child);
                return Err(format!(
                    "{what} did not finish within {timeout:?} and was killed\n--- stdout\n{}\n--- stderr\n{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    // The pipes close when the process exits; give the reader threads a moment to finish.
    let grace = Instant::now() + Duration::from_secs(2);
    while Instant::now() < grace && (Arc::strong_count(&stdout) > 1 || Arc::strong_count(&stderr) > 1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    Ok(Output { status, stdout, stderr })
}

/// Run their scripted client (`ws_peer.* client <url> <scenario> [args]`) and require that it
/// exits 0, i.e. that every check it made passed.
#[track_caller]
pub fn run_peer_client(lang: Lang, url: &str, scenario: &str, args: &[&str]) {
    ensure_peers(lang);
    let mut cmd = lang.command();
    cmd.arg("client").arg(url).arg(scenario).args(args);
    let what = format!("the {} client ({scenario} against {url})", lang.part());
    match wait_output(cmd, CLIENT_TIMEOUT, &what) {
        Ok(out) if out.status.success() => {
            assert!(out.stdout.contains("OK"), "{what} exited 0 without reporting OK:\n{}", out.stdout);
        }
        Ok(out) => panic!("{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}", out.status, out.stdout, out.stderr),
        Err(e) => panic!("{e}"),
    }
}

/// Start their echo server (`ws_peer.* server --protocols ...`) and read its port.
pub fn start_peer_server(lang: Lang) -> TheirServer {
    ensure_peers(lang);
    let mut cmd = lang.command();
    cmd.arg("server").arg("--protocols").arg(SUPPORTED.join(","));
    // stdin stays open: the peer exits when it closes, so it cannot outlive this process.
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("cannot start the {} server: {e}", lang.part())));
    let stdout = child.0.stdout.take().unwrap();
    let stderr = drain(child.0.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let port = match rx.recv_timeout(TIMEOUT) {
        Ok(line) => line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| panic!("the {} server printed {line:?} instead of `PORT <n>`", lang.part())),
        Err(e) => {
            drop(child);
            panic!(
                "the {} server did not print its port within {TIMEOUT:?} ({e:?}); stderr:\n{}",
                lang.part(),
                stderr.lock().unwrap()
            )
        }
    };
    TheirServer { port, lines: LineLog::new(rx), name: lang.part().into(), _guard: Box::new(child) }
}

// ------------------------------------------------------------------------------------------------
// Their client -> our server: what our server must have seen

fn messages_of(events: &[Ev]) -> Vec<(Message, Option<Vec<usize>>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Message { msg, frames } => Some((msg.clone(), frames.clone())),
            _ => None,
        })
        .collect()
}

fn payloads(events: &[Ev], ping: bool) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match (e, ping) {
            (Ev::Ping(p), true) | (Ev::Pong(p), false) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[track_caller]
fn assert_no_errors(events: &[Ev], what: &str) {
    let errors: Vec<&Ev> = events.iter().filter(|e| matches!(e, Ev::Error(_))).collect();
    assert!(errors.is_empty(), "{what}: our handler reported errors: {errors:?}");
}

/// Wait for our server's connection on `path` to close; its events.
#[track_caller]
fn closed_session(server: &mut OurServer, path: &str) -> (usize, Vec<Ev>) {
    let conn = server.events.conn_with_path(path);
    server
        .events
        .wait_until(&format!("on_close of the connection on {path}"), |all| all.iter().any(|e| is_close_of(e, conn)));
    (conn, server.events.of(conn))
}

/// After their `echo` scenario on `/echo`: our server saw the offered subprotocols, exactly the
/// script's messages (then "after ping"), their ping `their_ping`, the pong to its `srv-ping`,
/// and their close 4000 "bye".
#[track_caller]
pub fn assert_echo_session(server: &mut OurServer, their_ping: &[u8]) {
    let (_, ev) = closed_session(server, "/echo");
    assert_no_errors(&ev, "echo session");
    match &ev[0] {
        Ev::Request { protocols, .. } => {
            assert_eq!(protocols, &OFFERED, "offered subprotocols, as our server saw them")
        }
        other => panic!("first event should be the request, got {other:?}"),
    }
    assert!(matches!(ev[1], Ev::Open), "second event should be on_open, got {:?}", ev[1]);
    let got: Vec<Message> = messages_of(&ev)
        .into_iter()
        .map(|(m, _)| m)
        .filter(|m| !m.as_text().is_some_and(|t| t.starts_with("cmd:")))
        .collect();
    let mut want = script_messages();
    want.push(Message::text("after ping"));
    assert_eq!(got.len(), want.len(), "number of messages our server received: {got:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_same_message(g, w, &format!("message {i} received by our server"));
    }
    assert_eq!(payloads(&ev, true), vec![Bytes::copy_from_slice(their_ping)], "pings our server received");
    assert_eq!(payloads(&ev, false), vec![Bytes::from_static(b"srv-ping")], "pongs our server received");
    match ev.last().unwrap() {
        Ev::Close { code, reason } => assert_eq!((*code, reason.as_str()), (4000, "bye"), "their close, in on_close"),
        other => panic!("last event should be on_close, got {other:?}"),
    }
}

/// After their `frag` scenario on `/frames` (our handler at frame level): the three fragmented
/// messages arrived whole, with the frame layouts `layouts` (payload size of every frame), their
/// `mid-frag` ping between fragments, and their close 1000.
#[track_caller]
pub fn assert_frag_session(server: &mut OurServer, layouts: [Vec<usize>; 3]) {
    let (_, ev) = closed_session(server, "/frames");
    assert_no_errors(&ev, "frag session");
    let got = messages_of(&ev);
    let want = [
        Message::text(FRAG_TEXT),
        Message::binary(frag_binary_chunks().concat()),
        Message::binary(frag_big_chunks().concat()),
    ];
    assert_eq!(got.len(), 3, "messages our server received: {got:?}");
    for (i, ((g, frames), w)) in got.iter().zip(&want).enumerate() {
        assert_same_message(g, w, &format!("fragmented message {i} received by our server"));
        assert_eq!(frames.as_ref(), Some(&layouts[i]), "frame layout of fragmented message {i}");
    }
    assert_eq!(payloads(&ev, true), vec![Bytes::from_static(b"mid-frag")], "pings our server received");
    match ev.last().unwrap() {
        Ev::Close { code, reason } => assert_eq!((*code, reason.as_str()), (1000, ""), "their close"),
        other => panic!("last event should be on_close, got {other:?}"),
    }
}

/// After their `server-close` scenario: our server closed with 4001 "adiós ✓" and their answer
/// (which echoes code and reason) arrived in on_close.
#[track_caller]
pub fn assert_server_close_session(server: &mut OurServer) {
    let (_, ev) = closed_session(server, "/close");
    assert_no_errors(&ev, "server-close session");
    match ev.last().unwrap() {
        Ev::Close { code, reason } => {
            assert_eq!((*code, reason.as_str()), (4001, "adiós ✓"), "their answer to our close, in on_close")
        }
        other => panic!("last event should be on_close, got {other:?}"),
    }
}

/// After their `concurrent` scenario: [`CONCURRENT`] connections on `/many`, none with a
/// subprotocol, each received exactly the messages of one distinct `i`, and closed with 1000.
#[track_caller]
pub fn assert_concurrent_sessions(server: &mut OurServer) {
    let on_many = |all: &[(usize, Ev)]| -> Vec<usize> {
        all.iter()
            .filter_map(|(c, e)| match e {
                Ev::Request { path, .. } if path == "/many" => Some(*c),
                _ => None,
            })
            .collect()
    };
    server.events.wait_until(&format!("{CONCURRENT} closed connections on /many"), |all| {
        let conns = on_many(all);
        conns.len() == CONCURRENT && conns.iter().all(|&c| all.iter().any(|e| is_close_of(e, c)))
    });
    let conns = on_many(&server.events.all);
    let mut seen = [false; CONCURRENT];
    for conn in conns {
        let ev = server.events.of(conn);
        assert_no_errors(&ev, &format!("concurrent conn {conn}"));
        assert!(matches!(&ev[0], Ev::Request { protocols, .. } if protocols.is_empty()), "conn {conn}: {:?}", ev[0]);
        let got: Vec<Message> = messages_of(&ev).into_iter().map(|(m, _)| m).collect();
        let i: usize = got
            .first()
            .and_then(|m| m.as_text())
            .and_then(|t| t.split(' ').nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("conn {conn}: first message is not `conn <i> ...`: {got:?}"));
        assert!(i < CONCURRENT && !seen[i], "conn {conn}: index {i} out of range or seen twice");
        seen[i] = true;
        let want = concurrent_messages(i);
        assert_eq!(got.len(), want.len(), "conn {conn} (their {i}): messages {got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_same_message(g, w, &format!("conn {conn} (their {i})"));
        }
        match ev.last().unwrap() {
            Ev::Close { code, reason } => assert_eq!((*code, reason.as_str()), (1000, ""), "conn {conn}"),
            other => panic!("conn {conn}: last event should be on_close, got {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Our client -> their server: the scenarios, the same for every library

/// Offer [`OFFERED`] (their server picks [`CHOSEN`], which our `on_response` must see), echo the
/// whole script byte-exact, ping them (our `on_pong` gets the payload), have them ping us (our
/// auto-pong reaches them with the payload), and close with 4000 "bye": their close event gets it,
/// and their echoed answer reaches our `on_close`.
pub fn our_client_echo(their: &mut TheirServer) {
    their.lines.mark();
    let mut c = OurClients::one(ClientSpec::new(their.url("/echo")).offering(&OFFERED));
    let protocol = c.expect_open(0);
    assert_eq!(protocol.as_deref(), Some(CHOSEN), "subprotocol in on_response, chosen by {}", their.name);
    their.lines.wait_line(&format!("OPEN /echo {CHOSEN}"));
    for (i, m) in script_messages().iter().enumerate() {
        c.roundtrip(0, m, &format!("script message {i} echoed by {}", their.name));
    }
    let ping = b"wsloop-ping\x00\xff";
    c.out[0].ping(Bytes::copy_from_slice(ping)).unwrap();
    match c.events.next(0, "on_pong") {
        Ev::Pong(p) => assert_eq!(&p[..], &ping[..], "payload of {}'s pong", their.name),
        other => panic!("expected on_pong, got {other:?}"),
    }
    c.out[0].send("cmd:ping their-ping").unwrap();
    match c.events.next(0, "on_ping") {
        Ev::Ping(p) => assert_eq!(&p[..], b"their-ping", "payload of {}'s ping", their.name),
        other => panic!("expected on_ping, got {other:?}"),
    }
    their.lines.wait_line(&format!("PONG {}", hex(b"their-ping")));
    c.out[0].close(4000u16, "bye").unwrap();
    let (code, reason) = c.expect_close(0);
    assert_eq!(
        (code, reason.as_str()),
        (4000, "bye"),
        "{}'s answer to our close (it echoes code and reason)",
        their.name
    );
    their.lines.wait_line(&format!("CLOSED 4000 {}", hex(b"bye")));
    c.finish();
}

/// On `/frag` their server echoes every message in 3 fragments; our client (frame level) must get
/// each frame (`layout(len)` gives the expected payload sizes) and the whole message byte-exact,
/// for text cut inside UTF-8 characters and for binary.
pub fn our_client_frag(their: &mut TheirServer, layout: fn(usize) -> Vec<usize>) {
    their.lines.mark();
    let mut c = OurClients::one(ClientSpec::new(their.url("/frag")).level(Level::Frame));
    assert_eq!(c.expect_open(0), None, "no subprotocol offered, none selected");
    let msgs = [
        Message::text(FRAG_TEXT),
        Message::text(UTF8.repeat(100)),
        Message::binary(pattern(100_000)),
        Message::binary(pattern(1)),
    ];
    for (i, m) in msgs.iter().enumerate() {
        c.out[0].send(m.clone()).unwrap();
        let (got, frames) = c.expect_message(0);
        assert_same_message(&got, m, &format!("fragmented echo {i} from {}", their.name));
        assert_eq!(frames, Some(layout(m.len())), "frame layout of fragmented echo {i} from {}", their.name);
    }
    c.out[0].close(1000u16, "").unwrap();
    assert_eq!(c.expect_close(0), (1000, String::new()));
    their.lines.wait_line("CLOSED 1000 -");
    c.finish();
}

/// The frame sizes of a message of `n` bytes cut at n/3 and 2n/3.
pub fn thirds(n: usize) -> Vec<usize> {
    vec![n / 3, 2 * n / 3 - n / 3, n - 2 * n / 3]
}

/// Their server closes with 4002 and a UTF-8 reason: our `on_close` gets exactly that, and our
/// answer echoes the code (wsloop answers with the code and no reason).
pub fn our_client_server_close(their: &mut TheirServer) {
    their.lines.mark();
    let mut c = OurClients::one(ClientSpec::new(their.url("/close")));
    c.expect_open(0);
    c.out[0].send("cmd:close 4002 peer bye ✓").unwrap();
    let (code, reason) = c.expect_close(0);
    assert_eq!((code, reason.as_str()), (4002, "peer bye ✓"), "{}'s close, in our on_close", their.name);
    their.lines.wait_line("CLOSED 4002 -");
    c.finish();
}

/// [`CONCURRENT`] client connections on one loop, all open at once, each echoing its messages in
/// order and closing with 1000.
pub fn our_client_concurrent(their: &mut TheirServer) {
    their.lines.mark();
    let specs = (0..CONCURRENT).map(|_| ClientSpec::new(their.url("/many"))).collect();
    let mut c = OurClients::start(specs);
    for i in 0..CONCURRENT {
        assert_eq!(c.expect_open(i), None, "conn {i}: subprotocol");
    }
    for round in 0..3 {
        for i in 0..CONCURRENT {
            c.out[i].send(concurrent_messages(i)[round].clone()).unwrap();
        }
        for i in 0..CONCURRENT {
            let (got, _) = c.expect_message(i);
            assert_same_message(&got, &concurrent_messages(i)[round], &format!("conn {i} round {round}"));
        }
    }
    for i in 0..CONCURRENT {
        c.out[i].close(1000u16, "").unwrap();
    }
    for i in 0..CONCURRENT {
        assert_eq!(c.expect_close(i), (1000, String::new()), "conn {i}: close");
    }
    their.lines.wait_count(CONCURRENT, "CLOSED 1000 of every connection", |l| l == "CLOSED 1000 -");
    c.finish();
}
