//! Integration tests of the event-loop runtime over real loopback sockets: every Handler
//! callback, every Sender method, handshake accept/reject, subprotocols, closing from both sides,
//! abrupt drops, timers, cross-thread sends.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tungstenite::client::IntoClientRequest;
use wsloop::{
    ClientRequest, CloseCode, ConnId, Error, Handler, Message, Sender, Settings, TimeoutHandle, Token, WebSocket,
};

#[test]
fn server_callbacks_in_order_with_request_details() {
    let (server, rx) = recording_server(Settings::default(), true, None, None);
    let mut req = format!("ws://{}/chat?room=7", server.addr).into_client_request().unwrap();
    req.headers_mut().insert("Cookie", "session=abc; x=y".parse().unwrap());
    req.headers_mut().insert("Origin", "http://game.example".parse().unwrap());
    let (mut c, resp) = tclient_with(req);
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers().get("Set-Cookie").unwrap(), "id=42", "extra 101 header from on_request");
    match next(&rx, T) {
        Ev::Request { path, query, cookie, origin, protocols } => {
            assert_eq!(path, "/chat");
            assert_eq!(query.as_deref(), Some("room=7"));
            assert_eq!(cookie.as_deref(), Some("abc"));
            assert_eq!(origin.as_deref(), Some("http://game.example"));
            assert!(protocols.is_empty());
        }
        other => panic!("expected Request, got {other:?}"),
    }
    assert_eq!(next(&rx, T), Ev::Open);
    c.send(tungstenite::Message::text("héllo")).unwrap();
    assert_eq!(next(&rx, T), Ev::Message(Message::text("héllo")));
    assert_eq!(c.read().unwrap(), tungstenite::Message::text("héllo"));
    c.send(tungstenite::Message::Ping(vec![1, 2, 3].into())).unwrap();
    assert_eq!(next(&rx, T), Ev::Ping(vec![1, 2, 3]));
    assert_eq!(c.read().unwrap(), tungstenite::Message::Pong(vec![1, 2, 3].into()), "automatic pong");
    c.send(tungstenite::Message::Pong(vec![9].into())).unwrap();
    assert_eq!(next(&rx, T), Ev::Pong(vec![9]), "unsolicited pong reaches on_pong");
    c.close(Some(tungstenite::protocol::CloseFrame { code: 4000.into(), reason: "bye".into() })).unwrap();
    assert_eq!(next(&rx, T), Ev::Close(4000, "bye".into()));
    // The server echoes the code and then closes TCP first.
    loop {
        match c.read() {
            Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4000),
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "no callback after on_close");
    server.stop();
}

#[test]
fn handler_rejects_with_status_body_and_headers() {
    let (server, rx) = recording_server(Settings::default(), true, None, Some(403));
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let req = server.url().into_client_request().unwrap();
    match tungstenite::client(req, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.headers().get("X-Reason").unwrap(), "test");
            assert_eq!(resp.body().as_deref(), Some(&b"not you"[..]));
        }
        other => panic!("expected an HTTP 403, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(next(&rx, T), Ev::Request { .. }));
    match next(&rx, T) {
        Ev::Error(e) => assert!(e.contains("403"), "{e}"),
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "no on_open/on_close for a rejected request");
    server.stop();
}

#[test]
fn invalid_handshakes_get_http_errors() {
    let (server, _rx) = recording_server(Settings::default(), true, None, None);
    let cases: &[(&str, &str)] = &[
        ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "HTTP/1.1 426",
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
        ("\x16\x03\x01\x00\x05hello\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (request, expect) in cases {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap(); // the server closes after the response
        assert!(resp.starts_with(expect), "{request:?} -> {resp:?}");
        if expect.contains("426") {
            assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"), "426 names the version: {resp}");
        }
    }
    server.stop();
}

#[test]
fn subprotocol_is_chosen_from_the_offer() {
    let (server, rx) = recording_server(Settings::default(), true, Some("v2.game"), None);
    let mut req = server.url().into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v1.game, v2.game".parse().unwrap());
    let (_c, resp) = tclient_with(req);
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "v2.game");
    match next(&rx, T) {
        Ev::Request { protocols, .. } => assert_eq!(protocols, ["v1.game", "v2.game"]),
        other => panic!("{other:?}"),
    }
    server.stop();
}

#[test]
fn server_initiated_close_with_code_and_reason() {
    // The handler closes when it receives "quit".
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(
        move |out: Sender| {
            let tx = tx.clone();
            move |msg: Message| {
                if msg.as_text() == Some("quit") {
                    out.close(CloseCode(4001), "requested")?;
                    // Sending after close fails at once.
                    let after = out.send("late");
                    tx.send(matches!(after, Err(Error::ConnectionClosed))).unwrap();
                }
                Ok(())
            }
        },
        Settings::default(),
    );
    let mut c = tclient(&server.url());
    c.send(tungstenite::Message::text("quit")).unwrap();
    assert_eq!(read_close(&mut c), (4001, "requested".to_string()));
    assert!(rx.recv_timeout(T).unwrap(), "send after close must fail with ConnectionClosed");
    // tungstenite answers the close; the server then closes TCP.
    let start = Instant::now();
    loop {
        match c.read() {
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(tungstenite::Error::Io(e)) => panic!("expected a clean TCP close, got {e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    server.stop();
}

#[test]
fn abrupt_drop_reports_1006() {
    let (server, rx) = recording_server(Settings::default(), true, None, None);
    let c = tclient(&server.url());
    wait_for(&rx, T, |e| *e == Ev::Open);
    drop(c); // TCP close without a close frame
    assert_eq!(wait_for(&rx, T, |e| matches!(e, Ev::Close(..))), Ev::Close(1006, String::new()));
    server.stop();
}

#[test]
fn timers_fire_and_cancel() {
    struct Timed {
        out: Sender,
        tx: mpsc::Sender<u64>,
        cancel: Option<TimeoutHandle>,
    }
    impl Handler for Timed {
        fn on_open(&mut self) -> wsloop::Result<()> {
            self.out.timeout(Duration::from_millis(30), Token(1))?;
            self.cancel = Some(self.out.timeout(Duration::from_millis(20), Token(2))?);
            self.out.timeout(Duration::from_millis(60), Token(3))?;
            self.out.cancel(self.cancel.unwrap())
        }
        fn on_timeout(&mut self, token: Token) -> wsloop::Result<()> {
            self.tx.send(token.0).unwrap();
            Ok(())
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(move |out: Sender| Timed { out, tx: tx.clone(), cancel: None }, Settings::default());
    let start = Instant::now();
    let _c = tclient(&server.url());
    assert_eq!(rx.recv_timeout(T).unwrap(), 1);
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(rx.recv_timeout(T).unwrap(), 3, "token 2 was cancelled");
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    server.stop();
}

#[test]
fn sender_ping_pong_and_broadcast() {
    // Each handler pings its peer on open and sends a pong; "all" triggers a broadcast.
    let server = spawn_server(
        |out: Sender| {
            out.ping(vec![7u8]).ok(); // fails: not open yet (the factory runs before the handshake)
            move |msg: Message| {
                if msg.as_text() == Some("all") {
                    out.broadcast("to everyone")?;
                } else if msg.as_text() == Some("ping") {
                    out.ping(&b"p1"[..])?;
                    out.pong(&b"unsolicited"[..])?;
                }
                Ok(())
            }
        },
        Settings::default(),
    );
    let mut a = tclient(&server.url());
    let mut b = tclient(&server.url());
    a.send(tungstenite::Message::text("ping")).unwrap();
    assert_eq!(a.read().unwrap(), tungstenite::Message::Ping(b"p1".to_vec().into()));
    assert_eq!(a.read().unwrap(), tungstenite::Message::Pong(b"unsolicited".to_vec().into()));
    b.send(tungstenite::Message::text("all")).unwrap();
    assert_eq!(b.read().unwrap(), tungstenite::Message::text("to everyone"));
    // `a` gets it too (tungstenite answered the ping with a pong meanwhile, which is fine).
    assert_eq!(a.read().unwrap(), tungstenite::Message::text("to everyone"));
    server.stop();
}

#[test]
fn cross_thread_senders_and_stale_ids() {
    let senders: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let s2 = senders.clone();
    let server = spawn_server(
        move |out: Sender| {
            s2.lock().unwrap().push(out.clone());
            move |msg: Message| out.send(msg)
        },
        Settings::default(),
    );
    let mut c = tclient(&server.url());
    c.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(c.read().unwrap(), tungstenite::Message::text("hi"));
    let out = senders.lock().unwrap()[0].clone();
    let id: ConnId = out.connection_id().unwrap();
    assert!(out.is_open());
    // From this (foreign) thread: a burst of sends arrives in order.
    let th = std::thread::spawn(move || {
        for i in 0..200 {
            out.send(format!("m{i}")).unwrap();
        }
        out
    });
    let out = th.join().unwrap();
    for i in 0..200 {
        assert_eq!(c.read().unwrap(), tungstenite::Message::text(format!("m{i}")));
    }
    drop(c);
    // Wait until the server noticed the drop; then the sender fails and never panics.
    let deadline = Instant::now() + T;
    while out.is_open() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(out.send("gone"), Err(Error::ConnectionClosed)));
    // A new connection may reuse the slot, with a new generation: the old sender still fails.
    let mut c2 = tclient(&server.url());
    c2.send(tungstenite::Message::text("x")).unwrap();
    assert_eq!(c2.read().unwrap(), tungstenite::Message::text("x"));
    let new = senders.lock().unwrap()[1].connection_id().unwrap();
    assert_eq!(new.slot, id.slot, "slot reused");
    assert_ne!(new.generation, id.generation);
    assert!(matches!(out.send("misdelivered?"), Err(Error::ConnectionClosed)));
    c2.send(tungstenite::Message::text("y")).unwrap();
    assert_eq!(c2.read().unwrap(), tungstenite::Message::text("y"), "nothing else arrived first");
    server.stop();
}

#[test]
fn loop_handle_rejects_connection_methods() {
    let ws = WebSocket::new(|out: Sender| move |m: Message| out.send(m)).unwrap();
    let h = ws.sender();
    assert!(h.connection_id().is_none());
    assert!(matches!(h.send("x"), Err(Error::InvalidUse(_))));
    assert!(matches!(h.close(CloseCode::NORMAL, ""), Err(Error::InvalidUse(_))));
    assert!(matches!(h.timeout(Duration::from_millis(1), Token(0)), Err(Error::InvalidUse(_))));
    assert!(matches!(h.connect("http://nope"), Err(Error::Handshake(_))));
    drop(ws);
    // The loop is gone: cross-thread commands fail cleanly.
    let r = std::thread::spawn(move || h.shutdown()).join().unwrap();
    assert!(matches!(r, Err(Error::LoopGone)), "{r:?}");
}

#[test]
fn cross_thread_queue_is_bounded_by_channel_capacity() {
    // A loop that is not running drains nothing: the fifth command from another thread finds the
    // queue full, and once the loop is dropped every command fails with LoopGone.
    let settings = Settings { channel_capacity: 4, ..Settings::default() };
    let ws = WebSocket::with_settings(|out: Sender| move |m: Message| out.send(m), settings).unwrap();
    let h = ws.sender();
    let h2 = h.clone();
    let results = std::thread::spawn(move || (0..6).map(|_| h2.shutdown()).collect::<Vec<_>>()).join().unwrap();
    assert!(results[..4].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(results[4..].iter().all(|r| matches!(r, Err(Error::ChannelFull))), "{results:?}");
    drop(ws);
    let r = std::thread::spawn(move || h.shutdown()).join().unwrap();
    assert!(matches!(r, Err(Error::LoopGone)), "{r:?}");
}

#[test]
fn client_talks_to_tungstenite_server_with_subprotocol() {
    let addr = tungstenite_echo_server(Some("chat.v1"));
    let (tx, rx) = mpsc::channel();
    let mut ws = WebSocket::new(move |out: Sender| {
        let tx = tx.clone();
        let o2 = out.clone();
        support::Recorder { out: o2, tx, echo: false, protocol: None, reject: None }
    })
    .unwrap();
    let req = ClientRequest { protocols: vec!["chat.v0".into(), "chat.v1".into()], ..Default::default() };
    let out = ws.connect_with(&format!("ws://{addr}/path"), req).unwrap();
    let h = ws.spawn().unwrap();
    assert_eq!(next(&rx, T), Ev::Response { status: 101, protocol: Some("chat.v1".into()) });
    assert_eq!(next(&rx, T), Ev::Open);
    out.send("text é").unwrap();
    assert_eq!(next(&rx, T), Ev::Message(Message::text("text é")));
    out.send(vec![0u8, 1, 2]).unwrap();
    assert_eq!(next(&rx, T), Ev::Message(Message::binary(vec![0u8, 1, 2])));
    let big = vec![0x5au8; 1 << 20];
    out.send(big.clone()).unwrap();
    // 1 MiB takes the send queue above the low-water mark: on_writable follows once it drains,
    // before or after the echo arrives.
    let (mut echo, mut writable) = (false, false);
    while !(echo && writable) {
        match next(&rx, T) {
            Ev::Message(m) => {
                assert_eq!(m, Message::binary(big.clone()));
                echo = true;
            }
            Ev::Writable => writable = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    out.ping(&b"hb"[..]).unwrap();
    assert_eq!(next(&rx, T), Ev::Pong(b"hb".to_vec()));
    out.close(CloseCode::NORMAL, "done").unwrap();
    assert_eq!(next(&rx, T), Ev::Close(1000, "done".into()), "tungstenite echoes our close");
    // The loop has no listener: it returns once its only connection is gone.
    join_within(h, T);
}

#[test]
fn client_sees_rejection_status_and_body() {
    let (server, _srx) = recording_server(Settings::default(), true, None, Some(401));
    let (mut ws, rx) = recording_loop(false);
    ws.connect(&server.url()).unwrap();
    let h = ws.spawn().unwrap();
    match next(&rx, T) {
        Ev::Error(e) => assert!(e.contains("401"), "{e}"),
        other => panic!("expected a rejection error, got {other:?}"),
    }
    join_within(h, T);
    server.stop();
}

#[test]
fn client_and_server_in_one_loop_with_dns_name() {
    // One loop listens and connects to itself through "localhost" (resolved off the loop thread).
    let (mut ws, rx) = recording_loop(true);
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let control = ws.sender();
    let client = ws.connect(&format!("ws://localhost:{}/self", addr.port())).unwrap();
    let h = ws.spawn().unwrap();
    // Both ends open (the server's and the client's, in either order) and the client saw a 101.
    let (mut opens, mut responses) = (0, 0);
    while opens < 2 || responses < 1 {
        match next(&rx, T) {
            Ev::Open => opens += 1,
            Ev::Response { status: 101, .. } => responses += 1,
            _ => {}
        }
    }
    // A message goes client -> server (echo) -> client (echo) -> server ...
    client.send("ping-pong").unwrap();
    let mut seen = 0;
    while seen < 4 {
        if let Ev::Message(m) = next(&rx, T) {
            assert_eq!(m.as_text(), Some("ping-pong"));
            seen += 1;
        }
    }
    control.shutdown().unwrap();
    join_within(h, T);
}

#[test]
fn thousand_connections_echo_a_hundred_messages_each() {
    const CONNS: usize = 1000;
    const MSGS: usize = 100;
    let server = spawn_server(|out: Sender| move |msg: Message| out.send(msg), Settings::default());
    // The clients are wsloop clients too, in one loop: each sends its next message when the
    // previous echo arrives, and closes after the last.
    let done = Arc::new(AtomicUsize::new(0));
    struct Pinger {
        out: Sender,
        n: usize,
        done: Arc<AtomicUsize>,
    }
    impl Handler for Pinger {
        fn on_open(&mut self) -> wsloop::Result<()> {
            self.out.send(format!("{}:{}", self.out.id(), self.n))
        }
        fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
            assert_eq!(msg.as_text().unwrap(), format!("{}:{}", self.out.id(), self.n), "echo out of order");
            self.n += 1;
            if self.n == MSGS {
                self.done.fetch_add(1, Ordering::Relaxed);
                self.out.close(CloseCode::NORMAL, "")
            } else {
                self.out.send(format!("{}:{}", self.out.id(), self.n))
            }
        }
    }
    let d = done.clone();
    let mut clients = WebSocket::new(move |out: Sender| Pinger { out, n: 0, done: d.clone() }).unwrap();
    for _ in 0..CONNS {
        clients.connect(&server.url()).unwrap();
    }
    let h = clients.spawn().unwrap();
    join_within(h, Duration::from_secs(60));
    assert_eq!(done.load(Ordering::Relaxed), CONNS);
    server.stop();
}

#[test]
fn ipv6_listener_and_client() {
    let (mut ws, rx) = recording_loop(true);
    let addr = ws.listen("[::1]:0").unwrap();
    assert!(addr.is_ipv6());
    let control = ws.sender();
    let client = ws.connect(&format!("ws://[::1]:{}/v6", addr.port())).unwrap();
    let h = ws.spawn().unwrap();
    let mut opens = 0;
    while opens < 2 {
        if next(&rx, T) == Ev::Open {
            opens += 1;
        }
    }
    client.send("over ipv6").unwrap();
    wait_for(&rx, T, |e| *e == Ev::Message(Message::text("over ipv6")));
    control.shutdown().unwrap();
    join_within(h, T);
}

#[test]
fn frames_straddling_the_read_budget_are_completed_intact() {
    // A 64 KiB budget ends 32 bytes short of the fourth 16 KiB frame (each 16,392 bytes with its
    // masked header): the pass reads those 32 bytes past its budget (the completion read) and
    // must decode that frame, then the next pass the rest. Several bursts, each written at once,
    // with frame sizes around the boundary, all echoed byte-exact and in order.
    let settings = Settings {
        keepalive_interval: None,
        read_buffer_size: 64 * 1024,
        read_budget: 64 * 1024,
        ..Settings::default()
    };
    let server = spawn_server(|out: Sender| move |m: Message| out.send(m), settings);
    let mut c = Raw::connect(server.addr, "/");
    for (round, size) in [16 * 1024, 16 * 1024 - 8, 16 * 1024 + 5, 20_000, 16 * 1024].into_iter().enumerate() {
        let payloads: Vec<Vec<u8>> =
            (0..9u8).map(|k| (0..size).map(|i| (i % 253) as u8 ^ k ^ (round as u8 * 16)).collect()).collect();
        let burst: Vec<u8> = payloads.iter().flat_map(|p| bytes_frame(true, 2, p)).collect();
        c.send_raw(&burst);
        for (k, p) in payloads.iter().enumerate() {
            let e = c.read_frame();
            assert_eq!((e.fin, e.opcode), (true, 2));
            assert!(e.payload == *p, "echo {k} of round {round} ({size} B) differs");
        }
    }
    server.stop();
}

#[test]
fn partial_large_frames_survive_both_leftover_paths() {
    // Two connections share the loop's read buffer. A sends 100 KiB binary frames in 30 KiB
    // writes (each pass reads more than its partial frame: the partial frame is copied out and
    // back), B the same frames in 700-byte writes (a trickle: B keeps the buffer it is in). Their
    // writes interleave, so each connection's partial frame must survive the other's reads, and
    // every echo must come back byte-exact.
    let settings = Settings { keepalive_interval: None, ..Settings::default() };
    let server = spawn_server(|out: Sender| move |m: Message| out.send(m), settings);
    let mut a = Raw::connect(server.addr, "/");
    let mut b = Raw::connect(server.addr, "/");
    for round in 0..3u8 {
        let pa: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8 ^ round).collect();
        let pb: Vec<u8> = (0..100 * 1024).map(|i| (i % 241) as u8 ^ round ^ 0x5a).collect();
        let (fa, fb) = (bytes_frame(true, 2, &pa), bytes_frame(true, 2, &pb));
        let (mut ia, mut ib) = (0, 0);
        while ia < fa.len() || ib < fb.len() {
            let na = (fa.len() - ia).min(30 * 1024);
            a.send_raw(&fa[ia..ia + na]);
            ia += na;
            for _ in 0..8 {
                let nb = (fb.len() - ib).min(700);
                b.send_raw(&fb[ib..ib + nb]);
                ib += nb;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ea = a.read_frame();
        let eb = b.read_frame();
        assert_eq!((ea.fin, ea.opcode), (true, 2));
        assert!(ea.payload == pa, "A's echo differs in round {round}");
        assert_eq!((eb.fin, eb.opcode), (true, 2));
        assert!(eb.payload == pb, "B's echo differs in round {round}");
    }
    server.stop();
}
