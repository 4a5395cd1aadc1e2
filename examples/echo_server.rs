//! Echo server: every text and binary message comes back unchanged.
//!
//! ```text
//! cargo run --release --example echo_server                 # ws://127.0.0.1:9001
//! cargo run --release --example echo_server -- --addr 0.0.0.0:9001
//! cargo run --release --example echo_server -- --port 9100  # 127.0.0.1:9100 (for ../shared/bench)
//! ```
//!
//! This is the server the shared benchmark harness runs as `ours`. It answers pings, completes
//! the closing handshake and sends nothing it was not asked for (keep-alive pings are off, as in
//! the peers it is compared with).

use std::time::Duration;

use wsloop::{Message, Sender, Settings, WebSocket};

fn main() -> wsloop::Result<()> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr needs HOST:PORT"),
            "--port" | "-p" => addr = format!("127.0.0.1:{}", args.next().expect("--port needs a number")),
            "-h" | "--help" => {
                eprintln!("usage: echo_server [--addr HOST:PORT | --port PORT]   (default 127.0.0.1:9001)");
                return Ok(());
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let settings = Settings { keepalive_interval: None, close_timeout: Duration::from_secs(2), ..Settings::default() };
    let mut ws = WebSocket::with_settings(|out: Sender| move |msg: Message| out.send(msg), settings)?;
    let bound = ws.listen(addr.as_str())?;
    eprintln!("echo_server listening on ws://{bound}/");
    ws.run()?;
    Ok(())
}
