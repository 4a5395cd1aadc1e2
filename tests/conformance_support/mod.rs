//! Shared machinery of the Autobahn-style conformance suites (`conformance_server.rs` drives a
//! wsloop echo server, `conformance_client.rs` a wsloop echo client).
//!
//! - [`Peer`]: a raw WebSocket endpoint on a std `TcpStream`, playing the other side of wsloop. Its
//!   frame writer sends arbitrary, even invalid, frames (any opcode, RSV bits, lengths, masking) in
//!   arbitrary chops, or only a prefix of a frame; its frame reader parses wsloop's frames and
//!   checks them strictly (masking direction, RSV, opcodes, control frame rules, minimal lengths).
//! - [`Case`]: one conformance case (Autobahn|Testsuite numbering where Autobahn has the case):
//!   what to send, what must come back, and how the connection must end. [`all_cases`] is the
//!   table of every category.
//! - [`play`]: runs a case on a connected [`Peer`] and checks the exact outcome; [`run_cases`] runs
//!   a table on a few threads and fails naming every failing case.
//!
//! Every wait is bounded: socket read and write timeouts, and deadlines per expectation.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Opcodes and bounds
// ---------------------------------------------------------------------------------------------

/// Continuation frame.
pub const CONT: u8 = 0x0;
/// Text frame.
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xA;

/// How long wsloop may take to answer a small frame (pong, echo, close), and to fail fast.
pub const REPLY_BOUND: Duration = Duration::from_secs(2);
/// How long wsloop may take to close the TCP connection after the closing handshake.
pub const EOF_BOUND: Duration = Duration::from_secs(2);
/// Socket write timeout (a write blocked longer than this means the peer stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// The time allowed for an echo of `len` bytes (debug builds move a few MB per second).
pub fn echo_bound(len: usize) -> Duration {
    REPLY_BOUND + Duration::from_millis((len / 4096) as u64)
}

fn op_name(op: u8) -> String {
    match op {
        CONT => "continuation".into(),
        TEXT => "text".into(),
        BINARY => "binary".into(),
        CLOSE => "close".into(),
        PING => "ping".into(),
        PONG => "pong".into(),
        other => format!("opcode {other:#x}"),
    }
}

/// Show a payload in an assertion message: short text quoted, otherwise length and leading bytes.
pub fn show(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if b.len() <= 48 => format!("{s:?}"),
        _ => {
            let head: Vec<String> = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
            format!("{} bytes [{}{}]", b.len(), head.join(" "), if b.len() > 16 { " ..." } else { "" })
        }
    }
}

fn payload_diff(expected: &[u8], got: &[u8]) -> String {
    if expected.len() != got.len() {
        return format!("expected {} bytes, got {} bytes (got {})", expected.len(), got.len(), show(got));
    }
    let i = expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
    format!(
        "payload differs at byte {i} of {}: expected {:#04x}, got {:#04x} (got {})",
        got.len(),
        expected[i],
        got[i],
        show(got)
    )
}

// ---------------------------------------------------------------------------------------------
// Masking and random keys (independent of wsloop's implementation: this is the test oracle)
// ---------------------------------------------------------------------------------------------

/// XOR `buf` with the masking key (RFC 6455 §5.3), starting at key position 0.
pub fn mask(buf: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ k;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// A small xorshift64* generator for the test peer's masking keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the clock and a process-wide counter.
    pub fn new() -> Rng {
        static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Rng((t ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh masking key.
    pub fn key(&mut self) -> [u8; 4] {
        (self.next() as u32).to_be_bytes()
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames the test peer sends
// ---------------------------------------------------------------------------------------------

/// Which side of the connection the raw test peer plays (wsloop plays the other one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The test peer is the client: it masks its frames and expects unmasked ones (wsloop server).
    Client,
    /// The test peer is the server: it sends unmasked frames and expects masked ones (wsloop client).
    Server,
}

/// Whether and how a frame is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskMode {
    /// As the sending side must: masked with a fresh random key by a client, unmasked by a server.
    BySide,
    /// Masked with a random key whatever the side (invalid from a server, §5.1).
    Masked,
    /// Not masked whatever the side (invalid from a client, §5.1).
    Unmasked,
    /// Masked with this key.
    Key([u8; 4]),
}

/// A frame to send: any header bits, any opcode (reserved ones too), any payload.
#[derive(Debug, Clone)]
pub struct F {
    /// FIN bit.
    pub fin: bool,
    /// RSV1-3, as the 3-bit field value (RSV1 = 4, RSV2 = 2, RSV3 = 1).
    pub rsv: u8,
    /// The 4-bit opcode.
    pub op: u8,
    /// The payload (before masking).
    pub payload: Vec<u8>,
    /// Masking.
    pub mask: MaskMode,
    /// Announce this payload length in the header instead of the payload's (for frames whose
    /// payload is never sent, such as oversized headers).
    pub announce: Option<u64>,
}

impl F {
    /// Set the RSV field.
    pub fn rsv(mut self, rsv: u8) -> F {
        self.rsv = rsv;
        self
    }

    /// Clear FIN.
    pub fn unfin(mut self) -> F {
        self.fin = false;
        self
    }

    /// Choose the masking.
    pub fn mask(mut self, m: MaskMode) -> F {
        self.mask = m;
        self
    }

    /// Announce a payload length other than the payload's.
    pub fn announce(mut self, len: u64) -> F {
        self.announce = Some(len);
        self
    }

    /// Encode for `side`: the bytes and the header length.
    pub fn encode(&self, side: Side, rng: &mut Rng) -> (Vec<u8>, usize) {
        let key = match self.mask {
            MaskMode::BySide if side == Side::Client => Some(rng.key()),
            MaskMode::BySide | MaskMode::Unmasked => None,
            MaskMode::Masked => Some(rng.key()),
            MaskMode::Key(k) => Some(k),
        };
        let len = self.announce.unwrap_or(self.payload.len() as u64);
        let mut out = Vec::with_capacity(14 + self.payload.len());
        out.push((self.fin as u8) << 7 | (self.rsv & 7) << 4 | (self.op & 0xf));
        let mbit = if key.is_some() { 0x80 } else { 0 };
        if len < 126 {
            out.push(mbit | len as u8);
        } else if len <= 0xffff {
            out.push(mbit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mbit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(k) = key {
            out.extend_from_slice(&k);
        }
        let header = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(k) = key {
            mask(&mut out[header..], k);
        }
        (out, header)
    }
}

/// A frame with opcode `op`.
pub fn frame(op: u8, fin: bool, payload: impl AsRef<[u8]>) -> F {
    F { fin, rsv: 0, op, payload: payload.as_ref().to_vec(), mask: MaskMode::BySide, announce: None }
}

/// A final text frame.
pub fn text(p: impl AsRef<[u8]>) -> F {
    frame(TEXT, true, p)
}

/// A final binary frame.
pub fn binary(p: impl AsRef<[u8]>) -> F {
    frame(BINARY, true, p)
}

/// A continuation frame.
pub fn cont(fin: bool, p: impl AsRef<[u8]>) -> F {
    frame(CONT, fin, p)
}

/// A ping.
pub fn ping(p: impl AsRef<[u8]>) -> F {
    frame(PING, true, p)
}

/// A pong.
pub fn pong(p: impl AsRef<[u8]>) -> F {
    frame(PONG, true, p)
}

/// A close frame with a status code and reason.
pub fn close(code: u16, reason: impl AsRef<[u8]>) -> F {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_ref());
    frame(CLOSE, true, p)
}

/// A close frame with an arbitrary payload.
pub fn close_raw(payload: impl AsRef<[u8]>) -> F {
    frame(CLOSE, true, payload)
}

/// `msg` as a message of `op` split into frames at the given payload offsets.
pub fn fragments(op: u8, msg: &[u8], cuts: &[usize]) -> Vec<F> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&msg.len())) {
        let first = out.is_empty();
        out.push(frame(if first { op } else { CONT }, false, &msg[start..c]));
        start = c;
    }
    out.last_mut().expect("at least one fragment").fin = true;
    out
}

/// `msg` as a message of `op` in fragments of `size` bytes (at least one fragment).
pub fn fragmented(op: u8, msg: &[u8], size: usize) -> Vec<F> {
    let cuts: Vec<usize> = (1..msg.len().div_ceil(size)).map(|i| i * size).collect();
    fragments(op, msg, &cuts)
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// How the bytes of a [`Act::Send`] are written to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chop {
    /// All frames in one write.
    Whole,
    /// One write per frame, with a short pause between (Autobahn's "frame-wise chops").
    PerFrame,
    /// Writes of this many bytes (Autobahn's "octet-wise chops" with 1), pausing briefly between
    /// writes when there are few of them so that they arrive separately.
    Bytes(usize),
}

/// What a conformance case receives from wsloop at one step.
#[derive(Debug, Clone)]
pub enum Exp {
    /// A data message of this opcode with exactly this payload (the frames joined); with `max_frame`,
    /// every frame of it must carry at most that many bytes.
    Msg { op: u8, payload: Vec<u8>, max_frame: Option<usize> },
    /// A pong with exactly this payload.
    Pong(Vec<u8>),
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Act {
    /// Send frames.
    Send(Vec<F>, Chop),
    /// Send the frame's header and its payload up to each offset in turn (pausing between
    /// pieces), and never the rest: the frame stays incomplete.
    SendPieces(F, Vec<usize>),
    /// The next thing from wsloop must be this.
    Expect(Exp),
    /// Wait.
    Pause(Duration),
}

/// The close frame wsloop must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseExp {
    /// A close frame with exactly this status code.
    Code(u16),
    /// A close frame without a status code (or, as Autobahn allows, with 1000).
    EmptyOr1000,
}

impl std::fmt::Display for CloseExp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseExp::Code(c) => write!(f, "close {c}"),
            CloseExp::EmptyOr1000 => f.write_str("an empty close (or 1000)"),
        }
    }
}

/// How a case ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The test peer starts the closing handshake with 1000, which wsloop must echo.
    Normal,
    /// wsloop must send this close frame (failing the connection, or echoing the test's close)
    /// within [`REPLY_BOUND`] of the last step, with nothing else before it.
    Close(CloseExp),
}

/// Which wsloop role a case applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Both.
    Both,
    /// wsloop server only (the test peer is a client).
    Server,
    /// wsloop client only (the test peer is a server).
    Client,
}

/// wsloop's settings for a case (besides the defaults, with keep-alive pings off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    /// Default settings.
    Default,
    /// `Settings::auto_fragment_size = Some(n)`.
    AutoFragment(usize),
}

/// One conformance case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Autobahn's case number (or a wsloop extension number in the same category).
    pub id: String,
    /// The category key: "1".."10", or "M" for masking.
    pub cat: &'static str,
    /// The RFC 6455 sections the case checks.
    pub rfc: &'static str,
    /// What is sent.
    pub desc: String,
    /// The steps.
    pub acts: Vec<Act>,
    /// How it ends.
    pub end: End,
    /// Roles it applies to.
    pub only: Only,
    /// wsloop settings.
    pub setup: Setup,
    /// Client role: the `101` response goes out in the same write as the first frames.
    pub early: bool,
}

impl Case {
    /// A case that sends nothing yet and ends normally.
    pub fn new(id: impl Into<String>, cat: &'static str, rfc: &'static str, desc: impl Into<String>) -> Case {
        Case {
            id: id.into(),
            cat,
            rfc,
            desc: desc.into(),
            acts: Vec::new(),
            end: End::Normal,
            only: Only::Both,
            setup: Setup::Default,
            early: false,
        }
    }

    /// Send frames in one write.
    pub fn send(self, frames: Vec<F>) -> Case {
        self.send_chop(frames, Chop::Whole)
    }

    /// Send frames chopped.
    pub fn send_chop(mut self, frames: Vec<F>, chop: Chop) -> Case {
        self.acts.push(Act::Send(frames, chop));
        self
    }

    /// Send a frame's header and payload pieces up to the given offsets, never the rest.
    pub fn pieces(mut self, f: F, offsets: Vec<usize>) -> Case {
        self.acts.push(Act::SendPieces(f, offsets));
        self
    }

    /// Expect a message.
    pub fn expect_msg(mut self, op: u8, payload: impl AsRef<[u8]>) -> Case {
        self.acts.push(Act::Expect(Exp::Msg { op, payload: payload.as_ref().to_vec(), max_frame: None }));
        self
    }

    /// Expect a text message.
    pub fn echo_text(self, payload: impl AsRef<[u8]>) -> Case {
        self.expect_msg(TEXT, payload)
    }

    /// Expect a binary message.
    pub fn echo_binary(self, payload: impl AsRef<[u8]>) -> Case {
        self.expect_msg(BINARY, payload)
    }

    /// Expect a pong.
    pub fn expect_pong(mut self, payload: impl AsRef<[u8]>) -> Case {
        self.acts.push(Act::Expect(Exp::Pong(payload.as_ref().to_vec())));
        self
    }

    /// Pause.
    pub fn pause(mut self, ms: u64) -> Case {
        self.acts.push(Act::Pause(Duration::from_millis(ms)));
        self
    }

    /// wsloop must fail the connection with `code`.
    pub fn fails(mut self, code: u16) -> Case {
        self.end = End::Close(CloseExp::Code(code));
        self
    }

    /// wsloop must answer with this close.
    pub fn closes(mut self, c: CloseExp) -> Case {
        self.end = End::Close(c);
        self
    }

    /// Only for this role.
    pub fn only(mut self, only: Only) -> Case {
        self.only = only;
        self
    }

    /// With these settings.
    pub fn setup(mut self, setup: Setup) -> Case {
        self.setup = setup;
        self
    }

    /// Client role: send the `101` response and the first frames in one write.
    pub fn early(mut self) -> Case {
        self.early = true;
        self
    }

    /// Whether the case applies when the test peer plays `side`.
    pub fn applies_to(&self, side: Side) -> bool {
        match self.only {
            Only::Both => true,
            Only::Server => side == Side::Client,
            Only::Client => side == Side::Server,
        }
    }

    /// The expected outcome, in words (for the README table and messages).
    pub fn outcome(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut last: Option<(String, usize)> = None;
        for a in &self.acts {
            let Act::Expect(e) = a else { continue };
            let s = match e {
                Exp::Msg { op, payload, max_frame: None } => format!("{} echo ({} B)", op_name(*op), payload.len()),
                Exp::Msg { op, payload, max_frame: Some(m) } => {
                    format!("{} echo ({} B) in frames of ≤ {m} B", op_name(*op), payload.len())
                }
                Exp::Pong(p) => format!("pong ({} B)", p.len()),
            };
            match &mut last {
                Some((l, n)) if *l == s => *n += 1,
                _ => {
                    if let Some((l, n)) = last.take() {
                        parts.push(if n > 1 { format!("{n} × {l}") } else { l });
                    }
                    last = Some((s, 1));
                }
            }
        }
        if let Some((l, n)) = last {
            parts.push(if n > 1 { format!("{n} × {l}") } else { l });
        }
        let fail_fast = self.acts.iter().any(|a| matches!(a, Act::SendPieces(..)));
        parts.push(match self.end {
            End::Normal => "clean close 1000".to_string(),
            End::Close(CloseExp::Code(c)) if c == 1007 && fail_fast => "fail 1007 before the frame is complete".into(),
            End::Close(CloseExp::Code(c)) if is_failure(self, c) => format!("fail {c}"),
            End::Close(c) => format!("{c} echoed"),
        });
        parts.join(", then ")
    }
}

/// Whether the case's final close code is wsloop failing the connection (rather than echoing a
/// close the test sent).
fn is_failure(case: &Case, code: u16) -> bool {
    !case.acts.iter().any(|a| match a {
        Act::Send(fs, _) => {
            fs.iter().any(|f| f.op == CLOSE && f.payload.len() >= 2 && f.payload[..2] == code.to_be_bytes())
        }
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------
// The raw peer
// ---------------------------------------------------------------------------------------------

/// A frame received from wsloop.
#[derive(Debug, Clone)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV field.
    pub rsv: u8,
    /// Opcode.
    pub op: u8,
    /// Masking key, if masked.
    pub key: Option<[u8; 4]>,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.op == CLOSE && self.payload.len() >= 2 {
            let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
            return write!(f, "a close frame (code {code}, reason {})", show(&self.payload[2..]));
        }
        write!(
            f,
            "a {}{} frame ({})",
            if self.fin { "" } else { "non-final " },
            op_name(self.op),
            if self.payload.is_empty() { "empty".to_string() } else { show(&self.payload) }
        )
    }
}

/// Why no frame was read.
#[derive(Debug)]
pub enum Recv {
    /// The connection ended; `pending` bytes of an unfinished frame were buffered.
    Eof { pending: usize },
    /// Nothing (complete) arrived in time.
    Timeout(Duration),
    /// A socket error.
    Io(io::Error),
    /// wsloop sent an invalid frame.
    Bad(String),
}

impl std::fmt::Display for Recv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recv::Eof { pending: 0 } => f.write_str("EOF (TCP closed without it)"),
            Recv::Eof { pending } => write!(f, "EOF inside a frame ({pending} bytes of it received)"),
            Recv::Timeout(d) => write!(f, "nothing within {d:?}"),
            Recv::Io(e) => write!(f, "socket error {e}"),
            Recv::Bad(s) => write!(f, "an invalid frame from wsloop: {s}"),
        }
    }
}

/// A raw WebSocket endpoint on a std socket, after the opening handshake.
#[derive(Debug)]
pub struct Peer {
    /// The side the test plays.
    pub side: Side,
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    rng: Rng,
    /// The masking keys of every frame received (wsloop client frames).
    pub keys: Vec<[u8; 4]>,
    /// Bytes to send in the same write as the next data (a deferred `101` response).
    prefix: Vec<u8>,
}

fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(p + 4);
            let head = String::from_utf8(buf).map_err(|_| "handshake head is not UTF-8".to_string())?;
            return Ok((head, rest));
        }
        let now = Instant::now();
        if now >= deadline || buf.len() > 16 * 1024 {
            return Err(format!("no complete handshake head in time (got {})", show(&buf)));
        }
        stream.set_read_timeout(Some(deadline - now)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("EOF during the handshake (got {})", show(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("handshake read failed: {e}")),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn setup_stream(stream: &TcpStream) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(())
}

impl Peer {
    fn new(side: Side, stream: TcpStream, leftover: Vec<u8>) -> Peer {
        Peer { side, stream, buf: leftover, pos: 0, rng: Rng::new(), keys: Vec::new(), prefix: Vec::new() }
    }

    /// Open a WebSocket as a client on a connected socket: send the upgrade request, validate the
    /// `101` response (status, `Upgrade`, `Connection`, `Sec-WebSocket-Accept`).
    pub fn client_handshake(mut stream: TcpStream, host: &str) -> Result<Peer, String> {
        setup_stream(&stream)?;
        let mut rng = Rng::new();
        let nonce: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
        let key = wsloop::protocol::handshake::headers::encode_key(&nonce.try_into().expect("16 bytes"));
        let req = format!(
            "GET /conformance HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).map_err(|e| format!("handshake write failed: {e}"))?;
        let (head, rest) = read_head(&mut stream, Instant::now() + REPLY_BOUND)?;
        let status = head.lines().next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {status:?}"));
        }
        if !has_token(header(&head, "upgrade"), "websocket") || !has_token(header(&head, "connection"), "upgrade") {
            return Err(format!("101 response lacks Upgrade/Connection: {head:?}"));
        }
        let expect = wsloop::protocol::handshake::headers::accept_key(key.as_bytes());
        if header(&head, "sec-websocket-accept") != Some(expect.as_str()) {
            return Err(format!("wrong Sec-WebSocket-Accept (want {expect}): {head:?}"));
        }
        Ok(Peer::new(Side::Client, stream, rest))
    }

    /// Accept a WebSocket as a server on an accepted socket: validate the upgrade request (GET,
    /// HTTP/1.1, `Upgrade`, `Connection`, version 13, a 16-byte key) and answer `101`. With
    /// `defer_101`, the response is sent in the same write as the first frames.
    pub fn server_handshake(mut stream: TcpStream, defer_101: bool) -> Result<Peer, String> {
        setup_stream(&stream)?;
        let (head, rest) = read_head(&mut stream, Instant::now() + Duration::from_secs(5))?;
        let line = head.lines().next().unwrap_or("");
        if !(line.starts_with("GET ") && line.ends_with(" HTTP/1.1")) {
            return Err(format!("bad request line {line:?}"));
        }
        let key = header(&head, "sec-websocket-key").unwrap_or("");
        let key_ok = key.len() == 24 && key.ends_with("==");
        if !has_token(header(&head, "upgrade"), "websocket")
            || !has_token(header(&head, "connection"), "upgrade")
            || header(&head, "sec-websocket-version") != Some("13")
            || header(&head, "host").is_none()
            || !key_ok
        {
            return Err(format!("invalid upgrade request from the wsloop client: {head:?}"));
        }
        if !rest.is_empty() {
            return Err(format!("client sent {} bytes before the 101 response", rest.len()));
        }
        let accept = wsloop::protocol::handshake::headers::accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if defer_101 {
            let mut peer = Peer::new(Side::Server, stream, Vec::new());
            peer.prefix = resp.into_bytes();
            return Ok(peer);
        }
        stream.write_all(resp.as_bytes()).map_err(|e| format!("handshake write failed: {e}"))?;
        Ok(Peer::new(Side::Server, stream, Vec::new()))
    }

    /// A peer on a socket whose handshake is done (or not needed, as in tests of the reader).
    pub fn from_stream(side: Side, stream: TcpStream) -> Result<Peer, String> {
        setup_stream(&stream)?;
        Ok(Peer::new(side, stream, Vec::new()))
    }

    /// Encode a frame as this side sends it.
    pub fn encode(&mut self, f: &F) -> (Vec<u8>, usize) {
        f.encode(self.side, &mut self.rng)
    }

    /// Send frames, chopped as asked.
    pub fn send(&mut self, frames: &[F], chop: Chop) -> io::Result<()> {
        match chop {
            Chop::Whole => {
                let mut all = Vec::new();
                for f in frames {
                    all.extend_from_slice(&self.encode(f).0);
                }
                self.write(&all)
            }
            Chop::PerFrame => {
                for (i, f) in frames.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let bytes = self.encode(f).0;
                    self.write(&bytes)?;
                }
                Ok(())
            }
            Chop::Bytes(n) => {
                let mut all = Vec::new();
                for f in frames {
                    all.extend_from_slice(&self.encode(f).0);
                }
                self.write_chopped(&all, n)
            }
        }
    }

    fn write_chopped(&mut self, bytes: &[u8], n: usize) -> io::Result<()> {
        let count = bytes.len().div_ceil(n.max(1));
        let pause = count <= 300;
        for (i, c) in bytes.chunks(n.max(1)).enumerate() {
            if pause && i > 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
            self.write(c)?;
        }
        Ok(())
    }

    /// One write (with the deferred prefix, if any, in front).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.prefix.is_empty() {
            return self.stream.write_all(bytes);
        }
        let mut all = std::mem::take(&mut self.prefix);
        all.extend_from_slice(bytes);
        self.stream.write_all(&all)
    }

    /// Send the header of `f` and its payload up to each offset in turn; never the rest.
    pub fn send_pieces(&mut self, f: &F, offsets: &[usize]) -> io::Result<()> {
        let (bytes, header) = self.encode(f);
        let mut start = 0;
        for (i, &o) in offsets.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let end = header + o;
            self.write(&bytes[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// Read the next frame within `within`, checking it strictly.
    pub fn read_frame(&mut self, within: Duration) -> Result<Frame, Recv> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = self.parse()? {
                return Ok(f);
            }
            self.fill(deadline, within)?;
        }
    }

    fn fill(&mut self, deadline: Instant, within: Duration) -> Result<(), Recv> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Recv::Timeout(within));
        }
        self.stream.set_read_timeout(Some(deadline - now)).map_err(Recv::Io)?;
        let old = self.buf.len();
        self.buf.resize(old + 256 * 1024, 0);
        let r = self.stream.read(&mut self.buf[old..]);
        match r {
            Ok(0) => {
                self.buf.truncate(old);
                Err(Recv::Eof { pending: old - self.pos })
            }
            Ok(n) => {
                self.buf.truncate(old + n);
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(old);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Err(Recv::Timeout(within)),
                    io::ErrorKind::Interrupted => Ok(()),
                    _ => Err(Recv::Io(e)),
                }
            }
        }
    }

    /// Parse one whole frame from the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, Recv> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = (b[0] >> 4) & 7;
        let op = b[0] & 0xf;
        let masked = b[1] & 0x80 != 0;
        let len7 = (b[1] & 0x7f) as u64;
        if rsv != 0 {
            return Err(Recv::Bad(format!("RSV bits {rsv:#05b} set without an extension (§5.2)")));
        }
        if ![CONT, TEXT, BINARY, CLOSE, PING, PONG].contains(&op) {
            return Err(Recv::Bad(format!("reserved opcode {op:#x} (§5.2)")));
        }
        if op >= CLOSE && (!fin || len7 > 125) {
            return Err(Recv::Bad(format!("control frame fin={fin} length code {len7} (§5.5)")));
        }
        match (self.side, masked) {
            (Side::Client, true) => return Err(Recv::Bad("a server frame is masked (§5.1)".into())),
            (Side::Server, false) => return Err(Recv::Bad("a client frame is not masked (§5.1, §5.3)".into())),
            _ => {}
        }
        let (len, mut h) = match len7 {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                let l = u16::from_be_bytes([b[2], b[3]]) as u64;
                if l < 126 {
                    return Err(Recv::Bad(format!("length {l} not in the minimal form (§5.2)")));
                }
                (l, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let l = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                if l <= 0xffff || l >> 63 != 0 {
                    return Err(Recv::Bad(format!("64-bit length {l} not in the minimal form (§5.2)")));
                }
                (l, 10)
            }
            l => (l, 2),
        };
        let key = if masked {
            if b.len() < h + 4 {
                return Ok(None);
            }
            let k = [b[h], b[h + 1], b[h + 2], b[h + 3]];
            h += 4;
            Some(k)
        } else {
            None
        };
        if len > (256 << 20) {
            return Err(Recv::Bad(format!("frame of {len} bytes is larger than any test sends")));
        }
        let total = h + len as usize;
        if b.len() < total {
            self.buf.reserve(total - b.len());
            return Ok(None);
        }
        let mut payload = b[h..total].to_vec();
        if let Some(k) = key {
            mask(&mut payload, k);
            self.keys.push(k);
        }
        self.pos += total;
        Ok(Some(Frame { fin, rsv, op, key, payload }))
    }

    /// The next thing from wsloop must be this message (its frames, with no control frame between).
    pub fn expect_msg(&mut self, op: u8, payload: &[u8], max_frame: Option<usize>) -> Result<(), String> {
        let what = format!("a {} message ({})", op_name(op), show(payload));
        let deadline = Instant::now() + echo_bound(payload.len());
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let first = self.read_frame(left(deadline)).map_err(|e| format!("expected {what}, got {e}"))?;
        if first.op != TEXT && first.op != BINARY {
            return Err(format!("expected {what}, got {first}"));
        }
        let mut largest = first.payload.len();
        let mut frames = 1;
        let mut fin = first.fin;
        let mut data = first.payload;
        while !fin {
            let f = self
                .read_frame(left(deadline))
                .map_err(|e| format!("expected {what}, got {frames} frame(s) ({} bytes) then {e}", data.len()))?;
            if f.op != CONT {
                return Err(format!("expected a continuation of {what} after {frames} frame(s), got {f}"));
            }
            largest = largest.max(f.payload.len());
            frames += 1;
            fin = f.fin;
            data.extend_from_slice(&f.payload);
        }
        if first.op != op {
            return Err(format!("expected {what}, got a {} message ({})", op_name(first.op), show(&data)));
        }
        if data != payload {
            return Err(format!("echo of {what} wrong: {}", payload_diff(payload, &data)));
        }
        if let Some(m) = max_frame {
            if largest > m {
                return Err(format!("echo of {what} came in {frames} frame(s), the largest {largest} bytes > {m}"));
            }
        }
        Ok(())
    }

    /// The next frame from wsloop must be a pong with this payload.
    pub fn expect_pong(&mut self, payload: &[u8]) -> Result<(), String> {
        let f = self.read_frame(REPLY_BOUND).map_err(|e| format!("expected a pong ({}), got {e}", show(payload)))?;
        if f.op != PONG {
            return Err(format!("expected a pong ({}), got {f}", show(payload)));
        }
        if f.payload != payload {
            return Err(format!("pong payload wrong: {}", payload_diff(payload, &f.payload)));
        }
        Ok(())
    }

    /// The next frame from wsloop must be this close frame (with a valid payload).
    pub fn expect_close(&mut self, exp: CloseExp) -> Result<(), String> {
        let f = self.read_frame(REPLY_BOUND).map_err(|e| format!("expected {exp}, got {e}"))?;
        if f.op != CLOSE {
            return Err(format!("expected {exp}, got {f}"));
        }
        let code = match f.payload.len() {
            0 => None,
            1 => return Err(format!("expected {exp}, got a close frame with a 1-byte payload")),
            _ => Some(u16::from_be_bytes([f.payload[0], f.payload[1]])),
        };
        if f.payload.len() > 2 && std::str::from_utf8(&f.payload[2..]).is_err() {
            return Err(format!("close reason is not UTF-8: {}", show(&f.payload[2..])));
        }
        let ok = match exp {
            CloseExp::Code(c) => code == Some(c),
            CloseExp::EmptyOr1000 => code.is_none() || code == Some(1000),
        };
        if !ok {
            return Err(format!("expected {exp}, got {f}"));
        }
        Ok(())
    }

    /// After the closing handshake: the TCP connection must end, with nothing more sent.
    pub fn expect_eof(&mut self, within: Duration) -> Result<(), String> {
        match self.read_frame(within) {
            Err(Recv::Eof { pending: 0 }) => Ok(()),
            Ok(f) => Err(format!("got {f} after the close frame")),
            Err(Recv::Timeout(_)) => Err(format!("TCP connection still open {within:?} after the closing handshake")),
            Err(e) => Err(format!("expected a clean TCP close after the closing handshake, got {e}")),
        }
    }
}

/// Accept one connection within `within` (the listener is polled, so nothing blocks forever).
pub fn accept_within(listener: &TcpListener, within: Duration) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(format!("the wsloop client did not connect within {within:?}"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
}

/// Play `case` on a connected peer and check every outcome: the expected frames in order and
/// nothing else, then the close frame, then the end of the TCP connection.
pub fn play(peer: &mut Peer, case: &Case) -> Result<(), String> {
    let mut note = String::new();
    for (i, act) in case.acts.iter().enumerate() {
        let step = i + 1;
        let written = match act {
            Act::Send(frames, chop) => peer.send(frames, *chop),
            Act::SendPieces(f, offsets) => peer.send_pieces(f, offsets),
            Act::Pause(d) => {
                std::thread::sleep(*d);
                Ok(())
            }
            Act::Expect(Exp::Msg { op, payload, max_frame }) => {
                peer.expect_msg(*op, payload, *max_frame).map_err(|e| format!("step {step}: {e}{note}"))?;
                Ok(())
            }
            Act::Expect(Exp::Pong(p)) => {
                peer.expect_pong(p).map_err(|e| format!("step {step}: {e}{note}"))?;
                Ok(())
            }
        };
        // wsloop may legitimately stop reading after failing the connection: keep going and
        // judge by what it sent.
        if let Err(e) = written {
            if note.is_empty() {
                note = format!(" (the write of step {step} failed: {e})");
            }
        }
    }
    let step = case.acts.len() + 1;
    match case.end {
        End::Normal => {
            if let Err(e) = peer.send(&[close(1000, "done")], Chop::Whole) {
                note = format!(" (the write of the closing frame failed: {e})");
            }
            peer.expect_close(CloseExp::Code(1000))
        }
        End::Close(exp) => peer.expect_close(exp),
    }
    .map_err(|e| format!("step {step}: {e}{note}"))?;
    if peer.side == Side::Server {
        // RFC 6455 §7.1.1: the server closes the TCP connection first; the client must follow.
        let _ = peer.stream.shutdown(Shutdown::Write);
    }
    peer.expect_eof(EOF_BOUND).map_err(|e| format!("after the close: {e}"))?;
    if peer.side == Side::Server {
        check_keys(&peer.keys)?;
    }
    Ok(())
}

/// Client frames must be masked with fresh, unpredictable keys (§5.3): never all-zero, never the
/// same key twice in a row.
pub fn check_keys(keys: &[[u8; 4]]) -> Result<(), String> {
    if let Some(i) = keys.iter().position(|k| *k == [0; 4]) {
        return Err(format!("client frame {} was masked with the all-zero key (§5.3)", i + 1));
    }
    if let Some(i) = keys.windows(2).position(|w| w[0] == w[1]) {
        return Err(format!("client frames {} and {} used the same masking key {:02x?} (§5.3)", i + 1, i + 2, keys[i]));
    }
    Ok(())
}

/// Run `cases` on `workers` threads; panic naming every failing case.
pub fn run_cases<R>(label: &str, cases: &[Case], workers: usize, run: R)
where
    R: Fn(&Case) -> Result<(), String> + Sync,
{
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let slowest: Mutex<(Duration, String)> = Mutex::new((Duration::ZERO, String::new()));
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let t = Instant::now();
                let r = run(case);
                let took = t.elapsed();
                {
                    let mut sl = slowest.lock().unwrap();
                    if took > sl.0 {
                        *sl = (took, case.id.clone());
                    }
                }
                if let Err(e) = r {
                    let msg = format!(
                        "case {} [{}] {} — expected: {}\n      {e}",
                        case.id,
                        case.rfc,
                        case.desc,
                        case.outcome()
                    );
                    failures.lock().unwrap().push((i, msg));
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(i, _)| *i);
    let (slow, slow_id) = slowest.into_inner().unwrap();
    eprintln!(
        "{label}: {} cases in {:.2?} (slowest: {slow_id} {slow:.2?}), {} failed",
        cases.len(),
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        let list: Vec<String> = failures.into_iter().map(|(_, m)| m).collect();
        panic!("{label}: {} of {} cases failed:\n  {}", list.len(), cases.len(), list.join("\n  "));
    }
}

// ---------------------------------------------------------------------------------------------
// The case tables
// ---------------------------------------------------------------------------------------------

/// Category keys and names, in order.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("1", "Framing"),
    ("2", "Pings/Pongs"),
    ("3", "Reserved bits"),
    ("4", "Opcodes"),
    ("5", "Fragmentation"),
    ("6", "UTF-8 handling"),
    ("7", "Close handling"),
    ("9", "Limits/Performance"),
    ("10", "Misc (auto-fragmentation)"),
    ("M", "Masking (wsloop extension)"),
];

/// Every case of every category.
pub fn all_cases() -> Vec<Case> {
    CATEGORIES.iter().flat_map(|(c, _)| cases(c)).collect()
}

/// The cases of one category.
pub fn cases(cat: &str) -> Vec<Case> {
    match cat {
        "1" => cat1(),
        "2" => cat2(),
        "3" => cat3(),
        "4" => cat4(),
        "5" => cat5(),
        "6" => cat6(),
        "7" => cat7(),
        "9" => cat9(),
        "10" => cat10(),
        "M" => cat_m(),
        other => panic!("no category {other}"),
    }
}

const HELLO: &[u8] = b"Hello, world!";
const BIN8: &[u8] = &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];

fn cat1() -> Vec<Case> {
    const RFC: &str = "§5.2, §5.6";
    let lens = [0usize, 125, 126, 127, 128, 65535, 65536];
    let mut v = Vec::new();
    for (sub, op, fill, name) in [(1, TEXT, b'*', "text"), (2, BINARY, 0xfe, "binary")] {
        for (i, &n) in lens.iter().enumerate() {
            let p = vec![fill; n];
            v.push(
                Case::new(format!("1.{sub}.{}", i + 1), "1", RFC, format!("{name} message, {n} bytes"))
                    .send(vec![frame(op, true, &p)])
                    .expect_msg(op, &p),
            );
        }
        let p = vec![fill; 65536];
        v.push(
            Case::new(
                format!("1.{sub}.8"),
                "1",
                RFC,
                format!("{name} message, 65536 bytes, sent in chops of 997 bytes"),
            )
            .send_chop(vec![frame(op, true, &p)], Chop::Bytes(997))
            .expect_msg(op, &p),
        );
    }
    v.push(
        Case::new("1.3.1", "1", "§5.2", "binary frame header with the 64-bit length's most significant bit set")
            .pieces(binary(b"x").announce((1 << 63) | 5), vec![0])
            .fails(1002),
    );
    v.push(
        Case::new("1.3.2", "1", RFC, "text message, 1 MiB, in one frame, sent in one write")
            .send(vec![text(vec![b'a'; 1 << 20])])
            .echo_text(vec![b'a'; 1 << 20]),
    );
    v.push(
        Case::new("1.4.1", "1", "§4.1, §4.2.2", "text message in the same TCP write as the 101 response")
            .only(Only::Client)
            .early()
            .send(vec![text(HELLO)])
            .echo_text(HELLO),
    );
    v.push(
        Case::new("1.4.2", "1", "§4.1, §4.2.2, §5.5.2", "ping and binary message in the same TCP write as the 101")
            .only(Only::Client)
            .early()
            .send(vec![ping(HELLO), binary(BIN8)])
            .expect_pong(HELLO)
            .echo_binary(BIN8),
    );
    v
}

fn cat2() -> Vec<Case> {
    const RFC: &str = "§5.5.2, §5.5.3";
    let pings: Vec<Vec<u8>> = (0..10).map(|i| format!("payload-{i}").into_bytes()).collect();
    let mut c10 =
        Case::new("2.10", "2", RFC, "10 pings with payloads sent at once").send(pings.iter().map(ping).collect());
    let mut c11 = Case::new("2.11", "2", RFC, "10 pings with payloads, sent in 1-byte chops")
        .send_chop(pings.iter().map(ping).collect(), Chop::Bytes(1));
    for p in &pings {
        c10 = c10.expect_pong(p);
        c11 = c11.expect_pong(p);
    }
    vec![
        Case::new("2.1", "2", RFC, "ping without payload").send(vec![ping(b"")]).expect_pong(b""),
        Case::new("2.2", "2", RFC, "ping with a small text payload").send(vec![ping(HELLO)]).expect_pong(HELLO),
        Case::new("2.3", "2", RFC, "ping with a small binary payload").send(vec![ping(BIN8)]).expect_pong(BIN8),
        Case::new("2.4", "2", RFC, "ping with a 125-byte binary payload")
            .send(vec![ping([0xfe; 125])])
            .expect_pong([0xfe; 125]),
        Case::new("2.5", "2", "§5.5", "ping with a 126-byte payload (control frame too long)")
            .send(vec![ping([0xfe; 126])])
            .fails(1002),
        Case::new("2.6", "2", RFC, "ping with a 125-byte payload, sent in 1-byte chops")
            .send_chop(vec![ping([0xfe; 125])], Chop::Bytes(1))
            .expect_pong([0xfe; 125]),
        Case::new("2.7", "2", "§5.5.3", "unsolicited pong without payload (ignored)").send(vec![pong(b"")]),
        Case::new("2.8", "2", "§5.5.3", "unsolicited pong with payload (ignored)")
            .send(vec![pong(b"unsolicited pong payload")]),
        Case::new("2.9", "2", RFC, "unsolicited pong, then a ping")
            .send(vec![pong(b"unsolicited pong payload"), ping(b"ping payload")])
            .expect_pong(b"ping payload"),
        c10,
        c11,
        Case::new("2.12", "2", "§5.5", "ping header announcing 126 bytes, payload never sent: fail at the header")
            .pieces(ping([0xfe; 126]), vec![0])
            .fails(1002),
    ]
}

fn cat3() -> Vec<Case> {
    const RFC: &str = "§5.2";
    vec![
        Case::new("3.1", "3", RFC, "small text message with RSV = 1").send(vec![text(HELLO).rsv(1)]).fails(1002),
        Case::new("3.2", "3", RFC, "text message, then text with RSV = 2, then ping")
            .send(vec![text(HELLO), text(HELLO).rsv(2), ping(HELLO)])
            .echo_text(HELLO)
            .fails(1002),
        Case::new("3.3", "3", RFC, "text message, then text with RSV = 3, then ping, in frame-wise chops")
            .send_chop(vec![text(HELLO), text(HELLO).rsv(3), ping(HELLO)], Chop::PerFrame)
            .echo_text(HELLO)
            .fails(1002),
        Case::new("3.4", "3", RFC, "text message, then text with RSV = 4, then ping, in 1-byte chops")
            .send_chop(vec![text(HELLO), text(HELLO).rsv(4), ping(HELLO)], Chop::Bytes(1))
            .echo_text(HELLO)
            .fails(1002),
        Case::new("3.5", "3", RFC, "small binary message with RSV = 5").send(vec![binary(BIN8).rsv(5)]).fails(1002),
        Case::new("3.6", "3", RFC, "ping with RSV = 6").send(vec![ping(HELLO).rsv(6)]).fails(1002),
        Case::new("3.7", "3", RFC, "close with RSV = 7").send(vec![close(1000, b"").rsv(7)]).fails(1002),
        Case::new("3.8", "3", RFC, "fragmented text whose continuation frame has RSV1 set")
            .send(vec![frame(TEXT, false, b"frag1"), cont(true, b"frag2").rsv(4)])
            .fails(1002),
        Case::new(
            "3.9",
            "3",
            RFC,
            "text header with RSV1 announcing 100 bytes, payload never sent: fail at the header",
        )
        .pieces(text([b'x'; 100]).rsv(4), vec![0])
        .fails(1002),
    ]
}

fn cat4() -> Vec<Case> {
    const RFC: &str = "§5.2";
    let p = b"reserved opcode payload";
    let mut v = Vec::new();
    for (sub, ops) in [(1, [3u8, 4, 5, 6, 7]), (2, [11, 12, 13, 14, 15])] {
        let kind = if sub == 1 { "non-control" } else { "control" };
        v.push(
            Case::new(format!("4.{sub}.1"), "4", RFC, format!("frame with reserved {kind} opcode {}", ops[0]))
                .send(vec![frame(ops[0], true, b"")])
                .fails(1002),
        );
        v.push(
            Case::new(
                format!("4.{sub}.2"),
                "4",
                RFC,
                format!("frame with reserved {kind} opcode {} and a payload", ops[1]),
            )
            .send(vec![frame(ops[1], true, p)])
            .fails(1002),
        );
        v.push(
            Case::new(
                format!("4.{sub}.3"),
                "4",
                RFC,
                format!("text message, then reserved opcode {}, then ping", ops[2]),
            )
            .send(vec![text(HELLO), frame(ops[2], true, b""), ping(HELLO)])
            .echo_text(HELLO)
            .fails(1002),
        );
        for (k, &op) in ops[3..].iter().enumerate() {
            v.push(
                Case::new(
                    format!("4.{sub}.{}", k + 4),
                    "4",
                    RFC,
                    format!("text message, then reserved opcode {op} with payload, then ping"),
                )
                .send(vec![text(HELLO), frame(op, true, p), ping(HELLO)])
                .echo_text(HELLO)
                .fails(1002),
            );
        }
    }
    for (k, op) in [3u8, 11].into_iter().enumerate() {
        v.push(
            Case::new(
                format!("4.3.{}", k + 1),
                "4",
                RFC,
                format!(
                    "header with reserved opcode {op} announcing 100 bytes, payload never sent: fail at the header"
                ),
            )
            .pieces(frame(op, true, [b'x'; 100]), vec![0])
            .fails(1002),
        );
    }
    v
}

fn cat5() -> Vec<Case> {
    const RFC: &str = "§5.4";
    let two = || vec![frame(TEXT, false, b"fragment1"), cont(true, b"fragment2")];
    let mut v = vec![
        Case::new("5.1", "5", "§5.4, §5.5", "ping fragmented into 2 frames")
            .send(vec![frame(PING, false, b"fragment1"), cont(true, b"fragment2")])
            .fails(1002),
        Case::new("5.2", "5", "§5.4, §5.5", "pong fragmented into 2 frames")
            .send(vec![frame(PONG, false, b"fragment1"), cont(true, b"fragment2")])
            .fails(1002),
        Case::new("5.3", "5", RFC, "text message in 2 fragments").send(two()).echo_text(b"fragment1fragment2"),
        Case::new("5.4", "5", RFC, "text message in 2 fragments, frame-wise chops")
            .send_chop(two(), Chop::PerFrame)
            .echo_text(b"fragment1fragment2"),
        Case::new("5.5", "5", RFC, "text message in 2 fragments, 1-byte chops")
            .send_chop(two(), Chop::Bytes(1))
            .echo_text(b"fragment1fragment2"),
    ];
    for (id, chop, how) in [
        ("5.6", Chop::Whole, "one chop"),
        ("5.7", Chop::PerFrame, "frame-wise chops"),
        ("5.8", Chop::Bytes(1), "1-byte chops"),
    ] {
        v.push(
            Case::new(
                id,
                "5",
                "§5.4, §5.5.2",
                format!("text fragment, ping (pong must come before the last fragment is sent), last fragment; {how}"),
            )
            .send_chop(vec![frame(TEXT, false, b"fragment1"), ping(b"pongme!")], chop)
            .expect_pong(b"pongme!")
            .send_chop(vec![cont(true, b"fragment2")], chop)
            .echo_text(b"fragment1fragment2"),
        );
    }
    for (n, fin) in [(9, true), (12, false)] {
        for (k, (chop, how)) in
            [(Chop::Whole, "one chop"), (Chop::PerFrame, "frame-wise chops"), (Chop::Bytes(1), "1-byte chops")]
                .into_iter()
                .enumerate()
        {
            v.push(
                Case::new(
                    format!("5.{}", n + k),
                    "5",
                    RFC,
                    format!("continuation (FIN = {fin}) with nothing to continue, then a text message; {how}"),
                )
                .send_chop(vec![cont(fin, b"non-continuation payload"), text(HELLO)], chop)
                .fails(1002),
            );
        }
    }
    v.push(
        Case::new(
            "5.15",
            "5",
            RFC,
            "text in 2 fragments, then a continuation (FIN = false) with nothing to continue, then text",
        )
        .send(vec![
            frame(TEXT, false, b"fragment1"),
            cont(true, b"fragment2"),
            cont(false, b"fragment3"),
            text(b"fragment4"),
        ])
        .echo_text(b"fragment1fragment2")
        .fails(1002),
    );
    for (id, fin) in [("5.16", false), ("5.17", true)] {
        let mut fs = Vec::new();
        for _ in 0..2 {
            fs.extend([cont(fin, b"fragment1"), frame(TEXT, false, b"fragment2"), cont(true, b"fragment3")]);
        }
        v.push(
            Case::new(
                id,
                "5",
                RFC,
                format!("twice: continuation (FIN = {fin}) with nothing to continue, then text in 2 fragments"),
            )
            .send(fs)
            .fails(1002),
        );
    }
    v.push(
        Case::new("5.18", "5", RFC, "text in 2 fragments, both with the text opcode")
            .send(vec![frame(TEXT, false, b"fragment1"), frame(TEXT, true, b"fragment2")])
            .fails(1002),
    );
    for (id, chop, how) in [("5.19", Chop::PerFrame, "frame-wise chops"), ("5.20", Chop::Bytes(1), "1-byte chops")] {
        v.push(
            Case::new(
                id,
                "5",
                "§5.4, §5.5.2",
                format!("text in 5 fragments with 2 pings between (each pong before the next fragment); {how}"),
            )
            .send_chop(vec![frame(TEXT, false, b"fragment1"), cont(false, b"fragment2"), ping(b"pongme 1!")], chop)
            .expect_pong(b"pongme 1!")
            .pause(100)
            .send_chop(vec![cont(false, b"fragment3"), cont(false, b"fragment4"), ping(b"pongme 2!")], chop)
            .expect_pong(b"pongme 2!")
            .send_chop(vec![cont(true, b"fragment5")], chop)
            .echo_text(b"fragment1fragment2fragment3fragment4fragment5"),
        );
    }
    // wsloop extensions: more fragment counts, binary, and the remaining §5.4 violations.
    let bin: Vec<u8> = (0..=255u8).collect();
    let txt: Vec<u8> = "fragmented κόσμε text message with 10 fragments".as_bytes().to_vec();
    v.extend([
        Case::new("5.21", "5", RFC, "binary message in 2 fragments")
            .send(fragments(BINARY, &bin, &[100]))
            .echo_binary(&bin),
        Case::new("5.22", "5", RFC, "text message in 1 frame whose opcode frame has FIN set (1 fragment)")
            .send(fragments(TEXT, &txt, &[]))
            .echo_text(&txt),
        Case::new("5.23", "5", RFC, "text message in 10 fragments, cut inside multi-byte characters")
            .send(fragments(TEXT, &txt, &[1, 5, 12, 13, 14, 16, 20, 30, 40]))
            .echo_text(&txt),
        Case::new("5.24", "5", RFC, "binary message in 256 one-byte fragments, 1-byte chops")
            .send_chop(fragmented(BINARY, &bin, 1), Chop::Bytes(1))
            .echo_binary(&bin),
        Case::new("5.25", "5", RFC, "binary message with empty first, middle and last fragments")
            .send(vec![
                frame(BINARY, false, b""),
                cont(false, &bin),
                cont(false, b""),
                cont(false, BIN8),
                cont(true, b""),
            ])
            .echo_binary([&bin[..], BIN8].concat()),
        Case::new("5.26", "5", RFC, "binary frame inside a fragmented text message")
            .send(vec![frame(TEXT, false, b"fragment1"), binary(BIN8), cont(true, b"fragment2")])
            .fails(1002),
        Case::new("5.27", "5", RFC, "text frame inside a fragmented binary message")
            .send(vec![frame(BINARY, false, BIN8), text(HELLO), cont(true, BIN8)])
            .fails(1002),
        Case::new("5.28", "5", "§5.4, §5.5", "close frame without FIN (fragmented control frame)")
            .send(vec![frame(CLOSE, false, 1000u16.to_be_bytes()), cont(true, b"")])
            .fails(1002),
        Case::new("5.29", "5", "§5.4, §5.5.2", "binary in 4 fragments, a 125-byte ping after each of the first 3")
            .send(vec![frame(BINARY, false, &bin[..64]), ping([1; 125])])
            .expect_pong([1; 125])
            .send(vec![cont(false, &bin[64..128]), ping([2; 125])])
            .expect_pong([2; 125])
            .send(vec![cont(false, &bin[128..192]), ping([3; 125])])
            .expect_pong([3; 125])
            .send(vec![cont(true, &bin[192..])])
            .echo_binary(&bin),
        Case::new("5.30", "5", "§5.4, §5.5.3", "unsolicited pong between the fragments of a text message")
            .send(vec![frame(TEXT, false, b"fragment1"), pong(b"unsolicited"), cont(true, b"fragment2")])
            .echo_text(b"fragment1fragment2"),
        Case::new("5.31", "5", "§5.4, §5.5.1", "close between the fragments of a text message: no echo")
            .send(vec![frame(TEXT, false, b"fragment1"), close(1000, b"")])
            .closes(CloseExp::Code(1000)),
        Case::new(
            "5.32",
            "5",
            RFC,
            "continuation header (nothing to continue), payload never sent: fail at the header",
        )
        .pieces(cont(true, [b'x'; 100]), vec![0])
        .fails(1002),
    ]);
    v
}

/// The UTF-8 sequences of Autobahn 6.5-6.23 (from Markus Kuhn's decoder stress test): id, what,
/// bytes, whether valid.
pub fn utf8_sequences() -> Vec<(String, String, Vec<u8>, bool)> {
    let mut v: Vec<(String, String, Vec<u8>, bool)> = Vec::new();
    let mut group = |g: u32, what: &str, seqs: Vec<Vec<u8>>| {
        for (i, s) in seqs.into_iter().enumerate() {
            let valid = std::str::from_utf8(&s).is_ok();
            v.push((format!("6.{g}.{}", i + 1), what.to_string(), s, valid));
        }
    };
    let b = |s: &[u8]| s.to_vec();
    let kosme = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    group(
        5,
        "valid UTF-8",
        vec![
            b(kosme),
            b(b"hello$world"),
            b("hello¢world".as_bytes()),
            b("hello€world".as_bytes()),
            b("hello𤭢world".as_bytes()),
        ],
    );
    group(6, "prefix of κόσμε", (1..=kosme.len()).map(|i| b(&kosme[..i])).collect());
    group(
        7,
        "first possible sequence of a length",
        vec![b(b"\x00"), b(b"\xc2\x80"), b(b"\xe0\xa0\x80"), b(b"\xf0\x90\x80\x80")],
    );
    group(8, "first possible 5/6-byte sequence", vec![b(b"\xf8\x88\x80\x80\x80"), b(b"\xfc\x84\x80\x80\x80\x80")]);
    group(
        9,
        "last possible sequence of a length",
        vec![b(b"\x7f"), b(b"\xdf\xbf"), b(b"\xef\xbf\xbf"), b(b"\xf4\x8f\xbf\xbf")],
    );
    group(
        10,
        "last possible 4/5/6-byte form",
        vec![b(b"\xf7\xbf\xbf\xbf"), b(b"\xfb\xbf\xbf\xbf\xbf"), b(b"\xfd\xbf\xbf\xbf\xbf\xbf")],
    );
    group(
        11,
        "boundary condition",
        vec![
            b(b"\xed\x9f\xbf"),
            b(b"\xee\x80\x80"),
            b(b"\xef\xbf\xbd"),
            b(b"\xf4\x8f\xbf\xbf"),
            b(b"\xf4\x90\x80\x80"),
        ],
    );
    let conts: Vec<u8> = (0x80..=0xbf).collect();
    group(
        12,
        "unexpected continuation bytes",
        vec![
            b(b"\x80"),
            b(b"\xbf"),
            b(b"\x80\xbf"),
            b(b"\x80\xbf\x80"),
            b(b"\x80\xbf\x80\xbf"),
            b(b"\x80\xbf\x80\xbf\x80"),
            b(b"\x80\xbf\x80\xbf\x80\xbf"),
            conts,
        ],
    );
    let lonely = |r: std::ops::RangeInclusive<u8>| r.flat_map(|c| [c, b' ']).collect::<Vec<u8>>();
    group(
        13,
        "lonely start bytes, each followed by a space",
        vec![lonely(0xc0..=0xdf), lonely(0xe0..=0xef), lonely(0xf0..=0xf7), lonely(0xf8..=0xfb), lonely(0xfc..=0xfd)],
    );
    let missing: Vec<Vec<u8>> = vec![
        b(b"\xc0"),
        b(b"\xe0\x80"),
        b(b"\xf0\x80\x80"),
        b(b"\xf8\x80\x80\x80"),
        b(b"\xfc\x80\x80\x80\x80"),
        b(b"\xdf"),
        b(b"\xef\xbf"),
        b(b"\xf7\xbf\xbf"),
        b(b"\xfb\xbf\xbf\xbf"),
        b(b"\xfd\xbf\xbf\xbf\xbf"),
    ];
    let concat = missing.concat();
    group(14, "sequence with its last continuation byte missing", missing);
    group(15, "concatenation of the 6.14 sequences", vec![concat]);
    group(16, "impossible bytes", vec![b(b"\xfe"), b(b"\xff"), b(b"\xfe\xfe\xff\xff")]);
    group(
        17,
        "overlong '/'",
        vec![
            b(b"\xc0\xaf"),
            b(b"\xe0\x80\xaf"),
            b(b"\xf0\x80\x80\xaf"),
            b(b"\xf8\x80\x80\x80\xaf"),
            b(b"\xfc\x80\x80\x80\x80\xaf"),
        ],
    );
    group(
        18,
        "maximum overlong sequence",
        vec![
            b(b"\xc1\xbf"),
            b(b"\xe0\x9f\xbf"),
            b(b"\xf0\x8f\xbf\xbf"),
            b(b"\xf8\x87\xbf\xbf\xbf"),
            b(b"\xfc\x83\xbf\xbf\xbf\xbf"),
        ],
    );
    group(
        19,
        "overlong NUL",
        vec![
            b(b"\xc0\x80"),
            b(b"\xe0\x80\x80"),
            b(b"\xf0\x80\x80\x80"),
            b(b"\xf8\x80\x80\x80\x80"),
            b(b"\xfc\x80\x80\x80\x80\x80"),
        ],
    );
    group(
        20,
        "single UTF-16 surrogate",
        [
            b"\xed\xa0\x80",
            b"\xed\xad\xbf",
            b"\xed\xae\x80",
            b"\xed\xaf\xbf",
            b"\xed\xb0\x80",
            b"\xed\xbe\x80",
            b"\xed\xbf\xbf",
        ]
        .iter()
        .map(|s| b(*s))
        .collect(),
    );
    let hi: [&[u8]; 4] = [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf"];
    let lo: [&[u8]; 2] = [b"\xed\xb0\x80", b"\xed\xbf\xbf"];
    group(21, "paired UTF-16 surrogates", hi.iter().flat_map(|h| lo.iter().map(move |l| [*h, *l].concat())).collect());
    let nonchars: Vec<Vec<u8>> = (0..=16u32)
        .flat_map(|plane| [plane * 0x10000 + 0xfffe, plane * 0x10000 + 0xffff])
        .map(|c| char::from_u32(c).expect("noncharacter is a char").to_string().into_bytes())
        .collect();
    group(22, "noncharacter (valid)", nonchars);
    group(
        23,
        "special (valid)",
        (0xfff9..=0xffffu32).map(|c| char::from_u32(c).unwrap().to_string().into_bytes()).collect(),
    );
    v
}

/// The shortest prefix of `s` that cannot begin any valid UTF-8 string, if there is one (else `s`
/// is invalid only because it ends inside a character).
pub fn fail_point(s: &[u8]) -> Option<usize> {
    (1..=s.len()).find(|&k| matches!(std::str::from_utf8(&s[..k]), Err(e) if e.error_len().is_some()))
}

fn cat6() -> Vec<Case> {
    const RFC: &str = "§5.6, §8.1";
    let kosme = "κόσμε".as_bytes();
    let hello = "Hello-µ@ßöäüàá-UTF-8!!".as_bytes();
    let bad: Vec<u8> = [kosme, b"\xed\xa0\x80", b"edited"].concat();
    let ff: Vec<u8> = [kosme, b"\xf4\x90\x80\x80", b"edited"].concat();
    let mut v = vec![
        Case::new("6.1.1", "6", RFC, "empty text message").send(vec![text(b"")]).echo_text(b""),
        Case::new("6.1.2", "6", RFC, "text message in 3 empty fragments")
            .send(vec![frame(TEXT, false, b""), cont(false, b""), cont(true, b"")])
            .echo_text(b""),
        Case::new("6.1.3", "6", RFC, "text in 3 fragments, first and last empty")
            .send(vec![frame(TEXT, false, b""), cont(false, b"middle frame payload"), cont(true, b"")])
            .echo_text(b"middle frame payload"),
        Case::new("6.2.1", "6", RFC, "valid UTF-8 with 2-byte characters, one frame")
            .send(vec![text(hello)])
            .echo_text(hello),
        Case::new("6.2.2", "6", RFC, "the same in 2 fragments split at a character boundary")
            .send(fragments(TEXT, hello, &[11]))
            .echo_text(hello),
        Case::new("6.2.3", "6", RFC, "the same in 1-byte fragments (characters split across frames)")
            .send(fragmented(TEXT, hello, 1))
            .echo_text(hello),
        Case::new("6.2.4", "6", RFC, "κόσμε in 1-byte fragments").send(fragmented(TEXT, kosme, 1)).echo_text(kosme),
        Case::new("6.3.1", "6", RFC, "κόσμε + a surrogate (ED A0 80) + 'edited', one frame")
            .send(vec![text(&bad)])
            .fails(1007),
        Case::new("6.3.2", "6", RFC, "the same in 1-byte fragments, whole message sent")
            .send(fragmented(TEXT, &bad, 1))
            .fails(1007),
        Case::new(
            "6.4.1",
            "6",
            RFC,
            "fail fast: fragments 'κόσμε', 'F4 90 80 80' (> U+10FFFF) sent, the final fragment never",
        )
        .send_chop(vec![frame(TEXT, false, kosme), cont(false, b"\xf4\x90\x80\x80")], Chop::PerFrame)
        .fails(1007),
        Case::new("6.4.2", "6", RFC, "fail fast: fragments 'κόσμε F4', '90' sent, the rest never")
            .send_chop(vec![frame(TEXT, false, &ff[..12]), cont(false, &ff[12..13])], Chop::PerFrame)
            .fails(1007),
        Case::new(
            "6.4.3",
            "6",
            RFC,
            "fail fast: one frame 'κόσμε F4 90 80 80 edited', only 'κόσμε' then 'F4 90 80 80' sent",
        )
        .pieces(text(&ff), vec![11, 15])
        .fails(1007),
        Case::new("6.4.4", "6", RFC, "fail fast: the same frame, only 'κόσμε F4' then '90' sent")
            .pieces(text(&ff), vec![12, 13])
            .fails(1007),
    ];
    for (id, what, seq, valid) in utf8_sequences() {
        let shown = seq.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ");
        let shown = if seq.len() > 12 { format!("{} bytes", seq.len()) } else { shown };
        let c = Case::new(id, "6", RFC, format!("{what}: {shown}"));
        v.push(if valid {
            c.send(vec![text(&seq)]).echo_text(&seq)
        } else if fail_point(&seq).is_some() {
            // Fail fast: the frame announces more bytes than are ever sent.
            let framed = [&seq[..], b"-never-sent-padding"].concat();
            let c = Case { desc: format!("{} (frame left incomplete)", c.desc), ..c };
            c.pieces(text(framed), vec![seq.len()]).fails(1007)
        } else {
            c.send(vec![text(&seq)]).fails(1007)
        });
    }
    // wsloop extension: every valid multi-byte character split at every byte boundary, across
    // fragments, and across reads inside one frame.
    let chars =
        ['\u{80}', '\u{7ff}', '\u{800}', '€', '\u{d7ff}', '\u{e000}', '\u{ffff}', '\u{10000}', '𤭢', '\u{10ffff}'];
    for (i, ch) in chars.iter().enumerate() {
        let msg = format!("a{ch}b").into_bytes();
        let mut c = Case::new(
            format!("6.24.{}", i + 1),
            "6",
            RFC,
            format!("'a U+{:04X} b' split into 2 fragments at every byte, then in 1-byte chops", *ch as u32),
        );
        for cut in 1..msg.len() {
            c = c.send(fragments(TEXT, &msg, &[cut])).echo_text(&msg);
        }
        c = c.send_chop(vec![text(&msg)], Chop::Bytes(1)).echo_text(&msg);
        v.push(c);
    }
    v.push(
        Case::new("6.25.1", "6", RFC, "fail fast across fragments: 'a', then 'ED' ending a fragment, then 'A0'")
            .send_chop(vec![frame(TEXT, false, b"a\xed"), cont(false, b"\xa0")], Chop::PerFrame)
            .fails(1007),
    );
    v.push(
        Case::new("6.25.2", "6", RFC, "message ends inside a character: 'a E2 82' in a final frame")
            .send(fragments(TEXT, b"a\xe2\x82", &[2]))
            .fails(1007),
    );
    v
}

fn cat7() -> Vec<Case> {
    let mut v = vec![
        Case::new("7.1.1", "7", "§5.5.1, §7.1.2", "text message, then a clean close")
            .send(vec![text(HELLO)])
            .echo_text(HELLO),
        Case::new("7.1.2", "7", "§5.5.1", "two close frames: one close back, then TCP close")
            .send(vec![close(1000, b""), close(1000, b"")])
            .closes(CloseExp::Code(1000)),
        Case::new("7.1.3", "7", "§5.5.1", "ping after close: no pong")
            .send_chop(vec![close(1000, b""), ping(HELLO)], Chop::PerFrame)
            .closes(CloseExp::Code(1000)),
        Case::new("7.1.4", "7", "§5.5.1", "text message after close: no echo")
            .send_chop(vec![close(1000, b""), text(HELLO)], Chop::PerFrame)
            .closes(CloseExp::Code(1000)),
        Case::new("7.1.5", "7", "§5.5.1", "text fragment, close, last fragment: no echo")
            .send_chop(
                vec![frame(TEXT, false, b"fragment1"), close(1000, b""), cont(true, b"fragment2")],
                Chop::PerFrame,
            )
            .closes(CloseExp::Code(1000)),
        Case::new("7.1.6", "7", "§5.5.1, §7.1.2", "256 KiB text, close, ping, in one write: echo, close, no pong")
            .send(vec![text(vec![b'B'; 256 << 10]), close(1000, b""), ping(HELLO)])
            .echo_text(vec![b'B'; 256 << 10])
            .closes(CloseExp::Code(1000)),
        Case::new("7.3.1", "7", "§5.5.1, §7.4", "close with an empty payload")
            .send(vec![close_raw(b"")])
            .closes(CloseExp::EmptyOr1000),
        Case::new("7.3.2", "7", "§5.5.1", "close with a 1-byte payload").send(vec![close_raw(b"\x03")]).fails(1002),
        Case::new("7.3.3", "7", "§5.5.1", "close 1000 without reason")
            .send(vec![close(1000, b"")])
            .closes(CloseExp::Code(1000)),
        Case::new("7.3.4", "7", "§5.5.1", "close 1000 with a short reason")
            .send(vec![close(1000, b"Hello World!")])
            .closes(CloseExp::Code(1000)),
        Case::new("7.3.5", "7", "§5.5.1, §5.5", "close 1000 with a 123-byte reason (125-byte payload)")
            .send(vec![close(1000, [b'*'; 123])])
            .closes(CloseExp::Code(1000)),
        Case::new("7.3.6", "7", "§5.5", "close 1000 with a 124-byte reason (126-byte payload: control frame too long)")
            .send(vec![close(1000, [b'*'; 124])])
            .fails(1002),
        Case::new("7.5.1", "7", "§5.5.1, §8.1", "close 1000 with an invalid UTF-8 reason")
            .send(vec![close(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            )])
            .fails(1007),
        Case::new("7.5.2", "7", "§5.5.1, §8.1", "close 1000 whose reason ends inside a character ('a E2 82')")
            .send(vec![close(1000, b"a\xe2\x82")])
            .fails(1007),
    ];
    let valid = [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999, 1012, 1013, 1014];
    for (i, code) in valid.into_iter().enumerate() {
        v.push(
            Case::new(format!("7.7.{}", i + 1), "7", "§7.4.1, §7.4.2", format!("close with valid code {code}"))
                .send(vec![close(code, b"")])
                .closes(CloseExp::Code(code)),
        );
    }
    let invalid = [0u16, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 1015, 5000, 65535];
    for (i, code) in invalid.into_iter().enumerate() {
        v.push(
            Case::new(format!("7.9.{}", i + 1), "7", "§7.4.1, §7.4.2", format!("close with invalid code {code}"))
                .send(vec![close(code, b"")])
                .fails(1002),
        );
    }
    v
}

fn cat9() -> Vec<Case> {
    const RFC: &str = "§5.2, §5.4, §10.4";
    let mib = 1usize << 20;
    let t = |n: usize| vec![b'*'; n];
    let bn = |n: usize| (0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
    let b64 = |i: usize| (0..64).map(|k| (i * 7 + k) as u8).collect::<Vec<u8>>();
    let euros = "€".repeat(65536 / 3).into_bytes();
    let mut many_t = Case::new("9.7.3", "9", RFC, "1000 text messages of 64 bytes in one write, echoed in order");
    let mut many_b = Case::new("9.8.3", "9", RFC, "1000 binary messages of 64 bytes in one write, echoed in order");
    let mut ft = Vec::new();
    let mut fb = Vec::new();
    for i in 0..1000 {
        ft.push(text(format!("{i:064}")));
        fb.push(binary(b64(i)));
    }
    many_t = many_t.send(ft);
    many_b = many_b.send(fb);
    for i in 0..1000 {
        many_t = many_t.echo_text(format!("{i:064}"));
        many_b = many_b.echo_binary(b64(i));
    }
    let empty_frags: Vec<F> = (0..65_537).map(|i| frame(if i == 0 { TEXT } else { CONT }, false, b"")).collect();
    vec![
        Case::new("9.1.1", "9", RFC, "text message of 64 KiB").send(vec![text(t(64 << 10))]).echo_text(t(64 << 10)),
        Case::new("9.1.3", "9", RFC, "text message of 1 MiB").send(vec![text(t(mib))]).echo_text(t(mib)),
        Case::new("9.1.6", "9", RFC, "text message of 16 MiB (the default frame limit) in one frame")
            .send(vec![text(t(16 * mib))])
            .echo_text(t(16 * mib)),
        Case::new("9.2.1", "9", RFC, "binary message of 64 KiB")
            .send(vec![binary(bn(64 << 10))])
            .echo_binary(bn(64 << 10)),
        Case::new("9.2.6", "9", RFC, "binary message of 16 MiB in one frame")
            .send(vec![binary(bn(16 * mib))])
            .echo_binary(bn(16 * mib)),
        Case::new(
            "9.3.1",
            "9",
            RFC,
            "text message of 4 MiB in 65,536 fragments of 64 bytes (the default fragment limit)",
        )
        .send(fragmented(TEXT, &t(4 * mib), 64))
        .echo_text(t(4 * mib)),
        Case::new("9.4.6", "9", RFC, "binary message of 4 MiB in fragments of 64 KiB")
            .send(fragmented(BINARY, &bn(4 * mib), 64 << 10))
            .echo_binary(bn(4 * mib)),
        Case::new("9.5.1", "9", RFC, "text message of 1 MiB in one frame, written in 64-byte chops")
            .send_chop(vec![text(t(mib))], Chop::Bytes(64))
            .echo_text(t(mib)),
        Case::new("9.6.1", "9", RFC, "binary message of 1 MiB in one frame, written in 64-byte chops")
            .send_chop(vec![binary(bn(mib))], Chop::Bytes(64))
            .echo_binary(bn(mib)),
        many_t,
        many_b,
        Case::new("9.10.1", "9", RFC, "binary 64 KiB frame written in 7-byte chops")
            .send_chop(vec![binary(bn(64 << 10))], Chop::Bytes(7))
            .echo_binary(bn(64 << 10)),
        Case::new("9.10.2", "9", RFC, "text 64 KiB frame of 3-byte characters written in 5-byte chops")
            .send_chop(vec![text(&euros)], Chop::Bytes(5))
            .echo_text(&euros),
        Case::new("9.11.1", "9", "§10.4", "frame header announcing 16 MiB + 1 bytes (over the limit), no payload sent")
            .pieces(binary(b"").announce((16 << 20) + 1), vec![0])
            .fails(1009),
        Case::new("9.11.2", "9", "§10.4", "frame header announcing 2^62 bytes, no payload sent")
            .pieces(binary(b"").announce(1 << 62), vec![0])
            .fails(1009),
        Case::new("9.11.3", "9", "§10.4", "text message in 65,537 empty fragments (over the fragment limit)")
            .send(empty_frags)
            .fails(1009),
    ]
}

fn cat10() -> Vec<Case> {
    let p: Vec<u8> = (0..65536).map(|i| b'a' + (i % 26) as u8).collect();
    vec![Case::new(
        "10.1.1",
        "10",
        "§5.4",
        "auto_fragment_size = 1300: 64 KiB text sent in 1300-byte fragments, echoed in frames of ≤ 1300 B",
    )
    .setup(Setup::AutoFragment(1300))
    .send(fragmented(TEXT, &p, 1300))
    .expect_fragmented(TEXT, &p, 1300)]
}

impl Case {
    fn expect_fragmented(mut self, op: u8, payload: &[u8], max: usize) -> Case {
        self.acts.push(Act::Expect(Exp::Msg { op, payload: payload.to_vec(), max_frame: Some(max) }));
        self
    }
}

fn cat_m() -> Vec<Case> {
    let pings: Vec<Vec<u8>> = (0..20).map(|i| format!("ping {i}").into_bytes()).collect();
    let mut keys = Case::new("M.3.1", "M", "§5.3", "20 pings: the 20 pongs must be masked with fresh keys")
        .only(Only::Client)
        .send(pings.iter().map(ping).collect());
    for p in &pings {
        keys = keys.expect_pong(p);
    }
    vec![
        Case::new("M.1.1", "M", "§5.1", "unmasked text frame from the client")
            .only(Only::Server)
            .send(vec![text(HELLO).mask(MaskMode::Unmasked)])
            .fails(1002),
        Case::new("M.1.2", "M", "§5.1", "unmasked ping from the client: no pong")
            .only(Only::Server)
            .send(vec![ping(HELLO).mask(MaskMode::Unmasked)])
            .fails(1002),
        Case::new("M.1.3", "M", "§5.1", "masked text, then an unmasked text from the client")
            .only(Only::Server)
            .send(vec![text(HELLO), text(HELLO).mask(MaskMode::Unmasked)])
            .echo_text(HELLO)
            .fails(1002),
        Case::new("M.1.4", "M", "§5.3", "text masked with the all-zero key (valid)")
            .only(Only::Server)
            .send(vec![text(HELLO).mask(MaskMode::Key([0; 4]))])
            .echo_text(HELLO),
        Case::new("M.1.5", "M", "§5.1", "unmasked text header, payload never sent: fail at the header")
            .only(Only::Server)
            .pieces(text([b'x'; 100]).mask(MaskMode::Unmasked), vec![0])
            .fails(1002),
        Case::new("M.2.1", "M", "§5.1", "masked text frame from the server")
            .only(Only::Client)
            .send(vec![text(HELLO).mask(MaskMode::Masked)])
            .fails(1002),
        Case::new("M.2.2", "M", "§5.1", "masked ping from the server: no pong")
            .only(Only::Client)
            .send(vec![ping(HELLO).mask(MaskMode::Masked)])
            .fails(1002),
        Case::new("M.2.3", "M", "§5.1", "unmasked text, then a masked text from the server")
            .only(Only::Client)
            .send(vec![text(HELLO), text(HELLO).mask(MaskMode::Masked)])
            .echo_text(HELLO)
            .fails(1002),
        Case::new("M.2.4", "M", "§5.1", "masked text header, payload never sent: fail at the header")
            .only(Only::Client)
            .pieces(text([b'x'; 100]).mask(MaskMode::Masked), vec![0])
            .fails(1002),
        keys,
    ]
}

// ---------------------------------------------------------------------------------------------
// The README table
// ---------------------------------------------------------------------------------------------

/// The case list and counts of `tests/README.md`, generated from the tables above.
pub fn readme_tables() -> String {
    let all = all_cases();
    let mut s = String::new();
    s.push_str("| Category | Server cases | Client cases |\n|---|---:|---:|\n");
    let (mut ts, mut tc) = (0, 0);
    for (cat, name) in CATEGORIES {
        let cs: Vec<&Case> = all.iter().filter(|c| c.cat == *cat).collect();
        let sv = cs.iter().filter(|c| c.applies_to(Side::Client)).count();
        let cl = cs.iter().filter(|c| c.applies_to(Side::Server)).count();
        ts += sv;
        tc += cl;
        let _ = writeln!(s, "| {cat} {name} | {sv} | {cl} |");
    }
    let _ = writeln!(s, "| **Total** | **{ts}** | **{tc}** |");
    for (cat, name) in CATEGORIES {
        let _ =
            write!(s, "\n### {cat} {name}\n\n| Case | RFC 6455 | Sent | Expected | Roles |\n|---|---|---|---|---|\n");
        for c in all.iter().filter(|c| c.cat == *cat) {
            let roles = match c.only {
                Only::Both => "server, client",
                Only::Server => "server",
                Only::Client => "client",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {roles} |",
                c.id,
                c.rfc,
                c.desc.replace('|', "\\|"),
                c.outcome().replace('|', "\\|")
            );
        }
    }
    s
}

/// One test per category, each calling `$category(category, worker_threads)`: the same table for
/// the server and the client role.
macro_rules! category_tests {
    ($category:ident) => {
        #[test]
        fn c1_framing() {
            $category("1", 4);
        }
        #[test]
        fn c2_pings_pongs() {
            $category("2", 4);
        }
        #[test]
        fn c3_reserved_bits() {
            $category("3", 4);
        }
        #[test]
        fn c4_opcodes() {
            $category("4", 4);
        }
        #[test]
        fn c5_fragmentation() {
            $category("5", 4);
        }
        #[test]
        fn c6_utf8() {
            $category("6", 8);
        }
        #[test]
        fn c7_close() {
            $category("7", 8);
        }
        #[test]
        fn c9_limits() {
            $category("9", 2);
        }
        #[test]
        fn c10_auto_fragmentation() {
            $category("10", 1);
        }
        #[test]
        fn cm_masking() {
            $category("M", 4);
        }
    };
}
pub(crate) use category_tests;
