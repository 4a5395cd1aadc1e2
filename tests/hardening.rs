//! Hardening (issue 7): a server on the internet meets slow clients, dead peers, floods and
//! hostile bytes. These tests drive a real server over loopback sockets and check that wsloop
//! keeps serving everyone else, never panics, bounds its memory by its settings, and loses no
//! message it accepted while the connection stays open. `docs/reliability.md` documents every
//! limit exercised here.
//!
//! The tests run one at a time (`serial()`): several measure the whole process (memory, file
//! descriptors) or a thread's CPU time. Every wait is bounded.
//!
//! `ping_flood_from_a_peer_that_never_reads_stays_bounded` and
//! `broadcast_to_a_peer_that_never_reads_stays_bounded` guard the fix for automatic pongs and
//! broadcasts that were once queued without checking `Settings::max_send_queue`.

mod hardening_support;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hardening_support::*;
use support::{join_within, read_close, recording_server, spawn_server, tclient, wait_for, Ev, Recorder, T};
use wsloop::{CloseCode, ConnId, Error, Sender, Settings, WebSocket};

const MIB: usize = 1 << 20;

/// One echo round trip on a tungstenite client; returns its latency.
fn echo_round_trip(c: &mut support::Client, text: &str) -> Duration {
    let start = Instant::now();
    c.send(tungstenite::Message::text(text)).unwrap();
    loop {
        match c.read().unwrap() {
            tungstenite::Message::Text(t) => {
                assert_eq!(t.as_str(), text, "echo");
                return start.elapsed();
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// Every event received within `quiet` of the previous one.
fn drain<E>(rx: &mpsc::Receiver<E>, quiet: Duration) -> Vec<E> {
    let mut v = Vec::new();
    while let Ok(e) = rx.recv_timeout(quiet) {
        v.push(e);
    }
    v
}

/// A server whose handlers are [`Tagged`], with the factory's probes.
fn tagged_server(settings: Settings) -> (support::Server, mpsc::Receiver<(ConnId, Ev)>, Probes) {
    let (tx, rx) = mpsc::channel();
    let factory = TaggedFactory::new(tx);
    let probes = factory.probes();
    (spawn_server(factory, settings), rx, probes)
}

/// Open `n` raw connections and complete their handshakes, in batches of 100: the listen backlog
/// is mio's 128, and a burst beyond it while the loop is busy makes the kernel drop SYNs (the
/// client retries after 1 s, by which time a short `open_timeout` may have expired).
fn open_raw(addr: std::net::SocketAddr, n: usize) -> Vec<Raw> {
    let req = upgrade_request(addr, "");
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let mut batch: Vec<Raw> = (0..(n - all.len()).min(100)).map(|_| Raw::connect(addr)).collect();
        for c in &mut batch {
            c.write_all(req.as_bytes());
        }
        for c in &mut batch {
            assert_101(&c.read_head());
        }
        all.extend(batch);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Opening handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_is_dropped_after_open_timeout_while_others_are_served() {
    let _g = serial();
    let settings = Settings { open_timeout: ms(300), ..Settings::default() };
    let (server, rx) = recording_server(settings, true, None, None);
    let addr = server.addr;

    let slow = TcpStream::connect(addr).unwrap();
    slow.set_nodelay(true).unwrap();
    let connected = Instant::now();
    let mut w = slow.try_clone().unwrap();
    // One byte of a valid upgrade request every 100 ms (the whole request would take 15 s).
    let writer = std::thread::spawn(move || {
        let req = upgrade_request(addr, "");
        let mut sent = 0;
        for b in req.bytes().take(50) {
            std::thread::sleep(ms(100));
            if w.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let reader = std::thread::spawn(move || {
        let mut r = slow;
        r.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        let end = match r.read_to_end(&mut got) {
            Ok(_) => End::Eof,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => End::Reset,
            Err(e) => panic!("slow client: {e}"),
        };
        (connected.elapsed(), got, end)
    });

    // Meanwhile a well-behaved client is served with low latency.
    let mut c = tclient(&server.url());
    let (mut rounds, mut worst) = (0, Duration::ZERO);
    while !reader.is_finished() {
        assert!(connected.elapsed() < Duration::from_secs(4), "the slow client was never dropped");
        worst = worst.max(echo_round_trip(&mut c, &format!("m{rounds}")));
        rounds += 1;
        std::thread::sleep(ms(20));
    }
    let (elapsed, got, end) = reader.join().unwrap();
    let sent = writer.join().unwrap();
    eprintln!("slowloris: dropped after {elapsed:?} ({end:?}, {sent} bytes sent); {rounds} echoes, worst {worst:?}");
    assert!(got.is_empty(), "a timed-out handshake gets no HTTP response: {:?}", String::from_utf8_lossy(&got));
    // The server closes the socket: FIN, or RST if a byte of ours was in flight as it closed.
    assert!(matches!(end, End::Eof | End::Reset));
    assert!(elapsed >= ms(300), "dropped before open_timeout: {elapsed:?}");
    assert!(elapsed < ms(1500), "dropped too late: {elapsed:?}");
    assert!((2..10).contains(&sent), "the trickle was cut off by the close, after {sent} bytes");
    assert!(rounds >= 5, "only {rounds} echoes while the slow client trickled");
    assert!(worst < ms(250), "echo latency {worst:?} while a slowloris was connected");
    for i in 0..3 {
        echo_round_trip(&mut c, &format!("after{i}"));
    }

    // The slow connection reported its handshake timeout; it never opened.
    let events = drain(&rx, ms(200));
    let errors: Vec<&Ev> = events.iter().filter(|e| matches!(e, Ev::Error(_))).collect();
    assert_eq!(errors, [&Ev::Error("handshake error: opening handshake timed out".into())]);
    assert_eq!(events.iter().filter(|e| **e == Ev::Open).count(), 1, "only the good client opened");
    assert!(!events.iter().any(|e| matches!(e, Ev::Close(..))), "{events:?}");
    let s = server.control.loop_stats();
    assert_eq!((s.connections, s.accepted, s.closed), (1, 2, 1));
    drop(c);
    server.stop();
}

/// An upgrade request of exactly `total` bytes (head through the blank line).
fn request_of_size(addr: std::net::SocketAddr, total: usize) -> String {
    let base = upgrade_request(addr, "X-Fill: \r\n").len();
    let r = upgrade_request(addr, &format!("X-Fill: {}\r\n", "a".repeat(total - base)));
    assert_eq!(r.len(), total);
    r
}

/// An upgrade request with exactly `fields` header fields.
fn request_with_fields(addr: std::net::SocketAddr, fields: usize) -> String {
    let extra: String = (0..fields - 5).map(|i| format!("X-{i:02}: v\r\n")).collect();
    upgrade_request(addr, &extra)
}

/// Send `req`, read the whole response until the server closes.
fn rejected(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("the server closes after the error response");
    resp
}

#[test]
fn oversized_or_overlong_handshakes_get_431_and_a_close() {
    let _g = serial();
    let settings = Settings { max_handshake_bytes: 1024, ..Settings::default() };
    assert_eq!(settings.max_handshake_headers, 64);
    let (server, rx) = recording_server(settings, true, None, None);
    let addr = server.addr;

    // At the byte limit: accepted.
    let mut c = Raw::connect(addr);
    c.write_all(request_of_size(addr, 1024).as_bytes());
    assert_101(&c.read_head());
    assert!(matches!(support::next(&rx, T), Ev::Request { .. }));
    assert_eq!(support::next(&rx, T), Ev::Open);
    drop(c);
    assert_eq!(support::next(&rx, T), Ev::Close(1006, String::new()));

    // One byte over, and far over: 431, the connection closed after the response.
    for size in [1025, 64 * 1024] {
        let resp = rejected(addr, &request_of_size(addr, size));
        assert!(resp.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{size}: {resp:?}");
        assert!(resp.ends_with("\r\n\r\nhandshake headers exceed 1024 bytes"), "{size}: {resp:?}");
        assert_eq!(support::next(&rx, T), Ev::Error("handshake error: handshake headers exceed 1024 bytes".into()));
    }

    // At the header-count limit: accepted; one more field: 431.
    let mut c = Raw::connect(addr);
    c.write_all(request_with_fields(addr, 64).as_bytes());
    assert_101(&c.read_head());
    assert!(matches!(support::next(&rx, T), Ev::Request { .. }));
    assert_eq!(support::next(&rx, T), Ev::Open);
    drop(c);
    assert_eq!(support::next(&rx, T), Ev::Close(1006, String::new()));
    let resp = rejected(addr, &request_with_fields(addr, 65));
    assert!(resp.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{resp:?}");
    assert!(resp.ends_with("\r\n\r\nhandshake has more than 64 headers"), "{resp:?}");
    assert_eq!(support::next(&rx, T), Ev::Error("handshake error: handshake has more than 64 headers".into()));

    assert!(drain(&rx, ms(100)).is_empty(), "rejected requests never reach on_request, on_open or on_close");
    wait_until(T, "all connections removed", || server.control.loop_stats().connections == 0);
    server.stop();
}

#[test]
fn one_byte_per_write_still_works() {
    let _g = serial();
    let (server, rx) = recording_server(Settings::default(), true, None, None);
    let addr = server.addr;
    let pause = Duration::from_micros(200);
    let mut c = Raw::connect(addr);
    c.write_bytewise(upgrade_request(addr, "").as_bytes(), pause);
    assert_101(&c.read_head());

    let mut wire = Vec::new();
    wire.extend(client_frame(OP_TEXT, true, "héllo wörld".as_bytes()));
    // A fragmented text message with "€" split across its fragments and a ping between them.
    let euro = "frag€ment".as_bytes();
    wire.extend(client_frame(OP_TEXT, false, &euro[..5]));
    wire.extend(client_frame(OP_PING, true, b"p"));
    wire.extend(client_frame(OP_CONT, true, &euro[5..]));
    let bin: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    wire.extend(client_frame(OP_BINARY, true, &bin));
    wire.extend(client_frame(OP_CLOSE, true, &close_payload(1000, "done")));
    c.write_bytewise(&wire, pause);

    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_TEXT, payload: "héllo wörld".into() });
    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_PONG, payload: b"p".to_vec() });
    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_TEXT, payload: "frag€ment".into() });
    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_BINARY, payload: bin.clone() });
    assert_eq!(c.read_close(), (1000, String::new()));
    assert_eq!(c.read_end(), End::Eof, "the server closes TCP after the closing handshake");

    let events: Vec<Ev> = drain(&rx, ms(200)).into_iter().filter(|e| !matches!(e, Ev::Request { .. })).collect();
    assert_eq!(
        events,
        [
            Ev::Open,
            Ev::Message(wsloop::Message::text("héllo wörld")),
            Ev::Ping(b"p".to_vec()),
            Ev::Message(wsloop::Message::text("frag€ment")),
            Ev::Message(wsloop::Message::binary(bin)),
            Ev::Close(1000, "done".into()),
        ]
    );
    drop(c);
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------------

#[test]
fn peer_that_never_reads_hits_send_queue_full_with_bounded_memory() {
    let _g = serial();
    const LIMIT: usize = MIB;
    const MSG: usize = 128 << 10;
    const FRAME: usize = MSG + 10; // 64-bit length form
    let settings = Settings { max_send_queue: LIMIT, ..Settings::default() };
    assert_eq!(settings.send_queue_low_water, 64 << 10);
    let (stx, srx) = mpsc::channel::<Sender>();
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(
        move |out: Sender| {
            stx.send(out.clone()).unwrap();
            Recorder { out, tx: tx.clone(), echo: true, protocol: None, reject: None }
        },
        settings,
    );
    // The slow reader completes its handshake, then reads nothing until the end.
    let mut slow = Raw::handshake(server.addr);
    let out = srx.recv_timeout(T).unwrap();
    wait_for(&rx, T, |e| *e == Ev::Open);
    let mut fast = tclient(&server.url());
    srx.recv_timeout(T).unwrap();
    wait_for(&rx, T, |e| *e == Ev::Open);

    let rss0 = rss_bytes();
    // A foreign thread pushes fresh 128 KiB messages (each its own allocation, so an unbounded
    // queue would show in memory) as fast as it can, then once per millisecond once refused.
    let flood_out = out.clone();
    let flooder = std::thread::spawn(move || {
        let (mut accepted, mut full, mut attempts, mut max_buffered) = (0u64, 0u64, 0u64, 0usize);
        let start = Instant::now();
        while start.elapsed() < ms(1200) && attempts < 5000 {
            attempts += 1;
            let mut m = vec![0u8; MSG];
            m[..8].copy_from_slice(&accepted.to_be_bytes());
            m[MSG - 1] = 0xEE;
            match flood_out.send(m) {
                Ok(()) => accepted += 1,
                Err(Error::SendQueueFull { queued, max }) => {
                    assert_eq!(max, LIMIT);
                    assert!(queued <= LIMIT && queued + FRAME > LIMIT, "refused at {queued} queued");
                    full += 1;
                    std::thread::sleep(ms(1));
                }
                Err(e) => panic!("send failed with {e}"),
            }
            max_buffered = max_buffered.max(flood_out.buffered_amount());
        }
        (accepted, full, attempts, max_buffered)
    });
    let (mut worst, mut rounds, mut rss_max) = (Duration::ZERO, 0, rss0);
    while !flooder.is_finished() {
        worst = worst.max(echo_round_trip(&mut fast, &format!("r{rounds}")));
        rounds += 1;
        rss_max = rss_max.max(rss_bytes());
        std::thread::sleep(ms(20));
    }
    let (accepted, full, attempts, max_buffered) = flooder.join().unwrap();
    rss_max = rss_max.max(rss_bytes());
    eprintln!(
        "flood: {accepted} accepted, {full} refused of {attempts}; max buffered {max_buffered}; \
         RSS +{} KiB; {rounds} echoes, worst {worst:?}",
        rss_max.saturating_sub(rss0) / 1024
    );
    assert!(full > 0, "the queue never filled ({accepted} accepted)");
    assert!(attempts as usize * MSG > 64 * MIB, "the flood offered only {attempts} messages");
    assert!(max_buffered <= LIMIT, "buffered_amount reached {max_buffered}");
    // Saturated: the peer reads nothing, so the queue stays full.
    match out.send(vec![0u8; MSG]) {
        Err(Error::SendQueueFull { queued, max: LIMIT }) => assert!(queued + FRAME > LIMIT),
        other => panic!("expected SendQueueFull, got {other:?}"),
    }
    let buffered = out.buffered_amount();
    assert!(buffered <= LIMIT && buffered + FRAME > LIMIT, "buffered_amount {buffered}");
    let grew = rss_max.saturating_sub(rss0);
    assert!(grew < 32 * MIB, "memory grew by {} MiB while {} MiB were offered", grew / MIB, attempts as usize / 8);
    assert!(rounds >= 10, "only {rounds} echoes during the flood");
    assert!(worst < ms(250), "echo latency {worst:?} during the flood");
    // Nothing can drain while the peer reads nothing.
    let _ = rx.try_iter().count();

    // The slow reader reads everything: every accepted message, in order, intact.
    for i in 0..accepted {
        let f = slow.read_frame();
        assert_eq!((f.fin, f.opcode, f.payload.len()), (true, OP_BINARY, MSG), "message {i}");
        assert_eq!(u64::from_be_bytes(f.payload[..8].try_into().unwrap()), i, "message order");
        assert_eq!(f.payload[MSG - 1], 0xEE);
    }
    // The queue drained below the low-water mark: on_writable, once.
    assert_eq!(wait_for(&rx, T, |e| *e == Ev::Writable), Ev::Writable);
    wait_until(T, "queue drained", || out.buffered_amount() == 0);
    let mut m = vec![0u8; MSG];
    m[..8].copy_from_slice(&accepted.to_be_bytes());
    out.send(m).expect("sending works again once drained");
    let f = slow.read_frame();
    assert_eq!(u64::from_be_bytes(f.payload[..8].try_into().unwrap()), accepted);
    // That send (128 KiB) took the queue above the low-water mark again: one more on_writable
    // once it drained, and no other.
    assert_eq!(wait_for(&rx, T, |e| *e == Ev::Writable), Ev::Writable);
    echo_round_trip(&mut fast, "still here");
    let later = drain(&rx, ms(200));
    assert!(!later.contains(&Ev::Writable), "on_writable again without a new backlog: {later:?}");
    drop((slow, fast));
    server.stop();
}

#[test]
fn ping_flood_from_a_peer_that_never_reads_stays_bounded() {
    let _g = serial();
    const LIMIT: usize = MIB;
    let settings = Settings { max_send_queue: LIMIT, ..Settings::default() };
    // Pongs are queued by the loop itself; allow one read buffer's worth of them past the limit.
    let bound = LIMIT + settings.read_buffer_size;
    let (server, _rx, probes) = tagged_server(settings);
    let slow = Raw::handshake(server.addr);
    let out = probes.sender(0);
    let mut fast = tclient(&server.url());
    echo_round_trip(&mut fast, "ready");
    let rss0 = rss_bytes();

    // 300,000 pings of 125 bytes (39 MB), never reading the pongs. The write times out if the
    // server stops reading, and fails if it closes the connection: both end the flood.
    let mut w = slow.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk: Vec<u8> = (0..1000).flat_map(|_| client_frame(OP_PING, true, &[0x55; 125])).collect();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        while sent < 300 && start.elapsed() < Duration::from_secs(8) {
            if let Err(e) = w.write_all(&chunk) {
                return (sent, Some(e.kind()));
            }
            sent += 1;
        }
        (sent, None)
    });
    let (mut max_buffered, mut rss_max, mut worst, mut rounds) = (0, rss0, Duration::ZERO, 0);
    while !writer.is_finished() {
        max_buffered = max_buffered.max(out.buffered_amount());
        rss_max = rss_max.max(rss_bytes());
        worst = worst.max(echo_round_trip(&mut fast, &format!("r{rounds}")));
        rounds += 1;
        std::thread::sleep(ms(10));
    }
    let (sent, ended) = writer.join().unwrap();
    // Let the loop work through what it has read, then sample once more.
    std::thread::sleep(ms(300));
    max_buffered = max_buffered.max(out.buffered_amount());
    rss_max = rss_max.max(rss_bytes());
    let grew = rss_max.saturating_sub(rss0);
    eprintln!(
        "ping flood: {} pings sent (ended by {ended:?}); max buffered {max_buffered}; RSS +{} KiB; \
         {rounds} echoes, worst {worst:?}",
        sent * 1000,
        grew / 1024
    );
    // Clean up before asserting, so a failure leaves no loop running into the next test.
    drop((slow, fast));
    server.stop();
    assert!(worst < ms(250), "echo latency {worst:?} during the ping flood");
    assert!(
        max_buffered <= bound,
        "pongs for a peer that never reads queued {max_buffered} bytes (max_send_queue {LIMIT})"
    );
    assert!(grew < 16 * MIB, "memory grew by {} MiB during the ping flood", grew / MIB);
}

#[test]
fn broadcast_to_a_peer_that_never_reads_stays_bounded() {
    let _g = serial();
    const LIMIT: usize = MIB;
    const MSG: usize = 64 << 10;
    const N: u64 = 600; // 37.5 MiB in all
    let (server, _rx, probes) = tagged_server(Settings { max_send_queue: LIMIT, ..Settings::default() });
    let mut slow = Raw::handshake(server.addr);
    let slow_out = probes.sender(0);
    let mut fast = tclient(&server.url());
    echo_round_trip(&mut fast, "ready");
    let fast_out = probes.sender(1);
    let rss0 = rss_bytes();

    // The fast client reads every broadcast; the broadcaster paces itself by the fast client's
    // queue (as a well-behaved application does), never by the slow one's.
    let reader = std::thread::spawn(move || {
        for i in 0..N {
            match fast.read().unwrap() {
                tungstenite::Message::Binary(b) => {
                    assert_eq!(b.len(), MSG);
                    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), i, "broadcast order");
                }
                other => panic!("expected broadcast {i}, got {other:?}"),
            }
        }
        fast
    });
    let ctl = server.control.clone();
    let broadcaster = std::thread::spawn(move || {
        for i in 0..N {
            wait_until(T, "fast client keeps up", || fast_out.buffered_amount() < 256 << 10);
            let mut m = vec![0u8; MSG];
            m[..8].copy_from_slice(&i.to_be_bytes());
            ctl.broadcast(m).unwrap();
        }
    });
    let (mut max_buffered, mut rss_max) = (0, rss0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(reader.is_finished() && broadcaster.is_finished()) {
        assert!(Instant::now() < deadline, "broadcast did not finish");
        max_buffered = max_buffered.max(slow_out.buffered_amount());
        rss_max = rss_max.max(rss_bytes());
        std::thread::sleep(ms(5));
    }
    broadcaster.join().unwrap();
    let fast = reader.join().unwrap();
    max_buffered = max_buffered.max(slow_out.buffered_amount());
    let grew = rss_max.saturating_sub(rss0);
    eprintln!("broadcast: slow peer's max buffered {max_buffered}; RSS +{} KiB", grew / 1024);

    // Whatever the slow peer was sent arrives in order, from the first broadcast, with no gap; if
    // it got fewer than all of them, the server must have closed it.
    let (mut got, mut wrong) = (0, None);
    while got < N {
        match slow.try_read_frame() {
            Ok(f) if f.opcode == OP_BINARY && u64::from_be_bytes(f.payload[..8].try_into().unwrap()) == got => got += 1,
            Ok(f) if f.opcode == OP_CLOSE => break,
            Ok(f) => {
                wrong = Some((f.opcode, f.payload.get(..8).map(<[u8]>::to_vec)));
                break;
            }
            Err(_) => break,
        }
    }
    let still_open = slow_out.is_open();
    // Clean up before asserting, so a failure leaves no loop running into the next test.
    drop((slow, fast));
    server.stop();
    assert_eq!(wrong, None, "after {got} broadcasts in order the slow peer got something else");
    assert!(got == N || !still_open, "slow peer got {got} of {N} broadcasts and is still open");
    // `buffered_amount` also counts broadcasts the loop has not applied yet (at most what the
    // broadcaster's pacing lets through: 256 KiB plus one message), on top of the queue itself.
    assert!(
        max_buffered <= LIMIT + (256 << 10) + MSG,
        "broadcasts queued {max_buffered} bytes for a peer that never reads (max_send_queue {LIMIT})"
    );
    assert!(grew < 16 * MIB, "memory grew by {} MiB during the broadcast", grew / MIB);
}

// ---------------------------------------------------------------------------------------------
// Dead and idle peers
// ---------------------------------------------------------------------------------------------

#[test]
fn keepalive_drops_a_dead_peer_with_1006_and_timeout() {
    let _g = serial();
    let settings = Settings { keepalive_interval: Some(ms(200)), keepalive_timeout: ms(200), ..Settings::default() };
    let (server, rx) = recording_server(settings, true, None, None);
    // Completes the handshake, then neither reads nor writes; the socket stays open.
    let mut dead = Raw::handshake(server.addr);
    wait_for(&rx, T, |e| *e == Ev::Open);
    let opened = Instant::now();
    assert_eq!(support::next(&rx, T), Ev::Error("timed out: keep-alive".into()));
    assert_eq!(support::next(&rx, T), Ev::Close(1006, String::new()));
    let elapsed = opened.elapsed();
    assert!(elapsed >= ms(350), "dropped after {elapsed:?}: before interval + timeout");
    assert!(elapsed < ms(1200), "dropped after {elapsed:?}");
    // It had received exactly one ping, then the TCP close (no close frame).
    assert_eq!(dead.read_frame(), Frame { fin: true, opcode: OP_PING, payload: vec![] });
    assert_eq!(dead.read_end(), End::Eof);
    assert!(drain(&rx, ms(100)).is_empty());
    wait_until(T, "dead peer removed", || server.control.loop_stats().connections == 0);
    server.stop();
}

#[test]
fn keepalive_keeps_a_responsive_peer() {
    let _g = serial();
    let settings = Settings { keepalive_interval: Some(ms(200)), keepalive_timeout: ms(200), ..Settings::default() };
    let (server, rx) = recording_server(settings, true, None, None);
    let mut c = tclient(&server.url());
    c.get_mut().set_read_timeout(Some(ms(50))).unwrap();
    let start = Instant::now();
    let mut pings = 0;
    // Six keep-alive intervals; tungstenite answers each ping (flushed at once).
    while start.elapsed() < ms(1200) {
        match c.read() {
            Ok(tungstenite::Message::Ping(p)) => {
                assert!(p.is_empty());
                pings += 1;
                c.flush().unwrap();
            }
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
    c.get_mut().set_read_timeout(Some(T)).unwrap();
    echo_round_trip(&mut c, "alive");
    assert!(pings >= 3, "{pings} keep-alive pings in 1.2 s with a 200 ms interval");
    let events = drain(&rx, ms(100));
    let pongs = events.iter().filter(|e| **e == Ev::Pong(vec![])).count();
    assert!(pongs >= 3, "{pongs} pongs reached the server");
    assert!(!events.iter().any(|e| matches!(e, Ev::Close(..) | Ev::Error(_))), "{events:?}");
    assert_eq!(server.control.loop_stats().connections, 1);
    drop(c);
    server.stop();
}

#[test]
fn idle_timeout_closes_with_1001() {
    let _g = serial();
    let settings = Settings { idle_timeout: Some(ms(300)), keepalive_interval: None, ..Settings::default() };
    let (server, rx) = recording_server(settings, true, None, None);
    let mut c = tclient(&server.url());
    // Traffic every 100 ms keeps it open for more than three idle periods.
    let start = Instant::now();
    let (mut n, mut last) = (0, Instant::now());
    while start.elapsed() < ms(1000) {
        last = Instant::now();
        echo_round_trip(&mut c, &format!("tick{n}"));
        n += 1;
        std::thread::sleep(ms(100));
    }
    assert_eq!(read_close(&mut c), (1001, "idle timeout".to_string()));
    let waited = last.elapsed();
    assert!(waited >= ms(300) && waited < ms(1000), "idle close after {waited:?} of silence");
    c.flush().unwrap(); // tungstenite's echo of the close
    match c.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected a clean TCP close, got {other:?}"),
    }
    let events: Vec<Ev> = drain(&rx, ms(100));
    assert_eq!(events.last(), Some(&Ev::Close(1001, "idle timeout".into())), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Ev::Error(_))), "{events:?}");
    drop(c);
    server.stop();
}

#[test]
fn close_timeout_drops_a_peer_that_never_answers() {
    let _g = serial();
    let settings = Settings { close_timeout: ms(300), ..Settings::default() };
    let (stx, srx) = mpsc::channel::<Sender>();
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(
        move |out: Sender| {
            stx.send(out.clone()).unwrap();
            Recorder { out, tx: tx.clone(), echo: true, protocol: None, reject: None }
        },
        settings,
    );

    // A peer that never answers our close frame.
    let mut mute = Raw::handshake(server.addr);
    let out = srx.recv_timeout(T).unwrap();
    wait_for(&rx, T, |e| *e == Ev::Open);
    let closed_at = Instant::now();
    out.close(CloseCode(4000), "bye").unwrap();
    assert_eq!(support::next(&rx, T), Ev::Error("timed out: closing handshake".into()));
    assert_eq!(support::next(&rx, T), Ev::Close(1006, String::new()));
    let elapsed = closed_at.elapsed();
    assert!(elapsed >= ms(300) && elapsed < ms(1200), "dropped after {elapsed:?}");
    assert_eq!(mute.read_close(), (4000, "bye".into()));
    assert_eq!(mute.read_end(), End::Eof);

    // A peer that answers the close frame (and would keep TCP open): after a clean closing
    // handshake nothing more may arrive, so the server closes its socket at once (FIN first,
    // RFC 6455 §7.1.1) instead of waiting for the peer's FIN; on_close reports the peer's code.
    let mut lingering = Raw::handshake(server.addr);
    let out = srx.recv_timeout(T).unwrap();
    wait_for(&rx, T, |e| *e == Ev::Open);
    out.close(CloseCode(4001), "bye").unwrap();
    assert_eq!(lingering.read_close(), (4001, "bye".into()));
    lingering.send(OP_CLOSE, true, &close_payload(4001, ""));
    let answered = Instant::now();
    assert_eq!(support::next(&rx, T), Ev::Close(4001, String::new()));
    assert_eq!(lingering.read_end(), End::Eof, "the server closes TCP after the closing handshake");
    wait_until(T, "connection removed", || server.control.loop_stats().connections == 0);
    let elapsed = answered.elapsed();
    assert!(elapsed < ms(250), "removed {elapsed:?} after the handshake, without waiting for the close timeout");
    assert!(drain(&rx, ms(100)).is_empty(), "on_close only once, no error after a clean close");
    drop(lingering);
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Connection churn and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_connections_leak_nothing() {
    let _g = serial();
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 2000;
    let started = Instant::now();
    let settings = Settings {
        open_timeout: ms(500),
        close_timeout: ms(500),
        keepalive_interval: Some(ms(1000)),
        ..Settings::default()
    };
    let (server, rx, probes) = tagged_server(settings);
    let ctl = server.control.clone();
    let fd_base = fd_count();
    let mut rss_first = 0;
    for round in 1..=ROUNDS {
        let conns = open_raw(server.addr, PER_ROUND);
        wait_until(T, "all open", || ctl.loop_stats().connections == PER_ROUND);
        // One timer per connection: its keep-alive once open (the open-handshake timer is
        // cancelled when the handshake completes), never a pile of spent entries.
        assert_eq!(ctl.loop_stats().timers, PER_ROUND, "one live timer per connection");
        // Half close with a closing handshake, half drop TCP.
        let mut closing = Vec::new();
        for (i, mut c) in conns.into_iter().enumerate() {
            if i % 2 == 0 {
                c.send(OP_CLOSE, true, &close_payload(1000, ""));
                closing.push(c);
            }
        }
        for mut c in closing {
            assert_eq!(c.read_close(), (1000, String::new()));
            assert_eq!(c.read_end(), End::Eof);
        }
        let total = (round * PER_ROUND) as u64;
        wait_until(T, "all removed", || {
            let s = ctl.loop_stats();
            s.connections == 0 && s.accepted == total && s.closed == total
        });
        assert_eq!(ctl.loop_stats().timers, 0, "a connection's timers leave with it");
        // (At most: a loop left over by a failed test may still be closing its sockets.)
        wait_until(T, "file descriptors back to the baseline", || fd_count() <= fd_base);
        assert_eq!(probes.lost(), round * PER_ROUND, "every handler dropped");
        // Each connection opened once and closed once.
        let conns = by_conn(rx.try_iter());
        assert_eq!(conns.len(), PER_ROUND);
        let mut codes = std::collections::BTreeMap::<u16, usize>::new();
        for (id, evs) in &conns {
            match evs.as_slice() {
                [Ev::Open, Ev::Close(code, reason)] if reason.is_empty() => *codes.entry(*code).or_default() += 1,
                other => panic!("{id}: {other:?}"),
            }
        }
        assert_eq!(codes, std::collections::BTreeMap::from([(1000, PER_ROUND / 2), (1006, PER_ROUND / 2)]));
        if round == 1 {
            rss_first = rss_bytes();
        }
        eprintln!("churn: round {round} done at {:?}, RSS {} KiB", started.elapsed(), rss_bytes() / 1024);
    }
    let grew = rss_bytes().saturating_sub(rss_first);
    assert!(grew < 8 * MIB, "memory grew by {} KiB over {} rounds", grew / 1024, ROUNDS - 1);
    assert_eq!(probes.made(), ROUNDS * PER_ROUND);
    assert!(started.elapsed() < Duration::from_secs(25), "churn took {:?}", started.elapsed());
    server.stop();
}

#[test]
fn max_connections_pauses_accepting_without_busy_looping() {
    let _g = serial();
    let settings = Settings { max_connections: 10, ..Settings::default() };
    let (server, rx, probes) = tagged_server(settings);
    let ctl = server.control.clone();
    let mut clients: Vec<support::Client> = (0..10).map(|_| tclient(&server.url())).collect();
    wait_until(T, "ten open", || {
        let s = ctl.loop_stats();
        s.connections == 10 && s.accepted == 10
    });
    assert_eq!(ctl.loop_stats().accept_pauses, 1, "the tenth connection reached the limit");

    // The eleventh connects at TCP level (the kernel's backlog) but gets no handshake response.
    let mut eleventh = Raw::connect(server.addr);
    eleventh.write_all(upgrade_request(server.addr, "").as_bytes());
    let mut cpu = ThreadCpu::open(probes.loop_tid());
    let (t0, wall) = (cpu.ticks(), Instant::now());
    eleventh.s.set_read_timeout(Some(ms(600))).unwrap();
    let mut b = [0u8; 64];
    match eleventh.s.read(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the eleventh client must get nothing while the limit holds, got {other:?}"),
    }
    let (busy, wall) = ((cpu.ticks() - t0) * TICK_MS, wall.elapsed().as_millis() as u64);
    eprintln!("max_connections: loop CPU {busy} ms in {wall} ms of paused accepting");
    assert!(busy * 10 < wall, "the loop used {busy} ms of CPU in {wall} ms while accepting was paused");
    let s = ctl.loop_stats();
    assert_eq!((s.accepted, s.connections, s.accept_pauses), (10, 10, 1));
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(echo_round_trip(c, &format!("c{i}")) < ms(250));
    }

    // One closes: the eleventh is accepted and answered.
    let mut first = clients.remove(0);
    first.close(None).unwrap();
    loop {
        match first.read() {
            Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    drop(first); // the server frees the slot when the client closes TCP
    eleventh.s.set_read_timeout(Some(T)).unwrap();
    let freed = Instant::now();
    assert_101(&eleventh.read_head());
    assert!(freed.elapsed() < ms(500), "accepted {:?} after a slot freed", freed.elapsed());
    eleventh.send(OP_TEXT, true, b"eleven");
    assert_eq!(eleventh.read_frame(), Frame { fin: true, opcode: OP_TEXT, payload: b"eleven".to_vec() });
    let s = ctl.loop_stats();
    assert_eq!((s.accepted, s.connections, s.closed), (11, 10, 1));
    assert_eq!(s.accept_pauses, 2, "at the limit again after accepting the eleventh");
    let events = by_conn(rx.try_iter());
    assert_eq!(events.len(), 11);
    assert_eq!(events.values().filter(|e| e.contains(&Ev::Close(1005, String::new()))).count(), 1);
    drop((clients, eleventh));
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Handler panics
// ---------------------------------------------------------------------------------------------

#[test]
fn handler_panic_closes_only_that_connection_with_1011() {
    let _g = serial();
    let (server, rx, _probes) = tagged_server(Settings::default());
    let mut victim = tclient(&server.url());
    let mut bystander = tclient(&server.url());
    echo_round_trip(&mut bystander, "before");
    let mut opened = by_conn(drain(&rx, ms(100)));
    assert_eq!(opened.len(), 2);

    victim.send(tungstenite::Message::text("boom")).unwrap();
    assert_eq!(read_close(&mut victim), (1011, String::new()));
    victim.flush().unwrap();
    match victim.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected a clean close after 1011, got {other:?}"),
    }
    // The loop survived: the bystander and new clients are served.
    echo_round_trip(&mut bystander, "after");
    let mut newcomer = tclient(&server.url());
    echo_round_trip(&mut newcomer, "new");
    for (id, evs) in by_conn(drain(&rx, ms(100))) {
        opened.entry(id).or_default().extend(evs);
    }
    let victims: Vec<_> = opened.values().filter(|e| e.len() > 1).collect();
    assert_eq!(
        victims,
        [&vec![Ev::Open, Ev::Error("handler panicked: handler exploded".into()), Ev::Close(1011, String::new())]]
    );
    assert_eq!(opened.len(), 3);
    drop((victim, bystander, newcomer));
    server.stop();
}

#[test]
fn handler_panic_propagates_out_of_run_without_catch_panics() {
    let _g = serial();
    let (tx, _rx) = mpsc::channel();
    let settings = Settings { catch_panics: false, ..Settings::default() };
    let mut ws = WebSocket::with_settings(TaggedFactory::new(tx), settings).unwrap();
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let handle = ws.spawn().unwrap();
    let mut c = tclient(&format!("ws://{addr}/"));
    echo_round_trip(&mut c, "hello");
    c.send(tungstenite::Message::text("boom")).unwrap();
    wait_until(T, "loop thread ended", || handle.is_finished());
    let payload = handle.join().expect_err("the panic unwinds out of run()");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"handler exploded"));
    // The loop's sockets are gone with it: no close frame, just the end of the stream.
    match c.read() {
        Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn graceful_shutdown_closes_a_thousand_connections_with_1001() {
    let _g = serial();
    const N: usize = 1000;
    let close_timeout = Duration::from_secs(1);
    let settings = Settings { close_timeout, ..Settings::default() };
    let (mut server, rx, probes) = tagged_server(settings);
    let addr = server.addr;
    let mut conns: Vec<Option<Raw>> = open_raw(addr, N).into_iter().map(Some).collect();
    wait_until(T, "all open", || server.control.loop_stats().connections == N);

    let started = Instant::now();
    server.control.shutdown().unwrap();
    for (i, c) in conns.iter_mut().enumerate() {
        let c = c.as_mut().unwrap();
        assert_eq!(c.read_close(), (1001, "server shutting down".into()), "client {i}");
        // Half the clients answer; the other half never do.
        if i % 2 == 0 {
            c.send(OP_CLOSE, true, &close_payload(1001, ""));
        }
        if i == 0 {
            let refused = TcpStream::connect(addr).expect_err("the listener is closed during shutdown");
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        }
    }
    for (i, slot) in conns.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        let mut c = slot.take().unwrap();
        assert_eq!(c.read_end(), End::Eof, "client {i}: TCP close after the closing handshake");
    }
    join_within(server.handle.take().unwrap(), close_timeout + Duration::from_secs(2));
    let took = started.elapsed();
    eprintln!("shutdown: run() returned {took:?} after shutdown() with {N} connections");
    assert!(took >= close_timeout, "returned after {took:?}, before the silent peers' close timeout");
    assert!(took < close_timeout + ms(1500), "run() returned {took:?} after shutdown()");
    for (i, c) in conns.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        assert_eq!(c.as_mut().unwrap().read_end(), End::Eof, "client {i}: dropped after the close timeout");
    }

    let events = by_conn(rx.try_iter());
    assert_eq!(events.len(), N);
    let (mut answered, mut silent) = (0, 0);
    for (id, evs) in &events {
        match evs.as_slice() {
            [Ev::Open, Ev::Close(1001, r)] if r.is_empty() => answered += 1,
            [Ev::Open, Ev::Error(e), Ev::Close(1006, r)] if e == "timed out: closing handshake" && r.is_empty() => {
                silent += 1
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!((answered, silent), (N / 2, N / 2));
    assert_eq!((probes.made(), probes.lost(), probes.shutdowns()), (N, N, 1));
    let s = server.control.loop_stats();
    assert_eq!((s.connections, s.accepted, s.closed), (0, N as u64, N as u64));
}

// ---------------------------------------------------------------------------------------------
// Frame and message limits
// ---------------------------------------------------------------------------------------------

/// Expect the server to fail the connection with 1009 and `reason`, reported to the handler.
fn expect_too_big(c: &mut Raw, rx: &mpsc::Receiver<(ConnId, Ev)>, reason: &str) {
    let t = Instant::now();
    assert_eq!(c.read_close(), (1009, reason.to_string()));
    assert!(t.elapsed() < ms(1000));
    assert_eq!(c.read_end(), End::Eof, "the server half-closes after failing the connection");
    // (An echo above the low-water mark earlier in the test may add one on_writable.)
    let evs: Vec<Ev> = drain(rx, ms(100)).into_iter().map(|(_, e)| e).filter(|e| *e != Ev::Writable).collect();
    assert_eq!(evs, [Ev::Error(format!("protocol error: {reason}")), Ev::Close(1009, reason.to_string())]);
}

#[test]
fn oversized_frame_fails_with_1009_on_its_header() {
    let _g = serial();
    // Default limit (16 MiB): only the header of a 16 MiB + 1 frame is sent.
    let (server, rx, _p) = tagged_server(Settings::default());
    let mut c = Raw::handshake(server.addr);
    assert_eq!(rx.recv_timeout(T).unwrap().1, Ev::Open);
    c.write_all(&client_header(OP_BINARY, true, (16 << 20) + 1));
    expect_too_big(&mut c, &rx, "frame of 16777217 bytes exceeds the limit of 16777216");
    drop(c);
    server.stop();

    // A small limit: a frame at the limit is echoed, one byte more fails at its header.
    let (server, rx, _p) = tagged_server(Settings { max_frame_size: Some(1024), ..Settings::default() });
    let mut c = Raw::handshake(server.addr);
    assert_eq!(rx.recv_timeout(T).unwrap().1, Ev::Open);
    c.send(OP_BINARY, true, &[7u8; 1024]);
    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_BINARY, payload: vec![7u8; 1024] });
    c.write_all(&client_header(OP_BINARY, false, 1025));
    expect_too_big(&mut c, &rx, "frame of 1025 bytes exceeds the limit of 1024");
    drop(c);
    server.stop();
}

#[test]
fn fragmented_message_over_max_message_size_fails_with_1009() {
    let _g = serial();
    let (server, rx, _p) = tagged_server(Settings { max_message_size: Some(4096), ..Settings::default() });
    let mut c = Raw::handshake(server.addr);
    assert_eq!(rx.recv_timeout(T).unwrap().1, Ev::Open);
    // Four fragments making exactly 4096 bytes: echoed whole.
    for i in 0..4u8 {
        c.send(if i == 0 { OP_BINARY } else { OP_CONT }, i == 3, &[i; 1024]);
    }
    let expect: Vec<u8> = (0..4u8).flat_map(|i| [i; 1024]).collect();
    assert_eq!(c.read_frame(), Frame { fin: true, opcode: OP_BINARY, payload: expect });
    // 1500 + 1500, then the header of a third 1500-byte fragment: 4500 > 4096, refused before any
    // of its payload arrives.
    c.send(OP_BINARY, false, &[1u8; 1500]);
    c.send(OP_CONT, false, &[2u8; 1500]);
    c.write_all(&client_header(OP_CONT, true, 1500));
    expect_too_big(&mut c, &rx, "message of at least 4500 bytes exceeds the limit of 4096");
    drop(c);
    server.stop();
}

#[test]
fn too_many_fragments_fail_with_1009_and_memory_stays_bounded() {
    let _g = serial();
    let settings = Settings::default();
    let max = settings.max_fragments.unwrap();
    assert_eq!(max, 65_536);
    let (server, rx, _p) = tagged_server(settings);
    let mut c = Raw::handshake(server.addr);
    assert_eq!(rx.recv_timeout(T).unwrap().1, Ev::Open);
    let rss0 = rss_bytes();
    let message = |fragments: usize| -> Vec<u8> {
        let mut wire = Vec::with_capacity(fragments * 7);
        for i in 0..fragments {
            let op = if i == 0 { OP_BINARY } else { OP_CONT };
            wire.extend(client_frame(op, i + 1 == fragments, &[(i % 251) as u8]));
        }
        wire
    };
    // Exactly the limit: one message of 65,536 one-byte fragments, echoed whole.
    c.write_all(&message(max));
    let f = c.read_frame();
    assert_eq!((f.fin, f.opcode, f.payload.len()), (true, OP_BINARY, max));
    assert!(f.payload.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // One more fragment than allowed.
    c.write_all(&message(max + 1));
    expect_too_big(&mut c, &rx, "message has more than 65536 fragments");
    let grew = rss_bytes().saturating_sub(rss0);
    eprintln!("fragments: RSS +{} KiB", grew / 1024);
    assert!(grew < 16 * MIB, "memory grew by {} KiB for 131,073 fragments", grew / 1024);
    drop(c);
    server.stop();
}
