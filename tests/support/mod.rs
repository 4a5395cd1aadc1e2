//! Shared helpers for the runtime integration tests: a recording handler, servers on port 0,
//! tungstenite peers, bounded waits.
#![allow(dead_code, clippy::result_large_err)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wsloop::{
    Bytes, CloseCode, Error, Handler, Message, Request, Response, Sender, ServerResponse, Settings, Token, WebSocket,
};

/// Everything a handler saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Request {
        path: String,
        query: Option<String>,
        cookie: Option<String>,
        origin: Option<String>,
        protocols: Vec<String>,
    },
    Response {
        status: u16,
        protocol: Option<String>,
    },
    Open,
    Message(Message),
    Close(u16, String),
    Error(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Timeout(u64),
    Writable,
}

/// A handler that records its callbacks and echoes messages (unless `echo` is false).
pub struct Recorder {
    pub out: Sender,
    pub tx: mpsc::Sender<Ev>,
    pub echo: bool,
    pub protocol: Option<String>,
    pub reject: Option<u16>,
}

impl Handler for Recorder {
    fn on_request(&mut self, req: &Request) -> Result<Response, wsloop::Rejection> {
        let _ = self.tx.send(Ev::Request {
            path: req.path().to_string(),
            query: req.query().map(str::to_string),
            cookie: req.cookie("session").map(str::to_string),
            origin: req.origin().map(str::to_string),
            protocols: req.protocols().to_vec(),
        });
        if let Some(status) = self.reject {
            return Err(wsloop::Rejection::new(status).with_body("not you").with_header("X-Reason", "test"));
        }
        let mut resp = Response::accept().with_header("Set-Cookie", "id=42");
        if let Some(p) = self.protocol.as_deref().filter(|p| req.protocols().iter().any(|o| o == p)) {
            resp = resp.with_protocol(p);
        }
        Ok(resp)
    }
    fn on_response(&mut self, res: &ServerResponse) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Response { status: res.status(), protocol: res.protocol().map(str::to_string) });
        Ok(())
    }
    fn on_open(&mut self) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Open);
        Ok(())
    }
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Message(msg.clone()));
        if self.echo {
            self.out.send(msg)?;
        }
        Ok(())
    }
    fn on_close(&mut self, code: CloseCode, reason: &str) {
        let _ = self.tx.send(Ev::Close(code.0, reason.to_string()));
    }
    fn on_error(&mut self, err: Error) {
        let _ = self.tx.send(Ev::Error(err.to_string()));
    }
    fn on_ping(&mut self, payload: Bytes) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Ping(payload.to_vec()));
        Ok(())
    }
    fn on_pong(&mut self, payload: Bytes) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Pong(payload.to_vec()));
        Ok(())
    }
    fn on_timeout(&mut self, token: Token) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Timeout(token.0));
        Ok(())
    }
    fn on_writable(&mut self) -> wsloop::Result<()> {
        let _ = self.tx.send(Ev::Writable);
        Ok(())
    }
}

/// A running server loop.
pub struct Server {
    pub addr: SocketAddr,
    pub control: Sender,
    pub handle: Option<JoinHandle<wsloop::Result<()>>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Shut down and join, within a bound.
    pub fn stop(mut self) {
        self.control.shutdown().unwrap();
        join_within(self.handle.take().unwrap(), Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.control.shutdown();
        }
    }
}

/// Join a thread, failing the test if it does not finish in time.
pub fn join_within(h: JoinHandle<wsloop::Result<()>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "event loop did not stop within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.join().expect("loop thread panicked").expect("loop returned an error");
}

/// Start a server with `settings` whose handlers are recorders feeding one channel.
pub fn recording_server(
    settings: Settings,
    echo: bool,
    protocol: Option<&str>,
    reject: Option<u16>,
) -> (Server, mpsc::Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let protocol = protocol.map(str::to_string);
    let factory = move |out: Sender| Recorder { out, tx: tx.clone(), echo, protocol: protocol.clone(), reject };
    (spawn_server(factory, settings), rx)
}

/// Start any factory as a server on 127.0.0.1:0.
pub fn spawn_server<F>(factory: F, settings: Settings) -> Server
where
    F: wsloop::Factory + Send + 'static,
    F::Handler: Send,
{
    let mut ws = WebSocket::with_settings(factory, settings).unwrap();
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let control = ws.sender();
    let handle = Some(ws.spawn().unwrap());
    Server { addr, control, handle }
}

/// Receive the next event within `limit`, or fail.
pub fn next(rx: &mpsc::Receiver<Ev>, limit: Duration) -> Ev {
    rx.recv_timeout(limit).unwrap_or_else(|e| panic!("no event within {limit:?}: {e}"))
}

/// Receive events until one matches, failing after `limit`.
pub fn wait_for(rx: &mpsc::Receiver<Ev>, limit: Duration, mut pred: impl FnMut(&Ev) -> bool) -> Ev {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return ev,
            Ok(_) => {}
            Err(_) => panic!("no matching event within {limit:?}"),
        }
    }
}

pub const T: Duration = Duration::from_secs(5);

/// A blocking tungstenite client with read timeouts.
pub type Client = tungstenite::WebSocket<TcpStream>;

pub fn tclient(url: &str) -> Client {
    let (c, _) = tclient_with(tungstenite::client::IntoClientRequest::into_client_request(url).unwrap());
    c
}

pub fn tclient_with(
    req: tungstenite::handshake::client::Request,
) -> (Client, tungstenite::handshake::client::Response) {
    let host = req.uri().host().unwrap().to_string();
    let port = req.uri().port_u16().unwrap();
    let stream = TcpStream::connect((host.as_str(), port)).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    tungstenite::client(req, stream).map_err(|e| format!("{e}")).unwrap()
}

/// Read frames until a close frame arrives; returns its code and reason.
pub fn read_close(c: &mut Client) -> (u16, String) {
    loop {
        match c.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(tungstenite::Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// A tungstenite echo server on 127.0.0.1:0 (one connection per thread), for client tests.
pub fn tungstenite_echo_server(protocol: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let cb = move |req: &tungstenite::handshake::server::Request,
                               mut resp: tungstenite::handshake::server::Response| {
                    if let Some(p) = protocol {
                        let offered =
                            req.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
                        if offered.split(',').any(|o| o.trim() == p) {
                            resp.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
                        }
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(s, cb) else { return };
                while let Ok(m) = ws.read() {
                    // tungstenite queues the pong for a ping; flush so it leaves before the next
                    // blocking read.
                    let r = if m.is_text() || m.is_binary() { ws.send(m) } else { ws.flush() };
                    if r.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A raw WebSocket client over a blocking socket: sends arbitrary (masked) frames, reads the
/// server's frames one by one. For tests that need control over framing.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

/// A frame as read by [`Raw::read_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Raw {
    /// Connect and complete the upgrade to `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> Raw {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        Raw { s, buf }
    }

    /// Send one frame, masked with a fixed key.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        use std::io::Write;
        self.s.write_all(&bytes_frame(fin, opcode, payload)).unwrap();
    }

    /// Send raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.s.write_all(bytes).unwrap();
    }

    /// Read the next frame from the server (which must be unmasked).
    pub fn read_frame(&mut self) -> RawFrame {
        self.try_read_frame().expect("connection closed before a frame arrived")
    }

    /// The next frame, or `None` at end of stream.
    pub fn try_read_frame(&mut self) -> Option<RawFrame> {
        use std::io::Read;
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                let b1 = self.buf[1];
                assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
                let (len, hl) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hl + len {
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some(RawFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload });
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Read frames until a close frame; returns its code (1005 when empty).
    pub fn read_close_code(&mut self) -> u16 {
        loop {
            let f = self.read_frame();
            if f.opcode == 8 {
                return if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { 1005 };
            }
        }
    }
}

/// Encode a masked client frame.
pub fn bytes_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![(fin as u8) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    out
}

/// The example binary `name`, built (or found up to date) with the same profile as this test.
///
/// Plain `cargo test` builds the examples before running tests, but `cargo test --test X` or
/// `--all-targets` (which builds examples in test mode, under other names) does not: building on
/// demand makes the example tests correct however they are invoked, and never stale.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if !built.contains(name) {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--example", name]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for an example");
        assert!(status.success(), "cargo build --example {name} failed");
        built.insert(name.to_string());
    }
    assert!(path.exists(), "example {name} not found at {}", path.display());
    path
}

/// Kills a child process when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop (not started) whose handlers are recorders feeding the returned channel.
pub fn recording_loop(
    echo: bool,
) -> (WebSocket<impl wsloop::Factory<Handler = Recorder> + Send + 'static>, mpsc::Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let ws = WebSocket::new(move |out: Sender| Recorder { out, tx: tx.clone(), echo, protocol: None, reject: None })
        .unwrap();
    (ws, rx)
}
