//! The advanced examples run as processes, as their documentation says: `broadcast` delivers every
//! message to every client, `stream_upload` stores and hashes files correctly (demo mode, and
//! server and client as separate processes), and `frame_echo` preserves the peer's fragmentation
//! exactly.
//!
//! The example binaries are built on demand with the test's profile (`support::example_binary`). Every child is killed when its test ends, and every wait is bounded.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use support::Raw;

/// The built example `name` (built on demand, see `support::example_binary`).
fn example(name: &str) -> PathBuf {
    support::example_binary(name)
}

use support::ChildGuard as Guard;

/// A temporary directory, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("wsloop-advanced-examples-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run an example to completion within `limit`; returns (success, stdout, stderr).
fn run(name: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Guard(
        Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read both pipes on threads, so a chatty child never blocks on a full pipe.
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = collect(Box::new(child.0.stdout.take().unwrap()));
    let err = collect(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{name} {args:?} did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// Start an example server and return it with the `ws://` address it prints on stdout.
fn start_server(name: &str, args: &[&str]) -> (Guard, String) {
    let mut child = Guard(
        Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}")),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{name} announced no address"));
    let start = line.find("ws://").unwrap_or_else(|| panic!("{name} printed {line:?}"));
    let url = line[start..].split_whitespace().next().unwrap().to_string();
    (child, url)
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("ws://").trim_end_matches('/').parse().unwrap()
}

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn broadcast_delivers_every_message_to_every_client() {
    let (ok, out, err) =
        run("broadcast", &["--clients", "200", "--messages", "20", "--size", "100"], Duration::from_secs(60));
    assert!(ok, "broadcast failed:\n{out}\n{err}");
    assert!(out.contains("200 connections open"), "{out}");
    assert!(out.contains("delivered 4000 of 4000 messages (200 clients x 20 broadcasts of 100 B)"), "{out}");
    assert!(out.contains("fan-out rate:"), "{out}");
    assert!(!out.contains("wrong size"), "{out}");
}

#[test]
fn broadcast_paced_mode_reports_server_cpu() {
    let (ok, out, err) = run(
        "broadcast",
        &["--clients", "50", "--size", "100", "--hz", "60", "--seconds", "0.5"],
        Duration::from_secs(60),
    );
    assert!(ok, "broadcast failed:\n{out}\n{err}");
    assert!(out.contains("server loop thread CPU: ") && out.contains("% of one core"), "{out}");
    assert!(out.contains("delivered 1500 of 1500 messages (50 clients x 30 broadcasts of 100 B)"), "{out}");
}

#[test]
fn stream_upload_demo_verifies_32_mib() {
    let (ok, out, err) = run("stream_upload", &["demo", "32"], Duration::from_secs(120));
    assert!(ok, "stream_upload demo failed:\n{out}\n{err}");
    let answer = out.lines().find_map(|l| l.strip_prefix("server answered: sha1=")).expect("an answer line");
    let (digest, len) = answer.split_once(" len=").unwrap();
    assert_eq!(len, (32u64 << 20).to_string());
    assert_eq!(digest.len(), 40, "{answer}");
    assert!(out.contains(&format!("demo verified: {} bytes, sha1 {digest}", 32u64 << 20)), "{out}");
}

#[test]
fn stream_upload_server_and_client_processes() {
    let dir = TempDir::new("upload");
    let store = dir.0.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // An odd size: several 1 MiB frames, then a partial frame and a partial 64 KiB chunk.
    let data: Vec<u8> = (0..(3u64 << 20) + 12_345).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let source = dir.0.join("source.bin");
    std::fs::write(&source, &data).unwrap();
    let expect = sha1_hex(&data);

    let (_server, url) =
        start_server("stream_upload", &["server", "--addr", "127.0.0.1:0", "--dir", store.to_str().unwrap()]);
    let (ok, out, err) = run("stream_upload", &["client", &url, source.to_str().unwrap()], Duration::from_secs(60));
    assert!(ok, "client failed:\n{out}\n{err}");
    assert!(out.contains(&format!("server answered: sha1={expect} len={}", data.len())), "{out}");
    assert!(out.contains(&format!("verified: {} bytes, sha1 {expect}", data.len())), "{out}");
    // The server stored exactly the file.
    let stored: Vec<PathBuf> = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(std::fs::read(&stored[0]).unwrap() == data, "stored file differs");

    // An empty file is an empty message.
    let empty = dir.0.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let (ok, out, err) = run("stream_upload", &["client", &url, empty.to_str().unwrap()], Duration::from_secs(30));
    assert!(ok, "client failed on an empty file:\n{out}\n{err}");
    assert!(out.contains(&format!("server answered: sha1={} len=0", sha1_hex(b""))), "{out}");
}

#[test]
fn stream_upload_client_reports_a_missing_file() {
    let (ok, _out, err) =
        run("stream_upload", &["client", "ws://127.0.0.1:9/", "/nonexistent/file"], Duration::from_secs(20));
    assert!(!ok);
    assert!(err.contains("/nonexistent/file"), "{err}");
}

/// Send `frames` (opcode of the first, then continuations) as one message, read the echo, and
/// compare frame by frame: FIN bit, opcode and payload. Control frames in between are skipped.
fn echo_exactly(c: &mut Raw, opcode: u8, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        c.send_frame(i + 1 == frames.len(), if i == 0 { opcode } else { 0 }, f);
        if i == 0 && frames.len() > 1 {
            c.send_frame(true, 9, b"between fragments"); // answered at once, not part of the echo
        }
    }
    let mut got = Vec::new();
    while got.len() < frames.len() {
        let f = c.read_frame();
        if f.opcode >= 8 {
            assert_eq!((f.opcode, &f.payload[..]), (10, &b"between fragments"[..]), "only the pong may interleave");
            continue;
        }
        got.push(f);
    }
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    for (i, (f, want)) in got.iter().zip(frames).enumerate() {
        let want_opcode = if i == 0 { opcode } else { 0 };
        assert_eq!(f.opcode, want_opcode, "frame {i} of {sizes:?}: opcode");
        assert_eq!(f.fin, i + 1 == frames.len(), "frame {i} of {sizes:?}: FIN");
        assert!(f.payload == *want, "frame {i} of {sizes:?}: payload ({} bytes, want {})", f.payload.len(), want.len());
    }
}

#[test]
fn frame_echo_preserves_fragmentation_exactly() {
    let (_server, url) = start_server("frame_echo", &["--addr", "127.0.0.1:0"]);
    let mut c = Raw::connect(addr_of(&url), "/");
    // Text split at odd places, inside multi-byte characters too, with an empty fragment and all
    // three payload length encodings (7-bit, 16-bit, 64-bit).
    let text = "κόσμε 日本語 naïve 😀 ".repeat(6000).into_bytes();
    let cuts = [3usize, 3, 3, 128, 70_000, 70_001, 70_001 + 65_535, text.len()];
    let mut frames = Vec::new();
    let mut prev = 0;
    for &cut in &cuts {
        frames.push(text[prev..cut].to_vec());
        prev = cut;
    }
    assert!(frames.iter().any(Vec::is_empty) && frames.iter().any(|f| f.len() > 65_535));
    echo_exactly(&mut c, 1, &frames);
    // Binary: one frame; an empty first and an empty last frame; a 1 MiB frame then 5 bytes.
    echo_exactly(&mut c, 2, &[b"single".to_vec()]);
    echo_exactly(&mut c, 2, &[Vec::new(), b"middle".to_vec(), Vec::new()]);
    echo_exactly(&mut c, 2, &[vec![0xa5; 1 << 20], b"tail!".to_vec()]);
    echo_exactly(&mut c, 1, &[Vec::new()]);
    // Many small fragments.
    let many: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; (i % 7) as usize]).collect();
    echo_exactly(&mut c, 2, &many);
    // The closing handshake completes.
    c.send_frame(true, 8, &1000u16.to_be_bytes());
    assert_eq!(c.read_close_code(), 1000);
}
