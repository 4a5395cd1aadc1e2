//! Fuzz a whole server connection: arbitrary bytes over a loopback socket into a running wsloop
//! server (event loop, read buffer, opening handshake, frame decoder, handler dispatch at all three
//! levels, closing handshake, timers), and check what comes back.
//!
//! Two servers are started once per fuzz process, each on its own thread (`WebSocket::spawn`) on
//! 127.0.0.1 port 0, with an echo handler whose behaviour is chosen by the request path:
//! `/frame` echoes at the frame level, `/stream` at the stream level, `/close` echoes the first
//! message and then closes with 1000 "bye", `/reject` refuses the upgrade with 403, any other path
//! echoes whole messages. Server A has roomy limits (1 MiB frames and messages, 64 KiB read buffer);
//! server B tight ones (256-byte frames, 1 KiB messages, 8 fragments, a 200-byte / 16-field handshake,
//! a 256-byte read buffer with a 1 KiB read budget, outgoing messages split into 64-byte frames).
//! Both: 200 ms open and close timeouts, no keep-alive.
//!
//! Input layout: byte 0 is a set of flags, byte 1 the seed of the write sizes, the rest the data.
//!
//! - byte 0 bits 0-1, the mode: 0 the data is sent as it is (the HTTP request parser and its error
//!   responses; a valid request there is served like any other); 1 a valid opening handshake
//!   followed by the data as raw frame bytes (the fuzzer masks them itself); 2 and 3 a valid
//!   handshake followed by frames built from the data (see `build_frames`: the harness masks them,
//!   so payloads, close codes and UTF-8 are visible to the fuzzer in clear).
//! - bits 2-3: the path of the handshake in modes 1-3 (`/`, `/frame`, `/stream`, `/close`).
//! - bit 4: server B instead of server A.
//! - bit 5: split the writes at points drawn from byte 1, with a short pause between them (at most
//!   `MAX_WRITES` writes; the rest goes in the last one).
//! - bit 6: modes 1-3: append a masked close frame (1000).
//! - bit 7: modes 1-3: wait for the `101` response before sending the frames (otherwise they are
//!   pipelined behind the request).
//!
//! Then the harness half-closes (shutdown write) and reads until the server closes (by default only
//! once the whole expected answer has arrived, see below). Checked:
//!
//! - the server closes the connection within `CLOSE_DEADLINE` (it must never hang: it has our FIN,
//!   and its own open and close timeouts are 200 ms);
//! - the server thread is alive after every input, and every `STATS_EVERY` inputs the loop's
//!   connection count returns to 0 (with `accepted == closed`): no connection leaks;
//! - what the server sent matches a model built from the sans-IO core: `RequestParser::parse` on the
//!   input gives nothing (incomplete request: no answer), an error (exactly
//!   `Rejection::from_error(e)`'s bytes) or a request (exactly the `101` response, or the 403 of
//!   `/reject`); after a `101`, a `Decoder` with the server's settings run over the rest of the input
//!   gives the echoes, pongs and the close frame the server must send (the echo of the peer's code,
//!   the error's code and reason when the peer broke the protocol, nothing after its own close);
//!   the server's frames, decoded by a client-role `Decoder`, must be exactly those, and nothing may
//!   follow its close frame.
//!
//! How exactly is set by `WSLOOP_FUZZ_STRICT` (see `Strictness`). By default (`2`) the harness
//! half-closes right after the input and requires the exact answer: this is how the target found
//! that answers queued in the pass that read the peer's FIN were dropped (fixed; see
//! `tests/regressions_connection.rs`). `1` reads until the whole expected answer has arrived
//! before half-closing; `0` half-closes at once and accepts any prefix of the answer.
//!
//! Inputs that took longer than `SLOW_INPUT` to send are only checked for liveness, since the
//! server's 200 ms open timeout may then legitimately have fired.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsloop::protocol::close::truncate_reason;
use wsloop::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use wsloop::protocol::handshake::headers::HeadLimits;
use wsloop::protocol::handshake::server::{Rejection, RequestParser, Response};
use wsloop::{
    Bytes, CloseCode, Handler, Level, LoopStats, Message, MessageKind, ProtocolError, Request, Sender, Settings,
    WebSocket,
};

/// The server must have closed the connection this long after our FIN.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
/// Inputs slower than this to send are only checked for liveness (the open timeout is 200 ms).
const SLOW_INPUT: Duration = Duration::from_millis(120);
/// Most separate writes of one split input.
const MAX_WRITES: usize = 6;
/// Pause between split writes.
const WRITE_PAUSE: Duration = Duration::from_micros(100);
/// Check that every connection is gone every this many inputs.
const STATS_EVERY: u64 = 256;
/// Server B's handshake limit: above its 256-byte read buffer, so heads longer than one read are
/// exercised (they once hit a bug: `ReadBuffer::make_room` left `recv` no room, fixed; see
/// `tests/regressions_connection.rs`).
const B_MAX_HEAD: usize = 1024;
/// The key of the handshakes the harness writes.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The mask key of the harness's own close frame.
const CLOSE_MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

// ---------------------------------------------------------------------------------------------
// The servers

/// What the handler does, by request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Message,
    Frame,
    Stream,
    Close,
    Reject,
}

fn route(path: &str) -> Path {
    match path {
        "/frame" => Path::Frame,
        "/stream" => Path::Stream,
        "/close" => Path::Close,
        "/reject" => Path::Reject,
        _ => Path::Message,
    }
}

fn reject_403() -> Rejection {
    Rejection::new(403).with_body("rejected")
}

/// An echo handler at the level its path asks for. Sends fail with `ConnectionClosed` once the
/// connection is closing; that is expected and ignored (the model accounts for it).
struct Echo {
    out: Sender,
    path: Path,
    closed: bool,
}

impl Handler for Echo {
    fn on_request(&mut self, request: &Request) -> Result<Response, Rejection> {
        self.path = route(request.path());
        if self.path == Path::Reject {
            return Err(reject_403());
        }
        Ok(Response::accept())
    }

    fn level(&self) -> Level {
        match self.path {
            Path::Frame => Level::Frame,
            Path::Stream => Level::Stream,
            _ => Level::Message,
        }
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        let _ = self.out.send(msg);
        if self.path == Path::Close && !self.closed {
            self.closed = true;
            let _ = self.out.close(CloseCode::NORMAL, "bye");
        }
        Ok(())
    }

    fn on_message_begin(&mut self, kind: MessageKind) -> wsloop::Result<()> {
        let _ = self.out.begin_message(kind);
        Ok(())
    }

    fn on_message_frame(&mut self, payload: Bytes) -> wsloop::Result<()> {
        let _ = self.out.send_frame(payload);
        Ok(())
    }

    fn on_frame_begin(&mut self, len: u64) -> wsloop::Result<()> {
        let _ = self.out.begin_frame(len);
        Ok(())
    }

    fn on_frame_data(&mut self, chunk: Bytes) -> wsloop::Result<()> {
        let _ = self.out.send_frame_data(chunk);
        Ok(())
    }

    fn on_message_end(&mut self) -> wsloop::Result<()> {
        let _ = self.out.end_message();
        Ok(())
    }
}

struct Server {
    name: &'static str,
    addr: SocketAddr,
    settings: Settings,
    sender: Sender,
    thread: Mutex<Option<JoinHandle<wsloop::Result<()>>>>,
}

impl Server {
    fn start(name: &'static str, tight: bool) -> Server {
        let mut s = Settings {
            max_frame_size: Some(1 << 20),
            max_message_size: Some(1 << 20),
            open_timeout: Duration::from_millis(200),
            close_timeout: Duration::from_millis(200),
            keepalive_interval: None,
            max_connections: 1024,
            channel_capacity: 1024,
            ..Settings::default()
        };
        if tight {
            s.max_frame_size = Some(256);
            s.max_message_size = Some(1024);
            s.max_fragments = Some(8);
            s.max_handshake_bytes = B_MAX_HEAD;
            s.max_handshake_headers = 16;
            s.read_buffer_size = 256;
            s.read_budget = 1024;
            s.auto_fragment_size = Some(64);
        }
        let factory = |out: Sender| Echo { out, path: Path::Message, closed: false };
        let mut ws = WebSocket::with_settings(factory, s.clone()).expect("server");
        let addr = ws.listen("127.0.0.1:0").expect("listen");
        let sender = ws.sender();
        let thread = ws.spawn().expect("spawn");
        Server { name, addr, settings: s, sender, thread: Mutex::new(Some(thread)) }
    }

    /// Panic (a crash for libFuzzer) if the loop thread has ended.
    fn assert_alive(&self) {
        let mut guard = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|h| h.is_finished()) {
            let result = guard.take().unwrap().join();
            panic!("server {}: the event loop thread ended: {result:?}", self.name);
        }
        assert!(guard.is_some(), "server {}: the event loop thread ended earlier", self.name);
    }

    fn stats(&self) -> LoopStats {
        self.sender.loop_stats()
    }

    /// Wait until the loop holds no connection (and has closed every one it accepted).
    fn assert_drained(&self) {
        let deadline = Instant::now() + CLOSE_DEADLINE;
        loop {
            let st = self.stats();
            // Timer entries are removed when they fire (200 ms after they were set), so they are
            // bounded by the connection rate; a leak would grow without bound.
            assert!(st.timers < 20_000, "server {}: timers pile up: {st:?}", self.name);
            if st.connections == 0 && st.accepted == st.closed {
                return;
            }
            self.assert_alive();
            assert!(Instant::now() < deadline, "server {}: connections not released: {st:?}", self.name);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn servers() -> &'static [Server; 2] {
    static SERVERS: OnceLock<[Server; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| [Server::start("A (roomy)", false), Server::start("B (tight)", true)])
}

/// How exactly the answer is checked, from `WSLOOP_FUZZ_STRICT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// `1`: read until the whole answer has arrived, then half-close, and require exactly the
    /// model's answer.
    Exact,
    /// `0`: half-close right after the input; the answer must be a prefix of the model's (the
    /// unflushed-answer bug may cut it short, but so may others: weaker).
    Prefix,
    /// Unset or `2`: half-close right after the input and require exactly the model's answer.
    ExactAfterFin,
}

fn strictness() -> Strictness {
    static STRICT: OnceLock<Strictness> = OnceLock::new();
    *STRICT.get_or_init(|| match std::env::var("WSLOOP_FUZZ_STRICT").as_deref() {
        Ok("0") => Strictness::Prefix,
        Ok("1") => Strictness::Exact,
        _ => Strictness::ExactAfterFin,
    })
}

// ---------------------------------------------------------------------------------------------
// Building the input

fn handshake(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn push_masked(out: &mut Vec<u8>, key: [u8; 4], payload: &[u8]) {
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// Frames from a compact description, repeated until the data runs out: a header byte (FIN, RSV,
/// opcode: verbatim), a length byte (bit 7 set: send the frame unmasked; bits 0-6: the 7-bit
/// length field, with 126 and 127 taking the next 2 or 8 bytes as the extended length, verbatim, so
/// non-minimal and oversized lengths are possible), then the payload in clear (as many bytes as the
/// length says, or what is left), which the harness masks with a key that varies per frame.
fn build_frames(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut n = 0u8;
    while data.len() >= 2 {
        let (h, l) = (data[0], data[1]);
        data = &data[2..];
        let masked = l & 0x80 == 0;
        let code = l & 0x7f;
        out.push(h);
        out.push(code | if masked { 0x80 } else { 0 });
        let ext = match code {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let ext = &data[..ext.min(data.len())];
        data = &data[ext.len()..];
        out.extend_from_slice(ext);
        let len = match code {
            126 | 127 => ext.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            c => u64::from(c),
        };
        let take = usize::try_from(len).unwrap_or(usize::MAX).min(data.len());
        let payload = &data[..take];
        data = &data[take..];
        if masked {
            push_masked(&mut out, [0x5a ^ n, 0xc3, 0x96 ^ n, 0x0f], payload);
        } else {
            out.extend_from_slice(payload);
        }
        n = n.wrapping_add(1);
    }
    out
}

fn close_frame_1000() -> Vec<u8> {
    let mut f = vec![0x88, 0x82];
    push_masked(&mut f, CLOSE_MASK, &1000u16.to_be_bytes());
    f
}

// ---------------------------------------------------------------------------------------------
// The model of the server's answer

/// One thing the server sends after its `101`, as a client-role decoder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// The server's frames, as a client decodes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Answer {
    items: Vec<Item>,
    /// A data message the server began and did not finish: its kind and data so far (frame and
    /// stream levels echo as the message arrives).
    open: Option<(MessageKind, Vec<u8>)>,
}

#[derive(Debug)]
struct Expected {
    /// The HTTP response, exactly (empty: the server answers nothing).
    head: Vec<u8>,
    /// Whether frames follow the head (a `101`).
    upgraded: bool,
    path: Path,
    answer: Answer,
    /// How the server's decoder ends on the rest of the input: `None` at the end of the input (the
    /// peer's FIN) or at the peer's close frame, else the error it fails the connection with.
    error: Option<ProtocolError>,
    /// Stream level, a frame cut by invalid UTF-8: how much of the unfinished message is certain.
    /// The rest depends on the read sizes (fail-fast validation delivers the valid part of a chunk
    /// only if the chunk ended before the error), and the frame is padded with zeros to its
    /// announced length: only that length is certain.
    open_certain: Option<usize>,
}

fn expect(settings: &Settings, input: &[u8]) -> Expected {
    let limits = HeadLimits { max_bytes: settings.max_handshake_bytes, max_headers: settings.max_handshake_headers };
    let mut head = Vec::new();
    let http = |head, path| Expected {
        head,
        upgraded: false,
        path,
        answer: Answer::default(),
        error: None,
        open_certain: None,
    };
    let (request, head_len) = match RequestParser::new(limits).parse(input) {
        Ok(None) => return http(head, Path::Message),
        Err(e) => {
            Rejection::from_error(&e).write(&mut head);
            return http(head, Path::Message);
        }
        Ok(Some(r)) => r,
    };
    let path = route(request.path());
    if path == Path::Reject {
        reject_403().write(&mut head);
        return http(head, path);
    }
    Response::accept().write(request.key(), &mut head);
    let (answer, error, open_certain) = model_frames(settings, path, &input[head_len..]);
    Expected { head, upgraded: true, path, answer, error, open_certain }
}

/// What the server sends in answer to `stream` (the bytes after the request head).
fn model_frames(s: &Settings, path: Path, stream: &[u8]) -> (Answer, Option<ProtocolError>, Option<usize>) {
    let mut dec = Decoder::new(DecoderConfig {
        role: Role::Server,
        max_frame_size: s.max_frame_size,
        // A stream-level handler lifts the message limit (`Connection::open`).
        max_message_size: if path == Path::Stream { None } else { s.max_message_size },
        max_fragments: s.max_fragments,
        allowed_rsv: 0,
    });
    let mut buf = BytesMut::from(stream);
    let mut answer = Answer::default();
    let mut close_sent = false;
    // The incoming message, and the incoming data frame (its announced length and data).
    let mut message: Option<(MessageKind, Vec<u8>)> = None;
    let mut frame: Option<(u64, Vec<u8>)> = None;
    loop {
        let ev = match dec.next_event(&mut buf) {
            Ok(Some(ev)) => ev,
            Ok(None) => return (answer, None, None),
            Err(e) => {
                let mut certain = None;
                if !close_sent {
                    // A streamed frame cut short is padded with zeros before the close frame
                    // (`Connection::finish_streamed_frame`).
                    if let (Path::Stream, Some((len, data)), Some((_, open))) = (path, &frame, &mut answer.open) {
                        certain = Some(open.len());
                        open.resize(open.len() + (*len as usize - data.len()), 0);
                    }
                    let reason = e.to_string();
                    answer.items.push(Item::Close(Some((e.close_code().0, truncate_reason(&reason).to_string()))));
                }
                return (answer, Some(e), certain);
            }
        };
        match ev {
            Event::MessageBegin { kind, .. } => {
                message = Some((kind, Vec::new()));
                if path == Path::Stream {
                    answer.open = Some((kind, Vec::new()));
                }
            }
            Event::FrameBegin { len, .. } => frame = Some((len, Vec::new())),
            Event::FrameData(d) => {
                frame.as_mut().expect("data outside a frame").1.extend_from_slice(&d);
                if path == Path::Stream {
                    answer.open.as_mut().expect("streamed message").1.extend_from_slice(&d);
                }
            }
            Event::FrameEnd { .. } => {
                let (_, data) = frame.take().expect("end outside a frame");
                let (kind, msg) = message.as_mut().expect("frame outside a message");
                msg.extend_from_slice(&data);
                if path == Path::Frame {
                    answer.open.get_or_insert_with(|| (*kind, Vec::new())).1.extend_from_slice(&data);
                }
            }
            Event::MessageEnd => {
                let (kind, data) = message.take().expect("end outside a message");
                answer.open = None;
                if !close_sent {
                    answer.items.push(Item::Message(kind, data));
                    if path == Path::Close {
                        answer.items.push(Item::Close(Some((1000, "bye".into()))));
                        close_sent = true;
                    }
                }
            }
            Event::Ping(p) if !close_sent => answer.items.push(Item::Pong(p.to_vec())),
            Event::Close(frame) => {
                if !close_sent {
                    // The server echoes the code without a reason, and an empty close with an empty one.
                    answer.items.push(Item::Close(frame.map(|f| (f.code.0, String::new()))));
                }
                return (answer, None, None);
            }
            _ => {}
        }
    }
}

/// The server's frames as a client decodes them, a decoding error, and how many bytes were left
/// undecoded (a partial header, or anything after the close frame).
fn decode_output(bytes: &[u8]) -> (Answer, Option<ProtocolError>, usize) {
    let mut dec = Decoder::new(DecoderConfig {
        role: Role::Client,
        max_frame_size: None,
        max_message_size: None,
        max_fragments: None,
        allowed_rsv: 0,
    });
    let mut buf = BytesMut::from(bytes);
    let mut answer = Answer::default();
    loop {
        match dec.next_event(&mut buf) {
            Ok(Some(Event::MessageBegin { kind, .. })) => answer.open = Some((kind, Vec::new())),
            Ok(Some(Event::FrameData(d))) => {
                answer.open.as_mut().expect("data outside a message").1.extend_from_slice(&d)
            }
            Ok(Some(Event::MessageEnd)) => {
                let (kind, data) = answer.open.take().expect("end outside a message");
                answer.items.push(Item::Message(kind, data));
            }
            Ok(Some(Event::Ping(p))) => answer.items.push(Item::Ping(p.to_vec())),
            Ok(Some(Event::Pong(p))) => answer.items.push(Item::Pong(p.to_vec())),
            Ok(Some(Event::Close(f))) => {
                answer.items.push(Item::Close(f.map(|f| (f.code.0, f.reason.as_str().to_string()))));
                return (answer, None, buf.len());
            }
            Ok(Some(_)) => {}
            Ok(None) => return (answer, None, buf.len()),
            Err(e) => return (answer, Some(e), buf.len()),
        }
    }
}

/// Items with the length inside a `ControlFrameTooLong` close reason blanked out: an overlong
/// control frame is refused from its first two bytes, so the length reported depends on whether
/// its extended length had arrived yet (see `fuzz/README.md`, `frame_decoder`).
fn comparable(mut items: Vec<Item>) -> Vec<Item> {
    const PREFIX: &str = "control frame payload of ";
    for item in &mut items {
        if let Item::Close(Some((_, reason))) = item {
            if reason.starts_with(PREFIX) {
                *reason = format!("{PREFIX}N bytes (max 125)");
            }
        }
    }
    items
}

/// Compare the server's answer with the model: exactly, or (`exact` false) as a prefix of it.
/// `Err` describes the difference.
fn check(exp: &Expected, out: &[u8], exact: bool) -> Result<(), String> {
    if !out.starts_with(&exp.head) {
        if !exact && exp.head.starts_with(out) {
            return Ok(()); // cut short: the known unflushed-answer bug
        }
        return Err("the HTTP response differs from the model".into());
    }
    let rest = &out[exp.head.len()..];
    if !exp.upgraded {
        return if rest.is_empty() { Ok(()) } else { Err(format!("{} bytes after the HTTP response", rest.len())) };
    }
    let (got, err, left) = decode_output(rest);
    let (items, expected) = (comparable(got.items), comparable(exp.answer.items.clone()));
    let is_prefix = items.len() <= expected.len() && items[..] == expected[..items.len()];
    if let Some(e) = err {
        // A streamed text frame cut by invalid UTF-8 is padded with zeros after its last valid
        // chunk, which may end inside a character: a client then sees invalid UTF-8 before the
        // server's close frame (1007 either way).
        let padded = exp.path == Path::Stream && exp.error == Some(ProtocolError::InvalidUtf8);
        if e == ProtocolError::InvalidUtf8 && padded && is_prefix {
            return Ok(());
        }
        return Err(format!("the server's frames do not decode: {e:?} after {items:?}"));
    }
    if matches!(items.last(), Some(Item::Close(_))) && left > 0 {
        return Err(format!("{left} bytes after the server's close frame"));
    }
    if exact {
        if items != expected {
            return Err(format!("frames differ:\n  got      {items:?}\n  expected {expected:?}"));
        }
        let same_open = match (&got.open, &exp.answer.open, exp.open_certain) {
            (Some((k, d)), Some((ek, ed)), Some(n)) => k == ek && d.len() == ed.len() && d[..n] == ed[..n],
            (got, expected, _) => got == expected,
        };
        if !same_open {
            return Err(format!("unfinished message:\n  got      {:?}\n  expected {:?}", got.open, exp.answer.open));
        }
        if left > 0 {
            return Err(format!("{left} bytes of a partial frame header at the end"));
        }
        return Ok(());
    }
    if !is_prefix {
        return Err(format!("frames are not a prefix of the model:\n  got      {items:?}\n  expected {expected:?}"));
    }
    // Cut short: an unfinished message must be the beginning of one the server still owed.
    if let Some((kind, data)) = &got.open {
        let mut owed = expected[items.len()..]
            .iter()
            .filter_map(|i| match i {
                Item::Message(k, d) => Some((k, d)),
                _ => None,
            })
            .chain(exp.answer.open.iter().map(|(k, d)| (k, d)));
        let n = exp.open_certain.unwrap_or(usize::MAX).min(data.len());
        if !owed.any(|(k, d)| k == kind && data.len() <= d.len() && data[..n] == d[..n]) {
            return Err(format!("the unfinished message {:?} is not one the server owed", got.open));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Talking to the server

/// Write sizes from a small generator seeded by `seed`: 1 up to 2^(seed & 7) bytes.
struct Splitter {
    state: u32,
    max: usize,
    writes: usize,
}

impl Splitter {
    fn new(seed: u8) -> Self {
        Splitter { state: u32::from(seed).wrapping_mul(0x9e37_79b9) | 1, max: 1 << (seed & 7), writes: 0 }
    }

    fn next(&mut self, left: usize) -> usize {
        self.writes += 1;
        if self.writes >= MAX_WRITES {
            return left;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + self.state as usize % self.max
    }
}

/// Write `data`, in pieces if `split`; false if the server closed its end meanwhile.
fn send(sock: &mut TcpStream, mut data: &[u8], split: &mut Option<Splitter>) -> bool {
    while !data.is_empty() {
        let n = split.as_mut().map_or(data.len(), |s| s.next(data.len()).min(data.len()));
        match sock.write_all(&data[..n]) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => return false,
            Err(e) => panic!("writing to the server: {e}"),
        }
        data = &data[n..];
        if split.is_some() && !data.is_empty() {
            std::thread::sleep(WRITE_PAUSE);
        }
    }
    true
}

/// Read into `out` until the server closes, or (with `until_head`) until a whole HTTP head arrived.
/// Returns whether the connection was reset. Panics if the server neither closes nor answers
/// before `deadline`.
fn receive(sock: &mut TcpStream, out: &mut Vec<u8>, until_head: bool, deadline: Instant, what: &str) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if until_head && out.windows(4).any(|w| w == b"\r\n\r\n") {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("the server hung: {what} not done within {CLOSE_DEADLINE:?}; received so far {:?}", out);
        }
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
}

/// Read into `out` until it holds the whole expected answer, or the server closed (the first
/// result) or reset the connection (the second). Panics if neither happens within
/// `CLOSE_DEADLINE`: the server has had every byte it needs to answer.
fn wait_for_answer(sock: &mut TcpStream, out: &mut Vec<u8>, exp: &Expected) -> (bool, bool) {
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + CLOSE_DEADLINE;
    sock.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    while check(exp, out, true).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not send its whole answer within {CLOSE_DEADLINE:?}\n  received {:?}\n  \
             expected head {:?} then {:?}",
            Bytes::from(out.clone()),
            Bytes::from(exp.head.clone()),
            exp.answer
        );
        match sock.read(&mut buf) {
            Ok(0) => return (true, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (false, true),
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
    (false, false)
}

static INPUTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, seed, body) = (data[0], data[1], &data[2..]);
    let mode = flags & 3;
    let server = &servers()[usize::from(flags >> 4 & 1)];
    server.assert_alive();
    let strictness = strictness();

    // The bytes to send: `prefix` (the handshake, when the harness writes it) then `frames`.
    let (prefix, frames) = if mode == 0 {
        (Vec::new(), body.to_vec())
    } else {
        let path = ["/", "/frame", "/stream", "/close"][usize::from(flags >> 2 & 3)];
        let mut frames = if mode == 1 { body.to_vec() } else { build_frames(body) };
        if flags & 0x40 != 0 {
            frames.extend_from_slice(&close_frame_1000());
        }
        (handshake(path), frames)
    };
    let input: Vec<u8> = [&prefix[..], &frames[..]].concat();
    let exp = expect(&server.settings, &input);
    if mode != 0 {
        assert!(exp.upgraded, "the harness's handshake was not accepted: {exp:?}");
    }
    let wait_101 = mode != 0 && flags & 0x80 != 0;
    let mut split = (flags & 0x20 != 0).then(|| Splitter::new(seed));

    let start = Instant::now();
    let mut sock = match TcpStream::connect_timeout(&server.addr, CLOSE_DEADLINE) {
        Ok(s) => s,
        Err(e) => {
            server.assert_alive();
            panic!("server {}: cannot connect: {e}", server.name);
        }
    };
    sock.set_nodelay(true).unwrap();
    sock.set_write_timeout(Some(CLOSE_DEADLINE)).unwrap();
    let mut out = Vec::new();
    let mut reset = false;
    let mut open = send(&mut sock, &prefix, &mut split);
    if open && wait_101 {
        reset = receive(&mut sock, &mut out, true, Instant::now() + CLOSE_DEADLINE, "the 101 response");
    }
    if open && !reset {
        open = send(&mut sock, &frames, &mut split);
    }
    let sent_in = start.elapsed();
    let slow = sent_in >= SLOW_INPUT;
    let mut closed = false;
    if strictness == Strictness::Exact && open && !reset && !slow {
        (closed, reset) = wait_for_answer(&mut sock, &mut out, &exp);
    }
    let _ = sock.shutdown(Shutdown::Write);
    if !reset && !closed {
        receive(&mut sock, &mut out, false, Instant::now() + CLOSE_DEADLINE, "closing the connection");
    }
    drop(sock);
    server.assert_alive();

    if !slow {
        // A reset is no failure in itself: a server that closes with unread bytes (after a clean
        // closing handshake, say) resets the connection, and Linux still delivers what it sent
        // before. Whatever was lost shows in the comparison.
        let exact = strictness != Strictness::Prefix;
        if let Err(diff) = check(&exp, &out, exact) {
            panic!(
                "server {}: wrong answer: {diff}\n  sent     {:?}\n  received {:?}\n  expected head {:?}",
                server.name,
                Bytes::from(input),
                Bytes::from(out),
                Bytes::from(exp.head.clone()),
            );
        }
    }

    let n = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(STATS_EVERY) {
        for s in servers() {
            s.assert_drained();
        }
    }
    let st = server.stats();
    assert!(st.connections < 64, "server {}: connections pile up: {st:?}", server.name);
});
