//! Chat room: every message a client sends goes to all *other* connected clients.
//!
//! ```text
//! cargo run --example chat                      # ws://127.0.0.1:9002/?name=alice
//! ```
//!
//! Shows: a shared registry of `Sender`s (cheap clones) keyed by connection id, `on_request`
//! reading a query parameter, `on_open`/`on_close` for join and leave notices, and a
//! `PreparedMessage` so each chat line is framed once however many members receive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wsloop::{CloseCode, ConnId, Handler, Message, PreparedMessage, Rejection, Request, Response, Sender, WebSocket};

type Room = Arc<Mutex<HashMap<ConnId, Sender>>>;

struct Member {
    out: Sender,
    room: Room,
    name: String,
}

impl Member {
    /// Send to everyone but this member. One frame, shared by reference between all of them.
    fn relay(&self, text: String) {
        let prepared = PreparedMessage::new(text);
        for (id, peer) in self.room.lock().unwrap().iter() {
            if *id != self.out.id() {
                // A member that just left (or reads too slowly) fails on its own; the rest go on.
                let _ = peer.send_prepared(&prepared);
            }
        }
    }
}

impl Handler for Member {
    fn on_request(&mut self, req: &Request) -> Result<Response, Rejection> {
        match req.query_param("name") {
            Some(name) if !name.is_empty() && name.len() <= 32 => {
                self.name = name.to_string();
                Ok(Response::accept())
            }
            _ => Err(Rejection::new(400).with_body("connect with ?name=YOUR_NAME (1-32 characters)")),
        }
    }

    fn on_open(&mut self) -> wsloop::Result<()> {
        self.room.lock().unwrap().insert(self.out.id(), self.out.clone());
        self.relay(format!("* {} joined", self.name));
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        match msg.as_text() {
            Some(text) => {
                self.relay(format!("{}: {text}", self.name));
                Ok(())
            }
            None => self.out.close(CloseCode::UNSUPPORTED_DATA, "text only"),
        }
    }

    fn on_close(&mut self, _code: CloseCode, _reason: &str) {
        self.room.lock().unwrap().remove(&self.out.id());
        self.relay(format!("* {} left", self.name));
    }
}

fn main() -> wsloop::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let room: Room = Arc::default();
    let mut ws = WebSocket::new(move |out: Sender| Member { out, room: room.clone(), name: String::new() })?;
    let bound = ws.listen(addr.as_str())?;
    println!("chat on ws://{bound}/?name=YOUR_NAME");
    ws.run()
}
