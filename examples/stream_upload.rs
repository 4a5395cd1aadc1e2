//! Streaming upload: binary messages of any size go to disk as they arrive, and files go up
//! without ever being read whole into memory.
//!
//! ```text
//! cargo run --release --example stream_upload -- server [--addr 127.0.0.1:9005] [--dir DIR]
//! cargo run --release --example stream_upload -- client ws://127.0.0.1:9005/ FILE
//! cargo run --release --example stream_upload -- demo 256      # both, in one process, 256 MiB
//! ```
//!
//! **Server** (`Level::Stream`): for each binary message it opens a new file in `DIR` (default:
//! the current directory) at `on_message_begin`, writes every `on_frame_data` chunk to it as it
//! comes off the socket and feeds the same chunk to an incremental SHA-1, and at
//! `on_message_end` answers with a text message `sha1=HEX len=BYTES`. No message is ever held in
//! memory: the stream level delivers the read buffer's chunks, and the message size limit does not
//! apply (the frame size limit is lifted too). A partial file left by a connection that ends
//! mid-message is deleted. Text messages are refused (close 1003). (File writes are blocking
//! calls on the loop thread: fine for a local disk and an example, not for a busy server.)
//!
//! **Client**: starts a binary message with `begin_message`, then for each frame of up to 1 MiB
//! announces its length with `begin_frame` and streams the file into it with `send_frame_data`,
//! 64 KiB per read. It keeps at most about 1 MiB queued: it stops when `buffered_amount()` reaches
//! that, and goes on in `on_writable` (called when the queue has drained to
//! `Settings::send_queue_low_water`). `end_message` finishes the message (with an empty final
//! frame). It hashes what it reads, and checks the server's answer against its own SHA-1 and
//! length: exit status 0 when they match, 1 when not.
//!
//! **Demo**: a server on 127.0.0.1:0 writing into a temporary directory, a generated temporary
//! file of `SIZE_MIB` MiB, an upload, the check of the answer, and a re-read of the stored file;
//! prints `demo verified: ...` and removes the temporary files.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use wsloop::{Bytes, CloseCode, Error, Handler, Level, Message, MessageKind, Sender, Settings, WebSocket};

/// Payload bytes per frame the client sends.
const FRAME: u64 = 1 << 20;
/// Bytes the client reads from the file per `send_frame_data`.
const CHUNK: usize = 64 << 10;
/// The client stops queueing when this much is waiting to be written.
const HIGH_WATER: usize = 1 << 20;

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Server

/// Receives binary messages into files, chunk by chunk.
struct Receiver {
    out: Sender,
    dir: Arc<PathBuf>,
    /// Messages received on this connection (for unique file names).
    count: u64,
    /// The message being received: its file, path, hash and length so far.
    current: Option<Upload>,
}

struct Upload {
    file: File,
    path: PathBuf,
    sha1: Sha1,
    len: u64,
    started: Instant,
}

impl Handler for Receiver {
    fn level(&self) -> Level {
        Level::Stream
    }

    fn on_message_begin(&mut self, kind: MessageKind) -> wsloop::Result<()> {
        if kind == MessageKind::Text {
            return self.out.close(CloseCode::UNSUPPORTED_DATA, "binary messages only");
        }
        self.count += 1;
        let id = self.out.id();
        let path = self.dir.join(format!("upload-{}-{}-{}.bin", id.slot, id.generation, self.count));
        let file = File::create(&path)?;
        self.current = Some(Upload { file, path, sha1: Sha1::new(), len: 0, started: Instant::now() });
        Ok(())
    }

    fn on_frame_data(&mut self, chunk: Bytes) -> wsloop::Result<()> {
        // After a refused text message the data is ignored until the close completes.
        if let Some(up) = self.current.as_mut() {
            up.file.write_all(&chunk)?;
            up.sha1.update(&chunk);
            up.len += chunk.len() as u64;
        }
        Ok(())
    }

    fn on_message_end(&mut self) -> wsloop::Result<()> {
        let Some(up) = self.current.take() else { return Ok(()) };
        up.file.sync_data()?;
        let digest = hex(&up.sha1.finalize());
        let secs = up.started.elapsed().as_secs_f64();
        eprintln!(
            "stored {} bytes in {} ({:.1} MiB/s), sha1 {digest}",
            up.len,
            up.path.display(),
            up.len as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
        self.out.send(format!("sha1={digest} len={}", up.len))
    }

    fn on_close(&mut self, _code: CloseCode, _reason: &str) {
        // A message cut short: do not leave a truncated file behind.
        if let Some(up) = self.current.take() {
            drop(up.file);
            let _ = std::fs::remove_file(&up.path);
            eprintln!("connection ended mid-message: removed {} ({} bytes)", up.path.display(), up.len);
        }
    }

    fn on_error(&mut self, err: Error) {
        eprintln!("server: {err}");
    }
}

/// The server's loop: stream level, so neither the message nor the frame size limit is needed.
fn server_loop(dir: PathBuf) -> wsloop::Result<WebSocket<impl wsloop::Factory<Handler = Receiver> + Send>> {
    let dir = Arc::new(dir);
    let settings = Settings { max_frame_size: None, max_message_size: None, ..Settings::default() };
    WebSocket::with_settings(move |out: Sender| Receiver { out, dir: dir.clone(), count: 0, current: None }, settings)
}

// ---------------------------------------------------------------------------------------------
// Client

/// What the client learned: its own hash and length, and the server's answer.
#[derive(Debug, Default)]
struct Outcome {
    local: Option<(String, u64)>,
    answer: Option<String>,
    error: Option<String>,
}

/// Streams one file as one binary message.
struct Uploader {
    out: Sender,
    file: File,
    /// File bytes not yet read and queued.
    remaining: u64,
    /// Bytes still owed to the frame announced last with `begin_frame`.
    frame_left: u64,
    sha1: Option<Sha1>,
    size: u64,
    ended: bool,
    outcome: Arc<Mutex<Outcome>>,
    buf: Vec<u8>,
}

impl Uploader {
    /// Queue file data until about `HIGH_WATER` bytes wait to be written, or the file is done.
    fn pump(&mut self) -> wsloop::Result<()> {
        while !self.ended && self.out.buffered_amount() < HIGH_WATER {
            if self.remaining == 0 {
                self.out.end_message()?;
                self.ended = true;
                let digest = hex(&self.sha1.take().expect("hashed once").finalize());
                self.outcome.lock().unwrap().local = Some((digest, self.size));
                break;
            }
            if self.frame_left == 0 {
                self.frame_left = FRAME.min(self.remaining);
                self.out.begin_frame(self.frame_left)?;
            }
            let n = (CHUNK as u64).min(self.frame_left) as usize;
            self.file.read_exact(&mut self.buf[..n])?;
            self.sha1.as_mut().expect("still hashing").update(&self.buf[..n]);
            self.out.send_frame_data(Bytes::copy_from_slice(&self.buf[..n]))?;
            self.frame_left -= n as u64;
            self.remaining -= n as u64;
        }
        Ok(())
    }
}

impl Handler for Uploader {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.out.begin_message(MessageKind::Binary)?;
        self.pump()
    }

    fn on_writable(&mut self) -> wsloop::Result<()> {
        self.pump()
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        self.outcome.lock().unwrap().answer = Some(msg.as_text().unwrap_or("(binary answer)").to_string());
        self.out.close(CloseCode::NORMAL, "done")
    }

    fn on_close(&mut self, code: CloseCode, reason: &str) {
        let mut o = self.outcome.lock().unwrap();
        if o.answer.is_none() && o.error.is_none() {
            o.error = Some(format!("connection closed before the answer: {code} {reason}"));
        }
    }

    fn on_error(&mut self, err: Error) {
        let mut o = self.outcome.lock().unwrap();
        if o.error.is_none() {
            o.error = Some(err.to_string());
        }
    }
}

/// Upload `path` to `url`; returns (local sha1, local length, server answer).
fn upload(url: &str, path: &Path) -> Result<(String, u64, String), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut state = Some((file, outcome.clone()));
    let settings = Settings { open_timeout: Duration::from_secs(10), ..Settings::default() };
    let mut ws = WebSocket::with_settings(
        move |out: Sender| {
            let (file, outcome) = state.take().expect("one connection");
            Uploader {
                out,
                file,
                remaining: size,
                frame_left: 0,
                sha1: Some(Sha1::new()),
                size,
                ended: false,
                outcome,
                buf: vec![0; CHUNK],
            }
        },
        settings,
    )
    .map_err(|e| e.to_string())?;
    ws.connect(url).map_err(|e| e.to_string())?;
    ws.run().map_err(|e| e.to_string())?;
    let o = std::mem::take(&mut *outcome.lock().unwrap());
    if let Some(e) = o.error {
        return Err(e);
    }
    let (digest, len) = o.local.ok_or("the file was not sent completely")?;
    let answer = o.answer.ok_or("no answer from the server")?;
    Ok((digest, len, answer))
}

/// Whether the server's `sha1=HEX len=N` answer matches.
fn check(answer: &str, digest: &str, len: u64) -> bool {
    answer == format!("sha1={digest} len={len}")
}

// ---------------------------------------------------------------------------------------------
// Demo

/// Write `size` bytes of a deterministic pseudo-random pattern to `path`, 1 MiB at a time.
fn generate(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = (block.len() as u64).min(left) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn sha1_of_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((hex(&h.finalize()), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

fn demo(size_mib: u64) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("wsloop-stream-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = demo_in(&dir, size_mib);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path, size_mib: u64) -> Result<(), String> {
    let size = size_mib << 20;
    let source = dir.join("source.bin");
    let stored = dir.join("stored");
    std::fs::create_dir_all(&stored).map_err(|e| e.to_string())?;
    generate(&source, size).map_err(|e| e.to_string())?;
    let mut ws = server_loop(stored.clone()).map_err(|e| e.to_string())?;
    let addr = ws.listen("127.0.0.1:0").map_err(|e| e.to_string())?;
    let control = ws.sender();
    let server = ws.spawn().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let result = upload(&format!("ws://{addr}/"), &source);
    let secs = start.elapsed().as_secs_f64();
    let _ = control.shutdown();
    let _ = server.join();
    let (digest, len, answer) = result?;
    println!("server answered: {answer}");
    if !check(&answer, &digest, len) {
        return Err(format!("mismatch: local sha1={digest} len={len}, server said {answer}"));
    }
    // The stored file, read back, must be the same.
    let files: Vec<PathBuf> =
        std::fs::read_dir(&stored).map_err(|e| e.to_string())?.filter_map(|e| Some(e.ok()?.path())).collect();
    if files.len() != 1 {
        return Err(format!("expected one stored file, found {files:?}"));
    }
    let (on_disk, on_disk_len) = sha1_of_file(&files[0]).map_err(|e| e.to_string())?;
    if on_disk != digest || on_disk_len != len {
        return Err(format!("stored file differs: sha1={on_disk} len={on_disk_len}"));
    }
    println!(
        "demo verified: {len} bytes, sha1 {digest}, uploaded in {secs:.2} s ({:.0} MiB/s)",
        len as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage:
  stream_upload server [--addr HOST:PORT] [--dir DIR]   (default 127.0.0.1:9005, current directory)
  stream_upload client URL FILE
  stream_upload demo SIZE_MIB";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => {
            let mut addr = "127.0.0.1:9005".to_string();
            let mut dir = PathBuf::from(".");
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--addr" => addr = it.next().expect("--addr needs HOST:PORT").clone(),
                    "--dir" => dir = PathBuf::from(it.next().expect("--dir needs a directory")),
                    other => {
                        eprintln!("unknown argument {other:?}\n{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            (|| {
                let mut ws = server_loop(dir.clone())?;
                let bound = ws.listen(addr.as_str())?;
                println!("stream_upload server on ws://{bound}/ storing into {}", dir.display());
                ws.run()
            })()
            .map_err(|e| e.to_string())
        }
        Some("client") if args.len() == 3 => upload(&args[1], Path::new(&args[2])).and_then(|(digest, len, answer)| {
            println!("server answered: {answer}");
            if check(&answer, &digest, len) {
                println!("verified: {len} bytes, sha1 {digest}");
                Ok(())
            } else {
                Err(format!("mismatch: local sha1={digest} len={len}"))
            }
        }),
        Some("demo") if args.len() == 2 => match args[1].parse() {
            Ok(mib) => demo(mib),
            Err(_) => Err(format!("SIZE_MIB must be a number\n{USAGE}")),
        },
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
