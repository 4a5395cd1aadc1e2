//! Echo client: connects to a WebSocket echo server, sends a few messages, checks each echo,
//! measures the round trip, and closes.
//!
//! ```text
//! cargo run --release --example echo_server &            # in one terminal
//! cargo run --release --example echo_client -- ws://127.0.0.1:9001/ [COUNT]
//! ```
//!
//! Exits with status 1 if an echo is wrong or the connection fails.

use std::time::Instant;

use wsloop::{CloseCode, Error, Handler, Message, Sender, ServerResponse};

struct Client {
    out: Sender,
    count: usize,
    sent: usize,
    started: Instant,
    ok: bool,
}

impl Client {
    fn payload(i: usize) -> Message {
        if i % 2 == 0 {
            Message::text(format!("message {i}: héllo wörld"))
        } else {
            Message::binary(vec![i as u8; 64 + i])
        }
    }
}

impl Handler for Client {
    fn on_response(&mut self, response: &ServerResponse) -> wsloop::Result<()> {
        println!("connected: HTTP {}", response.status());
        Ok(())
    }

    fn on_open(&mut self) -> wsloop::Result<()> {
        self.started = Instant::now();
        self.out.send(Self::payload(0))
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        if msg != Self::payload(self.sent) {
            eprintln!("wrong echo for message {}: {msg:?}", self.sent);
            self.ok = false;
            return self.out.close(CloseCode::PROTOCOL_ERROR, "bad echo");
        }
        self.sent += 1;
        if self.sent == self.count {
            let per = self.started.elapsed() / self.count as u32;
            println!("{} echoes verified, {per:?} per round trip", self.count);
            return self.out.close(CloseCode::NORMAL, "done");
        }
        self.out.send(Self::payload(self.sent))
    }

    fn on_close(&mut self, code: CloseCode, reason: &str) {
        println!("closed: {code} {reason:?}");
        if code != CloseCode::NORMAL {
            self.ok = false;
        }
    }

    fn on_error(&mut self, err: Error) {
        eprintln!("error: {err}");
        self.ok = false;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.ok || self.sent != self.count {
            std::process::exit(1);
        }
    }
}

fn main() -> wsloop::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001/".to_string());
    let count: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(10);
    wsloop::connect(&url, move |out: Sender| Client { out, count, sent: 0, started: Instant::now(), ok: true })
}
