//! The advanced APIs: frame-level and stream-level receiving (exact callback sequences and chunk
//! totals), sending through the frame and streaming APIs, errors in the middle of a stream,
//! auto-fragmentation, and prepared messages.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::*;
use wsloop::{
    Bytes, CloseCode, Error, Handler, Level, Message, MessageKind, PreparedMessage, Sender, Settings, WebSocket,
};

/// Records the lower-level callbacks as strings, e.g. `begin Text`, `frame 3`, `data 5`, `end`.
struct Levels {
    level: Level,
    tx: mpsc::Sender<String>,
}

impl Handler for Levels {
    fn level(&self) -> Level {
        self.level
    }
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        self.tx.send(format!("message {}", msg.len())).unwrap();
        Ok(())
    }
    fn on_message_begin(&mut self, kind: MessageKind) -> wsloop::Result<()> {
        self.tx.send(format!("begin {kind:?}")).unwrap();
        Ok(())
    }
    fn on_message_frame(&mut self, payload: Bytes) -> wsloop::Result<()> {
        self.tx.send(format!("frame {}", String::from_utf8_lossy(&payload))).unwrap();
        Ok(())
    }
    fn on_frame_begin(&mut self, len: u64) -> wsloop::Result<()> {
        self.tx.send(format!("frame_begin {len}")).unwrap();
        Ok(())
    }
    fn on_frame_data(&mut self, chunk: Bytes) -> wsloop::Result<()> {
        self.tx.send(format!("data {}", chunk.len())).unwrap();
        Ok(())
    }
    fn on_frame_end(&mut self) -> wsloop::Result<()> {
        self.tx.send("frame_end".into()).unwrap();
        Ok(())
    }
    fn on_message_end(&mut self) -> wsloop::Result<()> {
        self.tx.send("end".into()).unwrap();
        Ok(())
    }
    fn on_close(&mut self, code: CloseCode, _reason: &str) {
        self.tx.send(format!("close {code}")).unwrap();
    }
    fn on_error(&mut self, err: Error) {
        self.tx.send(format!("error {err}")).unwrap();
    }
}

fn level_server(level: Level, settings: Settings) -> (Server, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    (spawn_server(move |_out: Sender| Levels { level, tx: tx.clone() }, settings), rx)
}

fn expect_seq(rx: &mpsc::Receiver<String>, seq: &[&str]) {
    for want in seq {
        let got = rx.recv_timeout(T).unwrap_or_else(|_| panic!("missing callback {want:?}"));
        assert_eq!(got, *want);
    }
}

#[test]
fn frame_level_sequence_preserves_fragmentation() {
    let (server, rx) = level_server(Level::Frame, Settings::default());
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(false, 1, b"Hel");
    c.send_frame(false, 0, b"");
    c.send_frame(true, 0, b"lo");
    c.send_frame(true, 2, b"bin");
    expect_seq(&rx, &["begin Text", "frame Hel", "frame ", "frame lo", "end", "begin Binary", "frame bin", "end"]);
    server.stop();
}

#[test]
fn stream_level_delivers_chunks_as_they_arrive() {
    let (server, rx) = level_server(Level::Stream, Settings::default());
    let mut c = Raw::connect(server.addr, "/");
    // One 100-byte frame written in two parts with a pause: the first part is delivered before
    // the rest is even sent.
    let frame = bytes_frame(true, 2, &[7u8; 100]);
    c.send_raw(&frame[..6 + 40]);
    expect_seq(&rx, &["begin Binary", "frame_begin 100", "data 40"]);
    c.send_raw(&frame[6 + 40..]);
    expect_seq(&rx, &["data 60", "frame_end", "end"]);
    // A fragmented text message: one frame_begin/frame_end pair per frame.
    c.send_frame(false, 1, "é".as_bytes());
    c.send_frame(true, 0, b"!");
    expect_seq(
        &rx,
        &["begin Text", "frame_begin 2", "data 2", "frame_end", "frame_begin 1", "data 1", "frame_end", "end"],
    );
    server.stop();
}

#[test]
fn bad_utf8_in_third_frame_fails_with_1007_at_every_level() {
    for level in [Level::Message, Level::Frame, Level::Stream] {
        let (server, rx) = level_server(level, Settings::default());
        let mut c = Raw::connect(server.addr, "/");
        c.send_frame(false, 1, b"ok ");
        c.send_frame(false, 0, b"still ok ");
        c.send_frame(false, 0, b"bad \xc0\xaf here");
        assert_eq!(c.read_close_code(), 1007, "{level:?}");
        let seen: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).collect();
        assert!(seen.iter().any(|s| s.starts_with("error protocol error: invalid UTF-8")), "{level:?}: {seen:?}");
        assert!(seen.contains(&"close 1007".to_string()), "{level:?}: {seen:?}");
        assert!(
            !seen.iter().any(|s| s == "end" || s.starts_with("message")),
            "no message end after the error: {seen:?}"
        );
        server.stop();
    }
}

#[test]
fn peer_dropping_mid_frame_reports_1006() {
    let (server, rx) = level_server(Level::Stream, Settings::default());
    let mut c = Raw::connect(server.addr, "/");
    let frame = bytes_frame(true, 2, &[1u8; 1000]);
    c.send_raw(&frame[..500]);
    expect_seq(&rx, &["begin Binary", "frame_begin 1000"]);
    drop(c);
    let rest: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(2)).ok()).collect();
    assert_eq!(rest.last().map(String::as_str), Some("close 1006"), "{rest:?}");
    assert!(!rest.iter().any(|s| s == "frame_end" || s == "end"), "{rest:?}");
    server.stop();
}

#[test]
fn size_limits_apply_at_message_level_and_lift_at_stream_level() {
    let settings = Settings { max_message_size: Some(1000), ..Settings::default() };
    // Message level: 3 x 400 bytes exceeds 1000 when the third frame's header arrives.
    let (server, rx) = level_server(Level::Message, settings.clone());
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(false, 2, &[0; 400]);
    c.send_frame(false, 0, &[0; 400]);
    c.send_frame(true, 0, &[0; 400]);
    assert_eq!(c.read_close_code(), 1009);
    let seen: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(seen.contains(&"close 1009".to_string()), "{seen:?}");
    server.stop();
    // Stream level: the same message passes (the frame limit still applies).
    let (server, rx) = level_server(Level::Stream, settings);
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(false, 2, &[0; 400]);
    c.send_frame(false, 0, &[0; 400]);
    c.send_frame(true, 0, &[0; 400]);
    let seen: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).collect();
    let total: usize = seen.iter().filter_map(|s| s.strip_prefix("data ")?.parse::<usize>().ok()).sum();
    assert_eq!(total, 1200);
    assert_eq!(seen.last().map(String::as_str), Some("end"));
    server.stop();
}

#[test]
fn one_gib_through_the_message_api_is_refused_with_1009() {
    // 1 GiB announced as 16 MiB frames: the default 64 MiB message limit trips at the fifth
    // frame's header, before its payload is buffered.
    let (server, rx) = level_server(Level::Message, Settings::default());
    let mut c = Raw::connect(server.addr, "/");
    let frame = vec![0u8; 16 << 20];
    for i in 0..4 {
        c.send_frame(false, if i == 0 { 2 } else { 0 }, &frame);
    }
    // The fifth header alone (no payload) is enough to be refused.
    let mut header = vec![0x00u8, 0x80 | 127];
    header.extend_from_slice(&((16u64 << 20).to_be_bytes()));
    header.extend_from_slice(&[0, 0, 0, 0]);
    c.send_raw(&header);
    assert_eq!(c.read_close_code(), 1009);
    let seen: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(seen.iter().any(|s| s.contains("exceeds the limit of 67108864")), "{seen:?}");
    server.stop();
}

/// On "go": sends a message through the frame API, a whole message meanwhile (which must wait
/// until the first ends), then one through the streaming API.
struct FrameSender {
    out: Sender,
}

impl Handler for FrameSender {
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        if msg.as_text() != Some("go") {
            return Ok(());
        }
        self.out.begin_message(MessageKind::Text)?;
        self.out.send_frame("a")?;
        self.out.send("whole")?; // deferred until end_message
        self.out.ping(&b"!"[..])?; // control frames go out at once, between fragments
        self.out.send_frame("b")?;
        self.out.end_message()?;
        self.out.begin_message(MessageKind::Binary)?;
        self.out.begin_frame(5)?;
        self.out.send_frame_data(&b"12"[..])?;
        self.out.send_frame_data(&b"345"[..])?;
        self.out.begin_frame(0)?;
        self.out.end_message_with(&b"z"[..])
    }
}

#[test]
fn sending_through_the_frame_and_streaming_apis() {
    let server = spawn_server(|out: Sender| FrameSender { out }, Settings::default());
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(true, 1, b"go");
    let frames: Vec<(bool, u8, Vec<u8>)> = (0..8)
        .map(|_| {
            let f = c.read_frame();
            (f.fin, f.opcode, f.payload)
        })
        .collect();
    let expect: Vec<(bool, u8, &[u8])> = vec![
        (false, 1, b"a"),
        (true, 9, b"!"),
        (false, 0, b"b"),
        (true, 0, b""),
        (true, 1, b"whole"),
        (false, 2, b"12345"),
        (false, 0, b""),
        (true, 0, b"z"),
    ];
    for (i, (fin, op, payload)) in expect.iter().enumerate() {
        assert_eq!((frames[i].0, frames[i].1, &frames[i].2[..]), (*fin, *op, *payload), "frame {i}");
    }
    server.stop();
}

#[test]
fn streaming_misuse_fails_the_connection_with_1011() {
    let server = spawn_server(
        |out: Sender| {
            move |_msg: Message| {
                out.begin_message(MessageKind::Binary)?;
                out.begin_frame(2)?;
                out.send_frame_data(&b"123"[..]) // one byte more than announced
            }
        },
        Settings::default(),
    );
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(true, 1, b"x");
    assert_eq!(c.read_close_code(), 1011);
    server.stop();
}

#[test]
fn auto_fragmentation_splits_outgoing_messages() {
    let settings = Settings { auto_fragment_size: Some(4), ..Settings::default() };
    let server = spawn_server(|out: Sender| move |msg: Message| out.send(msg), settings);
    let mut c = Raw::connect(server.addr, "/");
    c.send_frame(true, 1, b"0123456789");
    let got: Vec<(bool, u8, Vec<u8>)> = (0..3)
        .map(|_| {
            let f = c.read_frame();
            (f.fin, f.opcode, f.payload)
        })
        .collect();
    assert_eq!(got, vec![(false, 1, b"0123".to_vec()), (false, 0, b"4567".to_vec()), (true, 0, b"89".to_vec())]);
    server.stop();
}

#[test]
fn prepared_message_reaches_a_thousand_connections_intact() {
    const N: usize = 1000;
    let opened = Arc::new(AtomicUsize::new(0));
    let o = opened.clone();
    let server = spawn_server(
        move |out: Sender| {
            let o = o.clone();
            struct Count(Arc<AtomicUsize>);
            impl Handler for Count {
                fn on_open(&mut self) -> wsloop::Result<()> {
                    self.0.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }
            let _ = out;
            Count(o)
        },
        Settings::default(),
    );
    // The clients: a wsloop client loop that counts intact copies and closes.
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let intact = Arc::new(AtomicUsize::new(0));
    struct Receiver {
        out: Sender,
        expect: Arc<Vec<u8>>,
        intact: Arc<AtomicUsize>,
    }
    impl Handler for Receiver {
        fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
            if msg.as_bytes() == &self.expect[..] {
                self.intact.fetch_add(1, Ordering::Relaxed);
            }
            self.out.close(CloseCode::NORMAL, "")
        }
    }
    let expect = Arc::new(payload.clone());
    let i2 = intact.clone();
    let mut clients =
        WebSocket::new(move |out: Sender| Receiver { out, expect: expect.clone(), intact: i2.clone() }).unwrap();
    for _ in 0..N {
        clients.connect(&server.url()).unwrap();
    }
    let h = clients.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while opened.load(Ordering::Relaxed) < N {
        assert!(std::time::Instant::now() < deadline, "only {} opened", opened.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(10));
    }
    let prepared = PreparedMessage::new(payload);
    server.control.broadcast_prepared(&prepared).unwrap();
    join_within(h, Duration::from_secs(30));
    assert_eq!(intact.load(Ordering::Relaxed), N);
    server.stop();
}

#[test]
fn on_writable_follows_a_burst_the_kernel_takes_at_once() {
    // A client queues 1 MiB in one callback (above the 64 KiB low-water mark). Even when the
    // kernel accepts it all in the same loop turn, on_writable must follow, or a sender paced by
    // it would stall.
    let server = spawn_server(|_out: Sender| move |_msg: Message| Ok(()), Settings::default());
    let (tx, rx) = mpsc::channel();
    struct Burst {
        out: Sender,
        tx: mpsc::Sender<usize>,
    }
    impl Handler for Burst {
        fn on_open(&mut self) -> wsloop::Result<()> {
            self.out.send(vec![0u8; 1 << 20])
        }
        fn on_writable(&mut self) -> wsloop::Result<()> {
            self.tx.send(self.out.buffered_amount()).unwrap();
            self.out.close(CloseCode::NORMAL, "")
        }
    }
    let mut client = WebSocket::new(move |out: Sender| Burst { out, tx: tx.clone() }).unwrap();
    client.connect(&server.url()).unwrap();
    let h = client.spawn().unwrap();
    let buffered = rx.recv_timeout(T).expect("on_writable was never called");
    assert!(buffered <= Settings::default().send_queue_low_water, "called with {buffered} bytes still queued");
    join_within(h, T);
    server.stop();
}
