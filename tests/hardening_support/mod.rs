//! Helpers for the hardening tests: a raw WebSocket client over a plain `TcpStream` (so a test
//! controls every byte and every pause), frame encoding and decoding, and process probes read
//! from `/proc` (resident memory, open file descriptors, a thread's CPU time).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wsloop::{CloseCode, ConnId, Error, Factory, Handler, Message, Sender};

use crate::support::Ev;

/// The hardening tests measure the whole process (memory, file descriptors, CPU) and some of them
/// load both cores: they run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The key and accept value of RFC 6455 §1.3.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The masking key of every frame the raw client sends.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A valid upgrade request with five header fields, plus `extra` (whole `Name: value\r\n` lines).
pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client frame header announcing `len` payload bytes.
pub fn client_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as u64 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    f
}

/// A whole masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = client_header(opcode, fin, payload.len() as u64);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// A close frame's payload.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed (FIN): read returned 0.
    Eof,
    /// The server reset the connection (RST).
    Reset,
}

/// A raw WebSocket client: blocking, with a read timeout, writing exactly the bytes it is given.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connect with TCP_NODELAY and a 5 s read timeout.
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Raw::from_stream(s)
    }

    pub fn from_stream(s: TcpStream) -> Raw {
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    pub fn write_all(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap_or_else(|e| panic!("write of {} bytes failed: {e}", b.len()));
    }

    /// Write `b` one byte per `write` call, pausing `pause` after each.
    pub fn write_bytewise(&mut self, b: &[u8], pause: Duration) {
        for byte in b {
            assert_eq!(self.s.write(std::slice::from_ref(byte)).unwrap(), 1);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    }

    /// Send the standard upgrade request and check the 101 response.
    pub fn handshake(addr: SocketAddr) -> Raw {
        let mut c = Raw::connect(addr);
        c.write_all(upgrade_request(addr, "").as_bytes());
        let head = c.read_head();
        assert_101(&head);
        c
    }

    /// Read an HTTP head (through the blank line); bytes after it stay buffered for frames.
    pub fn read_head(&mut self) -> String {
        let mut scanned: usize = 0;
        loop {
            if let Some(p) = self.buf[scanned.saturating_sub(3)..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = scanned.saturating_sub(3) + p + 4;
                let head: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(head).expect("HTTP head is not UTF-8");
            }
            scanned = self.buf.len();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    panic!("connection closed before the HTTP head ended: {:?}", String::from_utf8_lossy(&self.buf))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the HTTP head: {e} (got {:?})", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    fn fill(&mut self, n: usize) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        while self.buf.len() < n {
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read one (unmasked) server frame.
    pub fn try_read_frame(&mut self) -> io::Result<Frame> {
        self.fill(2)?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "the server masked a frame");
        assert_eq!(b0 & 0x70, 0, "the server set RSV bits");
        let (len, hl) = match b1 & 0x7f {
            126 => {
                self.fill(4)?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10)?;
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.fill(hl + len)?;
        let payload = self.buf[hl..hl + len].to_vec();
        self.buf.drain(..hl + len);
        Ok(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload })
    }

    pub fn read_frame(&mut self) -> Frame {
        self.try_read_frame().unwrap_or_else(|e| panic!("reading a frame: {e}"))
    }

    /// Read the next frame and check it is a close frame; returns its code and reason.
    pub fn read_close(&mut self) -> (u16, String) {
        let f = self.read_frame();
        assert_eq!(f.opcode, OP_CLOSE, "expected a close frame, got {f:?}");
        assert!(f.payload.len() >= 2, "close frame without a code: {f:?}");
        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
        (code, String::from_utf8(f.payload[2..].to_vec()).expect("close reason is not UTF-8"))
    }

    /// Expect the server to end the connection with nothing more sent: returns how it ended.
    pub fn read_end(&mut self) -> End {
        assert!(self.buf.is_empty(), "unread bytes before the end: {:?}", self.buf);
        let mut chunk = [0u8; 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => End::Eof,
            Ok(n) => panic!("expected the connection to end, got {n} more bytes: {:?}", &chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => End::Reset,
            Err(e) => panic!("expected the connection to end, got {e}"),
        }
    }

    /// Send a masked frame in one write.
    pub fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let f = client_frame(opcode, fin, payload);
        self.write_all(&f);
    }
}

pub fn assert_101(head: &str) {
    assert!(head.starts_with("HTTP/1.1 101 "), "expected 101, got {head:?}");
    assert!(head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")), "bad accept in {head:?}");
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The kernel thread id of the calling thread.
pub fn current_tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// CPU time of one thread of this process, from `/proc/self/task/<tid>/stat`. The file is
/// opened once and re-read, so reading it needs no free file descriptor.
pub struct ThreadCpu {
    f: File,
}

impl ThreadCpu {
    pub fn open(tid: u32) -> ThreadCpu {
        ThreadCpu { f: File::open(format!("/proc/self/task/{tid}/stat")).unwrap() }
    }

    /// User plus system time in clock ticks (USER_HZ, 100 per second on Linux).
    pub fn ticks(&mut self) -> u64 {
        self.f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        self.f.read_to_string(&mut s).unwrap();
        // Fields after the command name (which is in parentheses and may contain spaces): state is
        // field 3, utime 14, stime 15.
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

/// Milliseconds per clock tick in `/proc/<pid>/stat` (USER_HZ is 100 on every Linux ABI).
pub const TICK_MS: u64 = 10;

/// Poll `cond` every 5 ms until it holds, failing after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached within {limit:?}");
        std::thread::sleep(ms(5));
    }
}

/// A handler that reports every callback tagged with its connection, echoes data messages, and
/// panics on the text message `"boom"`.
pub struct Tagged {
    pub out: Sender,
    pub tx: mpsc::Sender<(ConnId, Ev)>,
}

impl Tagged {
    fn report(&self, ev: Ev) {
        let _ = self.tx.send((self.out.id(), ev));
    }
}

impl Handler for Tagged {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.report(Ev::Open);
        Ok(())
    }
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        if msg.as_text() == Some("boom") {
            panic!("handler exploded");
        }
        self.out.send(msg)
    }
    fn on_close(&mut self, code: CloseCode, reason: &str) {
        self.report(Ev::Close(code.0, reason.to_string()));
    }
    fn on_error(&mut self, err: Error) {
        self.report(Ev::Error(err.to_string()));
    }
    fn on_writable(&mut self) -> wsloop::Result<()> {
        self.report(Ev::Writable);
        Ok(())
    }
}

/// Makes [`Tagged`] handlers; keeps a clone of every connection's `Sender`, counts dropped
/// handlers and `on_shutdown`, and records the loop thread's id (the factory runs on the loop
/// thread).
pub struct TaggedFactory {
    pub tx: mpsc::Sender<(ConnId, Ev)>,
    pub senders: Arc<Mutex<Vec<Sender>>>,
    pub made: Arc<AtomicUsize>,
    pub lost: Arc<AtomicUsize>,
    pub shutdowns: Arc<AtomicUsize>,
    pub loop_tid: Arc<AtomicU32>,
}

impl TaggedFactory {
    pub fn new(tx: mpsc::Sender<(ConnId, Ev)>) -> Self {
        TaggedFactory {
            tx,
            senders: Default::default(),
            made: Default::default(),
            lost: Default::default(),
            shutdowns: Default::default(),
            loop_tid: Default::default(),
        }
    }

    /// Handles to the counters, readable while the loop runs.
    pub fn probes(&self) -> Probes {
        Probes {
            senders: self.senders.clone(),
            made: self.made.clone(),
            lost: self.lost.clone(),
            shutdowns: self.shutdowns.clone(),
            loop_tid: self.loop_tid.clone(),
        }
    }
}

/// Counters shared with a [`TaggedFactory`].
#[derive(Clone)]
pub struct Probes {
    pub senders: Arc<Mutex<Vec<Sender>>>,
    pub made: Arc<AtomicUsize>,
    pub lost: Arc<AtomicUsize>,
    pub shutdowns: Arc<AtomicUsize>,
    pub loop_tid: Arc<AtomicU32>,
}

impl Probes {
    /// The `Sender` of the `i`-th connection made, waiting up to 5 s for it.
    pub fn sender(&self, i: usize) -> Sender {
        let mut out = None;
        wait_until(Duration::from_secs(5), "connection made", || {
            out = self.senders.lock().unwrap().get(i).cloned();
            out.is_some()
        });
        out.unwrap()
    }
    pub fn made(&self) -> usize {
        self.made.load(SeqCst)
    }
    pub fn lost(&self) -> usize {
        self.lost.load(SeqCst)
    }
    pub fn shutdowns(&self) -> usize {
        self.shutdowns.load(SeqCst)
    }
    /// The loop thread's id, once a first connection was accepted.
    pub fn loop_tid(&self) -> u32 {
        let tid = self.loop_tid.load(SeqCst);
        assert_ne!(tid, 0, "no connection accepted yet: loop thread unknown");
        tid
    }
}

impl Factory for TaggedFactory {
    type Handler = Tagged;

    fn connection_made(&mut self, out: Sender) -> Tagged {
        if self.loop_tid.load(SeqCst) == 0 {
            self.loop_tid.store(current_tid(), SeqCst);
        }
        self.made.fetch_add(1, SeqCst);
        self.senders.lock().unwrap().push(out.clone());
        Tagged { out, tx: self.tx.clone() }
    }

    fn connection_lost(&mut self, handler: Tagged) {
        self.lost.fetch_add(1, SeqCst);
        drop(handler);
    }

    fn on_shutdown(&mut self) {
        self.shutdowns.fetch_add(1, SeqCst);
    }
}

/// Group tagged events by connection, in arrival order.
pub fn by_conn(events: impl IntoIterator<Item = (ConnId, Ev)>) -> BTreeMap<ConnId, Vec<Ev>> {
    let mut m: BTreeMap<ConnId, Vec<Ev>> = Default::default();
    for (id, ev) in events {
        m.entry(id).or_default().push(ev);
    }
    m
}
