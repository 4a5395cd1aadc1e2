//! Drive the wsloop client through a running Autobahn|Testsuite fuzzing server.
//!
//! The fuzzing server's public protocol: a WebSocket to `URL/getCaseCount` delivers one text
//! message with the number of cases; for each case N a WebSocket to
//! `URL/runCase?case=N&agent=AGENT` must echo every message until the server closes it; finally
//! a WebSocket to `URL/updateReports?agent=AGENT` makes the server write its reports.
//!
//! ```text
//! # 1. Start the fuzzing server (Autobahn|Testsuite runs under Python 2; the Docker image is
//! #    the easy way). wsloop has no permessage-deflate, so categories 12 and 13 are excluded.
//! mkdir -p autobahn/reports
//! cat > autobahn/fuzzingserver.json <<'EOF'
//! { "url": "ws://127.0.0.1:9001", "outdir": "/reports/clients",
//!   "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {} }
//! EOF
//! docker run -it --rm -p 9001:9001 -v "$PWD/autobahn:/config" -v "$PWD/autobahn/reports:/reports" \
//!     crossbario/autobahn-testsuite wstest -m fuzzingserver -s /config/fuzzingserver.json
//! #    (or, with wstest installed: wstest -m fuzzingserver -s autobahn/fuzzingserver.json)
//!
//! # 2. In another terminal, run every case (a release build: case 9 moves hundreds of MB).
//! cargo run --release --example autobahn_client -- ws://127.0.0.1:9001 wsloop
//! #    or only cases FIRST..=LAST of the server's numbering, e.g. to re-run one:
//! cargo run --release --example autobahn_client -- ws://127.0.0.1:9001 wsloop 42 42
//!
//! # 3. Read autobahn/reports/clients/index.html.
//! ```
//!
//! The cases run one after another, each in its own event loop that returns when the server
//! closes the connection. The settings keep wsloop's defaults where Autobahn needs them (16 MiB
//! frames and 64 MiB messages cover case 9) and turn keep-alive pings off (a ping the fuzzing
//! server did not expect would be reported as a protocol violation).
//!
//! Exits with status 1 if the case count cannot be read or a case fails to run at all (a
//! connection refused, say); the verdict on each case is in Autobahn's report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsloop::{CloseCode, Handler, Message, Sender, Settings, WebSocket};

fn settings() -> Settings {
    Settings {
        keepalive_interval: None,
        max_frame_size: Some(16 << 20),
        max_message_size: Some(64 << 20),
        // Case 9 sends 16 MiB messages, whose echo must fit the send queue.
        max_send_queue: (64 << 20) + (64 << 10),
        // Cases 9.x run up to about a minute on slow machines; the server bounds its own cases.
        open_timeout: Duration::from_secs(30),
        ..Settings::default()
    }
}

/// Reads the case count (the first text message) and closes.
struct CaseCount {
    out: Sender,
    count: Arc<Mutex<Option<String>>>,
}

impl Handler for CaseCount {
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        let mut count = self.count.lock().unwrap();
        if count.is_none() {
            *count = msg.as_text().map(str::to_string);
        }
        self.out.close(CloseCode::NORMAL, "")
    }
}

/// Echoes every message, exactly as received (text as text, binary as binary).
struct Echo {
    out: Sender,
}

impl Handler for Echo {
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        self.out.send(msg)
    }

    fn on_error(&mut self, err: wsloop::Error) {
        // Failing the connection is often what a case expects; show it for the record.
        println!("  wsloop: {err}");
    }
}

/// Open one connection and run until it closes.
fn run<H, F>(url: &str, factory: F) -> wsloop::Result<()>
where
    H: Handler,
    F: FnMut(Sender) -> H,
{
    let mut ws = WebSocket::with_settings(factory, settings())?;
    ws.connect(url)?;
    ws.run()
}

/// Percent-encode a query value (the agent name).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn case_count(base: &str) -> Result<u32, String> {
    let count = Arc::new(Mutex::new(None));
    let shared = count.clone();
    run(&format!("{base}/getCaseCount"), move |out| CaseCount { out, count: shared.clone() })
        .map_err(|e| format!("getCaseCount: {e}"))?;
    let text = count.lock().unwrap().take().ok_or("getCaseCount: the server sent no text message")?;
    text.trim().parse().map_err(|_| format!("getCaseCount: {text:?} is not a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: autobahn_client [URL [AGENT [FIRST [LAST]]]]   (default ws://127.0.0.1:9001 wsloop)");
        return;
    }
    let base = args.first().map_or("ws://127.0.0.1:9001", String::as_str).trim_end_matches('/').to_string();
    let agent = encode(args.get(1).map_or("wsloop", String::as_str));
    let count = match case_count(&base) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let first: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let last: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(count).min(count);
    println!("{count} cases on {base}; running {first}..={last} as agent {agent:?}");

    let started = Instant::now();
    let mut failed = Vec::new();
    for n in first..=last {
        let t = Instant::now();
        let url = format!("{base}/runCase?case={n}&agent={agent}");
        match run(&url, |out| Echo { out }) {
            Ok(()) => println!("case {n}/{count} done in {:.2?}", t.elapsed()),
            Err(e) => {
                eprintln!("case {n}/{count} could not run: {e}");
                failed.push(n);
            }
        }
    }
    println!("{} cases in {:.1?}", last.saturating_sub(first) + 1, started.elapsed());

    if let Err(e) = run(&format!("{base}/updateReports?agent={agent}"), |out| Echo { out }) {
        eprintln!("updateReports: {e}");
        std::process::exit(1);
    }
    println!("reports updated");
    if !failed.is_empty() {
        eprintln!("cases that could not run: {failed:?}");
        std::process::exit(1);
    }
}
