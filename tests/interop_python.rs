//! Interoperability with Python's `websockets` (pinned in tests/peers/requirements.txt), in both
//! directions: their client against our server, our client against their server. The peer program
//! is tests/peers/ws_peer.py; it is installed on demand by scripts/install-peers.sh.

mod interop_support;

use interop_support::*;

const LANG: Lang = Lang::Python;

/// Their client -> our server: subprotocol choice, texts (multi-byte UTF-8) and binaries from 0 B
/// to 16 MiB echoed byte-exact (checked by them) and received byte-exact (checked here), their
/// ping answered, our ping answered by them, their close 4000 "bye" in our on_close.
#[test]
fn their_client_echo() {
    let mut server = OurServer::start();
    let url = server.url("/echo");
    run_peer_client(LANG, &url, "echo", &["--protocols", &OFFERED.join(","), "--expect-protocol", CHOSEN]);
    assert_echo_session(&mut server, b"py-ping\x00\xff");
    server.stop();
}

/// Their client -> our server: fragmented messages. websockets sends each item of an iterable as
/// a frame and ends with an empty final frame; a ping goes out between fragments 8 and 9.
#[test]
fn their_client_fragmented() {
    let mut server = OurServer::start();
    let url = server.url("/frames");
    run_peer_client(LANG, &url, "frag", &[]);
    let text: Vec<usize> = frag_text_chunks().iter().map(Vec::len).chain([0]).collect();
    let mut big = vec![65536; 16];
    big.push(0);
    assert_frag_session(&mut server, [text, vec![3, 0, 70_000, 0], big]);
    server.stop();
}

/// Their client -> our server: our server closes with 4001 and a UTF-8 reason; they check it
/// arrived exactly, we check their echoed answer.
#[test]
fn their_client_sees_our_close() {
    let mut server = OurServer::start();
    let url = server.url("/close");
    run_peer_client(LANG, &url, "server-close", &[]);
    assert_server_close_session(&mut server);
    server.stop();
}

/// Their client -> our server: 100 connections open at once, each echoing 3 messages.
#[test]
fn their_client_concurrent() {
    let mut server = OurServer::start();
    let url = server.url("/many");
    run_peer_client(LANG, &url, "concurrent", &["--connections", &CONCURRENT.to_string()]);
    assert_concurrent_sessions(&mut server);
    server.stop();
}

/// Our client -> their server: subprotocol, the echo script, pings both ways, close both ways.
#[test]
fn our_client_echo_and_close() {
    let mut their = start_peer_server(LANG);
    our_client_echo(&mut their);
    our_client_server_close(&mut their);
}

/// Our client -> their server: their server echoes in fragments (3 frames, then websockets'
/// empty final frame); our frame-level handler sees every frame.
#[test]
fn our_client_fragmented() {
    let mut their = start_peer_server(LANG);
    our_client_frag(&mut their, |n| {
        let mut v = thirds(n);
        v.push(0);
        v
    });
}

/// Our client -> their server: 100 connections on one loop at once.
#[test]
fn our_client_concurrent_connections() {
    let mut their = start_peer_server(LANG);
    our_client_concurrent(&mut their);
}
