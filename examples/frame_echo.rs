//! Frame-level echo server: every message comes back split into exactly the frames the peer used.
//!
//! ```text
//! cargo run --release --example frame_echo                          # ws://127.0.0.1:9004/
//! cargo run --release --example frame_echo -- --addr 127.0.0.1:0    # any free port (printed)
//! ```
//!
//! Shows the frame-level API in both directions. The handler asks for [`Level::Frame`], so it
//! receives `on_message_begin(kind)`, one `on_message_frame(payload)` per frame (empty frames
//! included), then `on_message_end()`; it answers with `begin_message(kind)`, `send_frame(payload)`
//! per frame and `end_message_with(last)`.
//!
//! `end_message()` would finish the echo with an extra, empty final frame, so to preserve the
//! peer's fragmentation exactly the handler holds back one frame: each frame is sent when the next
//! one arrives, and the last one goes out with `end_message_with`, as the final frame. At most one
//! frame is held per connection (frames are limited to `Settings::max_frame_size`, 16 MiB by
//! default). Control frames are not part of a message: pings are answered by the loop between
//! fragments.
//!
//! A peer that sends faster than it reads fills its send queue; the next `send_frame` then fails
//! with `SendQueueFull`, which (through `?`) closes that connection with 1011.

use std::time::Duration;

use wsloop::{Bytes, Handler, Level, MessageKind, Sender, Settings, WebSocket};

struct FrameEcho {
    out: Sender,
    /// The frame received last, not echoed yet: it may turn out to be the final one.
    held: Option<Bytes>,
}

impl Handler for FrameEcho {
    fn level(&self) -> Level {
        Level::Frame
    }

    fn on_message_begin(&mut self, kind: MessageKind) -> wsloop::Result<()> {
        self.held = None;
        self.out.begin_message(kind)
    }

    fn on_message_frame(&mut self, payload: Bytes) -> wsloop::Result<()> {
        // Echo the previous frame as a non-final one; hold this one back.
        if let Some(previous) = self.held.replace(payload) {
            self.out.send_frame(previous)?;
        }
        Ok(())
    }

    fn on_message_end(&mut self) -> wsloop::Result<()> {
        // Every message has at least one frame, so `held` is set here.
        let last = self.held.take().unwrap_or_default();
        self.out.end_message_with(last)
    }
}

fn main() -> wsloop::Result<()> {
    let mut addr = "127.0.0.1:9004".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr needs HOST:PORT"),
            "-h" | "--help" => {
                eprintln!("usage: frame_echo [--addr HOST:PORT]   (default 127.0.0.1:9004)");
                return Ok(());
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let settings = Settings { keepalive_interval: None, close_timeout: Duration::from_secs(2), ..Settings::default() };
    let mut ws = WebSocket::with_settings(|out: Sender| FrameEcho { out, held: None }, settings)?;
    let bound = ws.listen(addr.as_str())?;
    println!("frame_echo listening on ws://{bound}/");
    ws.run()
}
