//! Interoperability with `tungstenite` 0.26 (a dev-dependency), in both directions: its client
//! against our server, our client against a tungstenite echo server running on threads here.
//!
//! The scenarios are those of the Python and Node peers (see tests/interop_support/mod.rs): the
//! tungstenite client below does what `ws_peer.* client` does, and the tungstenite server reports
//! the same lines as `ws_peer.* server`. Fragmented messages are written as raw frames
//! (`Message::Frame`), with a ping between two fragments.

// tungstenite's handshake callback and `Result` fix these error types; nothing to box here.
#![allow(clippy::result_large_err)]

mod interop_support;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use interop_support::*;
use tungstenite::handshake::server::{Request as TRequest, Response as TResponse};
use tungstenite::protocol::frame::coding::{CloseCode as TCloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Bytes, Message as TMessage, WebSocket as TWebSocket};
use wsloop::Message;

type Ws = TWebSocket<TcpStream>;

/// No message or frame size limits on tungstenite's side: the 16 MiB messages are ours to limit.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(None).max_frame_size(None)
}

fn to_t(m: &Message) -> TMessage {
    match m.as_text() {
        Some(t) => TMessage::text(t.to_string()),
        None => TMessage::binary(m.as_bytes().to_vec()),
    }
}

fn from_t(m: TMessage) -> Option<Message> {
    match m {
        TMessage::Text(t) => Some(Message::text(t.as_str())),
        TMessage::Binary(b) => Some(Message::binary(b)),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------
// Their client

/// A tungstenite client connection to `url`, offering `protocols`; the subprotocol the server
/// selected. Socket timeouts bound every read and write.
fn t_connect(url: &str, protocols: &[&str]) -> (Ws, Option<String>) {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    }
    let host = url.trim_start_matches("ws://").split('/').next().unwrap();
    let stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tungstenite::client::client_with_config(req, stream, Some(config()))
        .unwrap_or_else(|e| panic!("tungstenite handshake with {url}: {e}"));
    assert_eq!(resp.status(), 101);
    let protocol = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    (ws, protocol)
}

/// What a tungstenite client read besides data messages.
#[derive(Default)]
struct Seen {
    pings: Vec<Bytes>,
    pongs: Vec<Bytes>,
}

/// The next data message, collecting pings and pongs on the way; panics on close or error.
#[track_caller]
fn t_read_message(ws: &mut Ws, seen: &mut Seen, what: &str) -> Message {
    loop {
        match ws.read() {
            Ok(TMessage::Ping(p)) => seen.pings.push(p),
            Ok(TMessage::Pong(p)) => seen.pongs.push(p),
            Ok(m @ (TMessage::Text(_) | TMessage::Binary(_))) => return from_t(m).unwrap(),
            Ok(other) => panic!("{what}: expected a data message, got {other:?}"),
            Err(e) => panic!("{what}: read failed: {e}"),
        }
    }
}

/// Read until the peer's close frame arrives (collecting pings and pongs), then until the
/// connection ends; the close frame.
#[track_caller]
fn t_read_close(ws: &mut Ws, seen: &mut Seen, what: &str) -> Option<CloseFrame> {
    let frame = loop {
        match ws.read() {
            Ok(TMessage::Ping(p)) => seen.pings.push(p),
            Ok(TMessage::Pong(p)) => seen.pongs.push(p),
            Ok(TMessage::Close(f)) => break f,
            Ok(other) => panic!("{what}: expected a close frame, got {other:?}"),
            Err(e) => panic!("{what}: read failed before a close frame arrived: {e}"),
        }
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => return frame,
            Err(e) => panic!("{what}: the connection did not end cleanly after the close frames: {e}"),
            Ok(m) => assert!(Instant::now() < deadline, "{what}: still reading after close: {m:?}"),
        }
    }
}

#[track_caller]
fn t_roundtrip(ws: &mut Ws, seen: &mut Seen, m: &Message, what: &str) {
    ws.send(to_t(m)).unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let got = t_read_message(ws, seen, what);
    assert_same_message(&got, m, what);
}

fn t_close(ws: &mut Ws, code: u16, reason: &str) {
    ws.close(Some(CloseFrame { code: TCloseCode::from(code), reason: reason.into() })).unwrap();
}

/// Their client -> our server: subprotocol choice, texts (multi-byte UTF-8) and binaries from 0 B
/// to 16 MiB echoed byte-exact, our server answers their ping and they answer ours, their close
/// 4000 "bye" reaches our on_close and the code comes back.
#[test]
fn their_client_echo() {
    let mut server = OurServer::start();
    let (mut ws, protocol) = t_connect(&server.url("/echo"), &OFFERED);
    assert_eq!(protocol.as_deref(), Some(CHOSEN), "subprotocol chosen by our server");
    let mut seen = Seen::default();
    for (i, m) in script_messages().iter().enumerate() {
        t_roundtrip(&mut ws, &mut seen, m, &format!("script message {i} echoed by our server"));
    }
    let ping: &[u8] = b"tung-ping\x00\xff";
    ws.send(TMessage::Ping(Bytes::from_static(ping))).unwrap();
    ws.send("cmd:ping srv-ping".into()).unwrap();
    // The pong to their ping and our server's ping arrive before the echo of this message.
    t_roundtrip(&mut ws, &mut seen, &Message::text("after ping"), "after ping");
    assert_eq!(seen.pongs, vec![Bytes::from_static(ping)], "pongs from our server");
    assert_eq!(seen.pings, vec![Bytes::from_static(b"srv-ping")], "pings from our server");
    t_close(&mut ws, 4000, "bye");
    let answer = t_read_close(&mut ws, &mut seen, "close 4000");
    assert_eq!(answer.map(|f| u16::from(f.code)), Some(4000), "our server echoes the close code");
    assert_echo_session(&mut server, ping);
    server.stop();
}

/// Write `chunks` as one fragmented message of raw frames (the last one final), with a ping after
/// fragment `ping_after` if given.
fn t_send_fragmented(ws: &mut Ws, chunks: &[Vec<u8>], text: bool, ping_after: Option<usize>) {
    for (k, c) in chunks.iter().enumerate() {
        let op = match (k, text) {
            (0, true) => OpCode::Data(OpData::Text),
            (0, false) => OpCode::Data(OpData::Binary),
            _ => OpCode::Data(OpData::Continue),
        };
        ws.write(TMessage::Frame(Frame::message(c.clone(), op, k == chunks.len() - 1))).unwrap();
        if ping_after == Some(k) {
            ws.write(TMessage::Ping(Bytes::from_static(b"mid-frag"))).unwrap();
        }
    }
    ws.flush().unwrap();
}

/// Their client -> our server: fragmented messages written as raw frames: text cut inside UTF-8
/// characters, binary with an empty fragment, 1 MiB in 16 fragments with a ping between fragments
/// 8 and 9. Each echo is the whole message; our frame-level handler saw every frame.
#[test]
fn their_client_fragmented() {
    let mut server = OurServer::start();
    let (mut ws, protocol) = t_connect(&server.url("/frames"), &[]);
    assert_eq!(protocol, None);
    let mut seen = Seen::default();
    t_send_fragmented(&mut ws, &frag_text_chunks(), true, None);
    assert_same_message(&t_read_message(&mut ws, &mut seen, "frag text"), &Message::text(FRAG_TEXT), "frag text");
    t_send_fragmented(&mut ws, &frag_binary_chunks(), false, None);
    let want = Message::binary(frag_binary_chunks().concat());
    assert_same_message(&t_read_message(&mut ws, &mut seen, "frag binary"), &want, "frag binary");
    t_send_fragmented(&mut ws, &frag_big_chunks(), false, Some(7));
    let want = Message::binary(frag_big_chunks().concat());
    assert_same_message(&t_read_message(&mut ws, &mut seen, "frag 1 MiB"), &want, "frag 1 MiB");
    assert_eq!(seen.pongs, vec![Bytes::from_static(b"mid-frag")], "pong to the ping between fragments");
    t_close(&mut ws, 1000, "");
    let answer = t_read_close(&mut ws, &mut seen, "close 1000");
    assert_eq!(answer.map(|f| u16::from(f.code)), Some(1000));
    let text = frag_text_chunks().iter().map(Vec::len).collect();
    assert_frag_session(&mut server, [text, vec![3, 0, 70_000], vec![65536; 16]]);
    server.stop();
}

/// Their client -> our server: our server closes with 4001 and a UTF-8 reason; it arrives exactly
/// (and tungstenite's echoed answer reaches our on_close).
#[test]
fn their_client_sees_our_close() {
    let mut server = OurServer::start();
    let (mut ws, _) = t_connect(&server.url("/close"), &[]);
    ws.send("cmd:close 4001 adiós ✓".into()).unwrap();
    let frame = t_read_close(&mut ws, &mut Seen::default(), "our server's close").expect("a close frame with a code");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "adiós ✓"));
    assert_server_close_session(&mut server);
    server.stop();
}

/// Their client -> our server: 100 tungstenite clients (one thread each) open at once, each
/// echoing 3 messages and closing with 1000.
#[test]
fn their_client_concurrent() {
    let mut server = OurServer::start();
    let url = server.url("/many");
    let opened = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let (url, opened) = (&url, &opened);
                s.spawn(move || {
                    let (mut ws, protocol) = t_connect(url, &[]);
                    assert_eq!(protocol, None, "conn {i}");
                    opened.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + TIMEOUT;
                    while opened.load(Ordering::SeqCst) < CONCURRENT {
                        assert!(Instant::now() < deadline, "conn {i}: not all connections opened in time");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let mut seen = Seen::default();
                    for m in concurrent_messages(i) {
                        t_roundtrip(&mut ws, &mut seen, &m, &format!("conn {i}"));
                    }
                    t_close(&mut ws, 1000, "");
                    let answer = t_read_close(&mut ws, &mut seen, &format!("conn {i} close"));
                    assert_eq!(answer.map(|f| u16::from(f.code)), Some(1000), "conn {i}");
                })
            })
            .collect();
        let failed: Vec<usize> =
            handles.into_iter().enumerate().filter_map(|(i, h)| h.join().is_err().then_some(i)).collect();
        assert!(failed.is_empty(), "tungstenite client threads failed: {failed:?} (see their panics above)");
    });
    assert_concurrent_sessions(&mut server);
    server.stop();
}

// ------------------------------------------------------------------------------------------------
// Their server

/// Stops the tungstenite server's accept loop when dropped (connection threads end when their
/// peers close, or when their 30 s read timeout expires).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A tungstenite echo server on 127.0.0.1 port 0 (a thread per connection), with the behaviour
/// and report lines of `ws_peer.* server` (see tests/interop_support/mod.rs).
fn start_tungstenite_server() -> TheirServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stopping = stop.clone();
    std::thread::spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    std::thread::spawn(move || serve(stream, tx));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break,
            }
        }
    });
    TheirServer { port, lines: LineLog::new(rx), name: "tungstenite".into(), _guard: Box::new(StopOnDrop(stop)) }
}

fn serve(stream: TcpStream, tx: mpsc::Sender<String>) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut path = String::new();
    let mut chosen: Option<String> = None;
    let callback = |req: &TRequest, mut resp: TResponse| {
        path = req.uri().path().to_string();
        let offered = req.headers().get_all("sec-websocket-protocol");
        chosen = offered
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .find(|p| SUPPORTED.contains(p))
            .map(str::to_string);
        if let Some(p) = &chosen {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        Ok(resp)
    };
    let mut ws = match tungstenite::accept_hdr_with_config(stream, callback, Some(config())) {
        Ok(ws) => ws,
        Err(e) => {
            let _ = tx.send(format!("HANDSHAKE-FAILED {e}"));
            return;
        }
    };
    let _ = tx.send(format!("OPEN {path} {}", chosen.as_deref().unwrap_or("-")));
    let frag = path.starts_with("/frag");
    let mut closed = false;
    loop {
        let r = match ws.read() {
            Ok(TMessage::Ping(p)) => {
                let _ = tx.send(format!("PING {}", hex(&p)));
                Ok(())
            }
            Ok(TMessage::Pong(p)) => {
                let _ = tx.send(format!("PONG {}", hex(&p)));
                Ok(())
            }
            Ok(TMessage::Close(f)) => {
                closed = true;
                let _ = tx.send(match f {
                    Some(f) => format!("CLOSED {} {}", u16::from(f.code), hex(f.reason.as_bytes())),
                    None => "CLOSED 1005 -".into(),
                });
                Ok(())
            }
            Ok(TMessage::Frame(_)) => Ok(()),
            Ok(m) => answer(&mut ws, m, frag),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => {
                if !closed {
                    let _ = tx.send(format!("CLOSED 1006 - ({e})"));
                }
                break;
            }
        }
    }
}

/// Echo `m`, in 3 raw frames on /frag, or obey a `cmd:` message.
fn answer(ws: &mut Ws, m: TMessage, frag: bool) -> tungstenite::Result<()> {
    if let TMessage::Text(t) = &m {
        if let Some(payload) = t.as_str().strip_prefix("cmd:ping ") {
            return ws.send(TMessage::Ping(Bytes::copy_from_slice(payload.as_bytes())));
        }
        if let Some(rest) = t.as_str().strip_prefix("cmd:close ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = TCloseCode::from(code.parse::<u16>().unwrap_or(1000));
            return ws.close(Some(CloseFrame { code, reason: reason.to_string().into() }));
        }
    }
    if !frag {
        return ws.send(m);
    }
    let text = m.is_text();
    let data = m.into_data();
    let n = data.len();
    let cuts = [0, n / 3, 2 * n / 3, n];
    for k in 0..3 {
        let op = match (k, text) {
            (0, true) => OpCode::Data(OpData::Text),
            (0, false) => OpCode::Data(OpData::Binary),
            _ => OpCode::Data(OpData::Continue),
        };
        ws.write(TMessage::Frame(Frame::message(data.slice(cuts[k]..cuts[k + 1]), op, k == 2)))?;
    }
    ws.flush()
}

/// Our client -> tungstenite server: subprotocol, the echo script, pings both ways, close both
/// ways.
#[test]
fn our_client_echo_and_close() {
    let mut their = start_tungstenite_server();
    our_client_echo(&mut their);
    our_client_server_close(&mut their);
}

/// Our client -> tungstenite server: it echoes in 3 raw frames; our frame-level handler sees every
/// frame and the whole message.
#[test]
fn our_client_fragmented() {
    let mut their = start_tungstenite_server();
    our_client_frag(&mut their, thirds);
}

/// Our client -> tungstenite server: 100 connections on one loop at once.
#[test]
fn our_client_concurrent_connections() {
    let mut their = start_tungstenite_server();
    our_client_concurrent(&mut their);
}
