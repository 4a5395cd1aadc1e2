//! Game tick: a separate thread advances a simulation at 60 Hz and pushes the state to every
//! client through `Sender`s, while the event loop's handlers receive player input.
//!
//! ```text
//! cargo run --release --example foreign_thread            # ws://127.0.0.1:9003/
//! cargo run --release --example foreign_thread -- --demo  # also runs 3 bot clients for 2 s
//! cargo run --release --example foreign_thread -- --addr 127.0.0.1:0 --demo
//! ```
//!
//! Shows: `Sender` is `Send + Sync` and usable from any thread (commands cross into the loop
//! through a channel, with one wake-up per batch); `buffered_amount()` lets the tick skip a frame
//! for a client that reads too slowly instead of queueing without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsloop::{ConnId, Handler, Message, Sender, WebSocket};

#[derive(Default)]
struct World {
    players: Mutex<HashMap<ConnId, Sender>>,
    /// The "game state": the sum of every input received so far.
    score: AtomicI64,
}

struct Player {
    out: Sender,
    world: Arc<World>,
}

impl Handler for Player {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.world.players.lock().unwrap().insert(self.out.id(), self.out.clone());
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        // Input: a signed number to add to the score.
        if let Some(n) = msg.as_text().and_then(|t| t.trim().parse::<i64>().ok()) {
            self.world.score.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    fn on_close(&mut self, _code: wsloop::CloseCode, _reason: &str) {
        self.world.players.lock().unwrap().remove(&self.out.id());
    }
}

/// The 60 Hz tick, on its own thread.
fn tick(world: Arc<World>, stop: Instant) {
    let period = Duration::from_micros(16_667);
    let mut next = Instant::now();
    let mut frame = 0u64;
    while Instant::now() < stop {
        frame += 1;
        let state = format!("{{\"frame\":{frame},\"score\":{}}}", world.score.load(Ordering::Relaxed));
        for player in world.players.lock().unwrap().values() {
            // Backpressure: skip this frame for a player with more than 64 KiB still unsent.
            if player.buffered_amount() < 64 * 1024 {
                let _ = player.send(state.as_str());
            }
        }
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn main() -> wsloop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let demo = args.iter().any(|a| a == "--demo");
    let listen = args.iter().position(|a| a == "--addr").and_then(|i| args.get(i + 1)).map_or("127.0.0.1:9003", |s| s);
    let world = Arc::new(World::default());
    let w = world.clone();
    let mut ws = WebSocket::new(move |out: Sender| Player { out, world: w.clone() })?;
    let addr = ws.listen(listen)?;
    let control = ws.sender();
    println!("game server on ws://{addr}/ (send numbers; receive 60 state updates per second)");
    let run_for = if demo { Duration::from_secs(2) } else { Duration::from_secs(u64::MAX / 4) };
    let stop = Instant::now() + run_for;
    let ticker = std::thread::spawn(move || tick(world, stop));
    if demo {
        std::thread::spawn(move || bots(addr, run_for));
    }
    let server = ws.spawn()?;
    ticker.join().expect("tick thread");
    control.shutdown()?;
    server.join().expect("loop thread")
}

/// Three clients that send input every 100 ms and count the state updates they receive.
fn bots(addr: std::net::SocketAddr, run_for: Duration) {
    struct Bot {
        out: Sender,
        updates: u32,
    }
    impl Handler for Bot {
        fn on_open(&mut self) -> wsloop::Result<()> {
            self.out.timeout(Duration::from_millis(100), wsloop::Token(0))?;
            Ok(())
        }
        fn on_message(&mut self, _msg: Message) -> wsloop::Result<()> {
            self.updates += 1;
            Ok(())
        }
        fn on_timeout(&mut self, _t: wsloop::Token) -> wsloop::Result<()> {
            self.out.send("1")?;
            self.out.timeout(Duration::from_millis(100), wsloop::Token(0))?;
            Ok(())
        }
        fn on_close(&mut self, code: wsloop::CloseCode, _reason: &str) {
            println!("bot {} received {} state updates (closed with {code})", self.out.id(), self.updates);
        }
    }
    let mut clients = WebSocket::new(|out: Sender| Bot { out, updates: 0 }).expect("client loop");
    for _ in 0..3 {
        clients.connect(&format!("ws://{addr}/")).expect("connect");
    }
    let control = clients.sender();
    let h = clients.spawn().expect("spawn");
    std::thread::sleep(run_for.saturating_sub(Duration::from_millis(200)));
    let _ = control.shutdown();
    let _ = h.join();
}
