//! Autobahn|Testsuite-style conformance of the wsloop SERVER.
//!
//! A raw-socket test client (`conformance_support::Peer`: its own frame writer and strict frame
//! reader, a hand-made HTTP upgrade) drives a wsloop echo server started in this process on
//! 127.0.0.1, through the categories of Autobahn's fuzzing client: 1 framing, 2 pings/pongs,
//! 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 closing, 9 limits (a CI-sized subset),
//! 10 auto-fragmentation, plus masking (M). Each case asserts the exact outcome: the echoed
//! payload byte for byte and its opcode, or the close code, and then that the server closes the
//! TCP connection within a bound. A failing test names every failing case; `tests/README.md` lists
//! them all.
//!
//! ```text
//! cargo test --test conformance_server            # all categories
//! cargo test --test conformance_server c6_utf8    # one category
//! ```

mod conformance_support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use conformance_support::{cases, play, readme_tables, run_cases, Case, Peer, Setup, Side};
use wsloop::{Message, Sender, Settings, WebSocket};

type Servers = HashMap<Setup, (SocketAddr, JoinHandle<wsloop::Result<()>>)>;

/// One echo server per distinct setup, shared by every case (and test) that uses it. Fails if
/// that server's loop has ended (a panic in the loop, say), which would fail every later case.
fn server_for(setup: Setup) -> Result<SocketAddr, String> {
    static SERVERS: OnceLock<Mutex<Servers>> = OnceLock::new();
    let mut servers = SERVERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let (addr, handle) = servers.entry(setup).or_insert_with(|| {
        let settings = Settings {
            keepalive_interval: None,
            auto_fragment_size: match setup {
                Setup::Default => None,
                Setup::AutoFragment(n) => Some(n),
            },
            ..Settings::default()
        };
        let mut ws = WebSocket::with_settings(|out: Sender| move |msg: Message| out.send(msg), settings)
            .expect("echo server loop");
        let addr = ws.listen("127.0.0.1:0").expect("listen on 127.0.0.1:0");
        (addr, ws.spawn().expect("spawn the echo server"))
    });
    if handle.is_finished() {
        return Err(format!("the shared wsloop echo server ({setup:?}) is gone: its loop thread ended"));
    }
    Ok(*addr)
}

fn run_server_case(case: &Case) -> Result<(), String> {
    let addr = server_for(case.setup)?;
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut peer = Peer::client_handshake(stream, &addr.to_string())?;
    play(&mut peer, case)
}

fn category(cat: &str, workers: usize) {
    let cases: Vec<Case> = cases(cat).into_iter().filter(|c| c.applies_to(Side::Client)).collect();
    run_cases(&format!("wsloop server, category {cat}"), &cases, workers, run_server_case);
}

conformance_support::category_tests!(category);

/// The harness itself must catch wrong outcomes: each of these deliberately wrong expectations
/// has to fail, with a message that says why.
#[test]
fn harness_detects_wrong_outcomes() {
    use conformance_support::{binary, close, ping, text, CloseExp};
    let wrong = [
        (Case::new("x.1", "x", "-", "echo payload differs").send(vec![text(b"abc")]).echo_text(b"abd"), "differs"),
        (Case::new("x.2", "x", "-", "wrong opcode").send(vec![text(b"abc")]).echo_binary(b"abc"), "text message"),
        (Case::new("x.3", "x", "-", "wrong close code").send(vec![ping([0; 126])]).fails(1007), "code 1002"),
        (Case::new("x.4", "x", "-", "wrong pong").send(vec![ping(b"a")]).expect_pong(b"b"), "pong payload"),
        (Case::new("x.5", "x", "-", "unexpected pong").send(vec![ping(b"a")]), "got a pong"),
        (
            Case::new("x.6", "x", "-", "missing echo").send(vec![binary(b"a")]).echo_binary(b"a").echo_binary(b"a"),
            "nothing within",
        ),
        (
            Case::new("x.7", "x", "-", "valid prefix never fails")
                .pieces(text(b"valid text never completed"), vec![5])
                .fails(1007),
            "nothing within",
        ),
        (Case::new("x.8", "x", "-", "close echo code").send(vec![close(3000, b"")]).fails(3001), "code 3000"),
        (
            Case::new("x.9", "x", "-", "empty close expected")
                .send(vec![close(4000, b"")])
                .closes(CloseExp::EmptyOr1000),
            "code 4000",
        ),
    ];
    for (case, needle) in wrong {
        match run_server_case(&case) {
            Ok(()) => panic!("the harness accepted a wrong outcome: {}", case.desc),
            Err(e) => assert!(e.contains(needle), "{}: message {e:?} lacks {needle:?}", case.desc),
        }
    }
}

/// The frame reader must reject every frame wsloop may not send.
#[test]
fn reader_rejects_invalid_frames() {
    use conformance_support::Recv;
    use std::io::Write;
    let bad: [(&[u8], Side, &str); 8] = [
        (b"\x81\x81abcdx", Side::Client, "masked"),
        (b"\x81\x01x", Side::Server, "not masked"),
        (b"\xc1\x01x", Side::Client, "RSV"),
        (b"\x83\x00", Side::Client, "reserved opcode"),
        (b"\x09\x00", Side::Client, "control frame"),
        (b"\x89\x7e\x00\x7e", Side::Client, "control frame"),
        (b"\x82\x7e\x00\x05hello", Side::Client, "minimal"),
        (b"\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x05hello", Side::Client, "minimal"),
    ];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (bytes, side, needle) in bad {
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        tx.write_all(bytes).unwrap();
        let mut peer = Peer::from_stream(side, rx).unwrap();
        match peer.read_frame(Duration::from_secs(2)) {
            Err(Recv::Bad(e)) => assert!(e.contains(needle), "{bytes:02x?}: {e:?} lacks {needle:?}"),
            other => panic!("{bytes:02x?} as {side:?}: expected an invalid-frame error, got {other:?}"),
        }
    }
    assert!(conformance_support::check_keys(&[[1, 2, 3, 4], [1, 2, 3, 4]]).is_err());
    assert!(conformance_support::check_keys(&[[1, 2, 3, 4], [0; 4]]).is_err());
    assert!(conformance_support::check_keys(&[[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]]).is_ok());
}

/// `tests/README.md` must list exactly the cases above. When it does not, the current tables are
/// printed (see them with `cargo test --test conformance_server readme_lists_every_case -- --nocapture`).
#[test]
fn readme_lists_every_case() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/README.md");
    let readme = std::fs::read_to_string(path).expect("tests/README.md");
    let tables = readme_tables();
    if !readme.contains(&tables) {
        println!("{tables}");
    }
    assert!(readme.contains(&tables), "tests/README.md is out of date with the case tables (printed above)");
}
