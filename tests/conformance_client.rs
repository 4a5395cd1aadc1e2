//! Autobahn|Testsuite-style conformance of the wsloop CLIENT: the mirror image of
//! `conformance_server.rs`.
//!
//! For every case a raw-socket test server (std `TcpListener` on 127.0.0.1:0) accepts a wsloop
//! echo client (`WebSocket::with_settings` + `connect("ws://...")`, the handler echoing every
//! message), performs the server handshake by hand and plays the case with unmasked frames. Every
//! frame from the client must be masked, with a fresh key each time. At the end the test server
//! closes the TCP connection first (RFC 6455 §7.1.1) and the client must then close its side and
//! its loop must return. See `tests/README.md` for the case list.
//!
//! ```text
//! cargo test --test conformance_client
//! ```

mod conformance_support;

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conformance_support::{accept_within, cases, play, run_cases, Case, Peer, Setup, Side, EOF_BOUND, REPLY_BOUND};
use wsloop::{Handler, Message, Sender, Settings, WebSocket};

/// The wsloop client under test: echoes every message, and reports when it is open.
struct Echo {
    out: Sender,
    opened: mpsc::Sender<()>,
}

impl Handler for Echo {
    fn on_open(&mut self) -> wsloop::Result<()> {
        let _ = self.opened.send(());
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        self.out.send(msg)
    }
}

fn run_client_case(case: &Case) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let settings = Settings {
        keepalive_interval: None,
        auto_fragment_size: match case.setup {
            Setup::Default => None,
            Setup::AutoFragment(n) => Some(n),
        },
        ..Settings::default()
    };
    let (opened_tx, opened) = mpsc::channel();
    let factory = move |out: Sender| Echo { out, opened: opened_tx.clone() };
    let mut ws = WebSocket::with_settings(factory, settings).map_err(|e| format!("client loop: {e}"))?;
    ws.connect(&format!("ws://{addr}/")).map_err(|e| format!("connect: {e}"))?;
    let stop = ws.sender();
    let handle = ws.spawn().map_err(|e| format!("spawn: {e}"))?;

    let played = accept_within(&listener, Duration::from_secs(5))
        .and_then(|stream| Peer::server_handshake(stream, case.early))
        .and_then(|mut peer| {
            if !case.early {
                // The first frames go out once the client has taken the 101 response, so they
                // never share its read (cases 1.4.x test that on purpose).
                opened.recv_timeout(REPLY_BOUND).map_err(|_| {
                    format!("the wsloop client did not call on_open within {REPLY_BOUND:?} of the 101 response")
                })?;
            }
            play(&mut peer, case)
        });
    // The test server's socket is closed now: the client's connection, and so its loop, must end.
    let deadline = Instant::now() + EOF_BOUND;
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let exited = handle.is_finished();
    if !exited {
        let _ = stop.shutdown();
    }
    let joined = handle.join();
    played?;
    if !exited {
        return Err(format!("the wsloop client's loop did not return within {EOF_BOUND:?} of the TCP close"));
    }
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the wsloop client's loop returned an error: {e}")),
        Err(_) => Err("the wsloop client's loop panicked".into()),
    }
}

fn category(cat: &str, workers: usize) {
    let cases: Vec<Case> = cases(cat).into_iter().filter(|c| c.applies_to(Side::Server)).collect();
    run_cases(&format!("wsloop client, category {cat}"), &cases, workers, run_client_case);
}

conformance_support::category_tests!(category);
