//! Fan-out: one `PreparedMessage` broadcast to many clients, and what it costs the server.
//!
//! ```text
//! cargo run --release --example broadcast                                    # 1000 clients x 100 messages of 64 B
//! cargo run --release --example broadcast -- --clients 1000 --messages 1000 --size 1024
//! cargo run --release --example broadcast -- --clients 1000 --size 100 --hz 60 --seconds 5
//!
//! # Two processes (10,000 connections need 20,000 descriptors in one process):
//! cargo run --release --example broadcast -- --server-only --addr 127.0.0.1:9010 --clients 10000 --size 100 --hz 60 --seconds 5
//! cargo run --release --example broadcast -- --clients-only ws://127.0.0.1:9010/ --clients 10000
//! ```
//!
//! By default one process runs a server loop (thread `wsloop`) and a client loop holding all N
//! wsloop clients (thread `wsloop-clients`). Once every connection is open, a control thread
//! broadcasts one `PreparedMessage` K times with `Sender::broadcast_prepared`: the server frames it
//! once, and queues the same reference-counted bytes on every connection (no per-client framing
//! or copy). The clients count what they receive.
//!
//! - **Throughput** (default): the K broadcasts are sent as fast as the clients take them (at most
//!   a window of them in flight, so no send queue grows past a few MiB); prints the fan-out rate:
//!   messages delivered per second, counted by the clients, from the first broadcast to the last
//!   delivery. Both loops share the machine, so this includes the clients' cost.
//! - **Paced** (`--hz H --seconds S`): one broadcast every 1/H s for S s; prints the CPU time the
//!   server loop thread used (utime + stime from `/proc/self/task/*/stat`) as a fraction of one
//!   core.
//! - `--server-only`: just the server; waits for `--clients` connections, runs the workload,
//!   prints the server loop's CPU (paced mode), then shuts down (the clients get 1001). Without
//!   `--hz` it queues the K broadcasts at once, as it cannot see deliveries. `--clients-only URL`:
//!   just the clients; prints how many messages they received when the server closes them.
//!
//! Exit status 0 when every message reached every client (in-process mode), 1 otherwise.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsloop::{CloseCode, Handler, Message, PreparedMessage, Sender, Settings, WebSocket};

#[derive(Debug, Clone)]
struct Args {
    clients: usize,
    messages: u64,
    size: usize,
    /// Whether `--size` was given (a `--clients-only` process checks sizes only then).
    size_given: bool,
    hz: Option<f64>,
    seconds: f64,
    addr: String,
    server_only: bool,
    clients_only: Option<String>,
}

const USAGE: &str = "usage: broadcast [--clients N] [--messages K] [--size BYTES] [--hz H --seconds S]
                 [--server-only [--addr HOST:PORT]] [--clients-only URL]
  defaults: 1000 clients, 100 messages, 64 bytes; --hz paces the broadcasts and reports server CPU";

fn parse_args() -> Args {
    let mut a = Args {
        clients: 1000,
        messages: 100,
        size: 64,
        size_given: false,
        hz: None,
        seconds: 5.0,
        addr: "127.0.0.1:0".into(),
        server_only: false,
        clients_only: None,
    };
    let mut it = std::env::args().skip(1);
    fn value<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, name: &str) -> T {
        match it.next().map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("{name} needs a valid value\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" | "-n" => a.clients = value(&mut it, "--clients"),
            "--messages" | "-k" => a.messages = value(&mut it, "--messages"),
            "--size" => {
                a.size = value(&mut it, "--size");
                a.size_given = true;
            }
            "--hz" => a.hz = Some(value(&mut it, "--hz")),
            "--seconds" => a.seconds = value(&mut it, "--seconds"),
            "--addr" => a.addr = value(&mut it, "--addr"),
            "--server-only" => a.server_only = true,
            "--clients-only" => a.clients_only = Some(value(&mut it, "--clients-only")),
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    a
}

/// Counters shared by one side's handlers and the main thread.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    closed: AtomicUsize,
    received: AtomicU64,
    wrong_size: AtomicU64,
}

/// The server's handler: counts open connections; it never sends on its own.
struct Member(Arc<Counters>);

impl Handler for Member {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.0.open.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn on_close(&mut self, _code: CloseCode, _reason: &str) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client: counts the messages it receives.
struct Client {
    counters: Arc<Counters>,
    /// The expected message size, if known.
    size: Option<usize>,
}

impl Handler for Client {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn on_message(&mut self, msg: Message) -> wsloop::Result<()> {
        if self.size.is_some_and(|s| s != msg.len()) {
            self.counters.wrong_size.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn on_close(&mut self, _code: CloseCode, _reason: &str) {
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
    fn on_error(&mut self, err: wsloop::Error) {
        eprintln!("client: {err}");
    }
}

/// Many connections open at once: allow their handshakes time (SYN retries under a burst).
fn settings() -> Settings {
    Settings { open_timeout: Duration::from_secs(60), ..Settings::default() }
}

/// Start the client loop on a thread named `wsloop-clients` (not `wsloop`, so the CPU figure
/// names the server loop alone).
fn start_clients(url: &str, n: usize, size: Option<usize>) -> (Arc<Counters>, Sender, std::thread::JoinHandle<()>) {
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let mut ws = WebSocket::with_settings(move |_out: Sender| Client { counters: c.clone(), size }, settings())
        .expect("client loop");
    for _ in 0..n {
        ws.connect(url).expect("connect");
    }
    let control = ws.sender();
    let handle = std::thread::Builder::new()
        .name("wsloop-clients".into())
        .spawn(move || {
            if let Err(e) = ws.run() {
                eprintln!("client loop: {e}");
            }
        })
        .expect("client thread");
    (counters, control, handle)
}

/// Wait until `count()` reaches `n`, printing progress; false on timeout.
fn wait_until(what: &str, n: usize, limit: Duration, count: impl Fn() -> usize) -> bool {
    let deadline = Instant::now() + limit;
    let mut last_print = Instant::now();
    loop {
        let c = count();
        if c >= n {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: {c} of {n} {what}");
            return false;
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("{c} of {n} {what}...");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Clock ticks per second, from the auxiliary vector (AT_CLKTCK); 100 if unreadable.
fn clock_ticks() -> u64 {
    const AT_CLKTCK: u64 = 17;
    if let Ok(aux) = std::fs::read("/proc/self/auxv") {
        for pair in aux.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap());
            let val = u64::from_ne_bytes(pair[8..].try_into().unwrap());
            if key == AT_CLKTCK && val > 0 {
                return val;
            }
        }
    }
    100
}

/// utime + stime, in clock ticks, of this process's threads named `name`.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    thread_cpu_split(name).map(|(u, s)| u + s)
}

/// (utime, stime), in clock ticks, of this process's threads named `name`.
fn thread_cpu_split(name: &str) -> Option<(u64, u64)> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(Path::new(&dir).join("stat")).ok()?;
        // Fields after the parenthesised command name start at field 3 (state); utime and
        // stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let t = total.get_or_insert((0, 0));
        t.0 += utime;
        t.1 += stime;
    }
    total
}

/// Broadcast from this (foreign) thread, retrying while the command channel is full.
fn broadcast(control: &Sender, msg: &PreparedMessage) {
    loop {
        match control.broadcast_prepared(msg) {
            Ok(()) => return,
            Err(wsloop::Error::ChannelFull) => std::thread::sleep(Duration::from_micros(100)),
            Err(e) => panic!("broadcast failed: {e}"),
        }
    }
}

/// The paced workload: one broadcast per tick; returns (ticks sent, server loop CPU as
/// fractions of one core: user and system).
fn paced(control: &Sender, msg: &PreparedMessage, hz: f64, seconds: f64) -> (u64, Option<(f64, f64)>) {
    let ticks = (hz * seconds).round() as u64;
    let period = Duration::from_secs_f64(1.0 / hz);
    let tck = clock_ticks() as f64;
    let cpu0 = thread_cpu_split("wsloop");
    let start = Instant::now();
    for i in 0..ticks {
        broadcast(control, msg);
        let next = start + period.mul_f64((i + 1) as f64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = thread_cpu_split("wsloop");
    let frac = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(((b.0 - a.0) as f64 / tck / wall, (b.1 - a.1) as f64 / tck / wall)),
        _ => None,
    };
    (ticks, frac)
}

fn report_cpu(args: &Args, n: usize, frac: Option<(f64, f64)>) {
    match frac {
        Some((user, system)) => println!(
            "server loop thread CPU: {:.1}% of one core (user {:.1}%, system {:.1}%) \
             ({} B x {n} connections at {} Hz for {} s; {} ms clock ticks)",
            (user + system) * 100.0,
            user * 100.0,
            system * 100.0,
            args.size,
            args.hz.unwrap_or_default(),
            args.seconds,
            1000 / clock_ticks()
        ),
        None => println!("server loop thread CPU: unavailable (no /proc/self/task/*/stat for a thread named wsloop)"),
    }
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

fn main() {
    let args = parse_args();
    if let Some(url) = args.clients_only.clone() {
        std::process::exit(clients_only(&url, &args));
    }
    let server_counters = Arc::new(Counters::default());
    let sc = server_counters.clone();
    let mut ws = WebSocket::with_settings(move |_out: Sender| Member(sc.clone()), settings()).expect("server loop");
    let addr = ws.listen(args.addr.as_str()).expect("listen");
    let control = ws.sender();
    let server = ws.spawn().expect("server thread");
    let url = format!("ws://{addr}/");
    println!("broadcast server on {url}");
    let n = args.clients;
    let clients = if args.server_only { None } else { Some(start_clients(&url, n, Some(args.size))) };
    let opened = Instant::now();
    let all_open = wait_until("connections open", n, Duration::from_secs(120), || {
        let server_side = server_counters.open.load(Ordering::Relaxed);
        let client_side = clients.as_ref().map_or(server_side, |(c, _, _)| c.open.load(Ordering::Relaxed));
        server_side.min(client_side)
    });
    if !all_open {
        std::process::exit(1);
    }
    println!("{n} connections open in {:.2} s", opened.elapsed().as_secs_f64());

    let msg = PreparedMessage::new(payload(args.size));
    let frame_len = msg.frame_len(false);
    let received = || clients.as_ref().map_or(0, |(c, _, _)| c.received.load(Ordering::Relaxed));
    let cpu0 = thread_cpu_ticks("wsloop");
    let (sent, start) = match args.hz {
        Some(hz) => {
            let start = Instant::now();
            let (sent, frac) = paced(&control, &msg, hz, args.seconds);
            report_cpu(&args, n, frac);
            (sent, start)
        }
        None => {
            // At most `window` broadcasts in flight: a few MiB per connection at most.
            let window = ((4 << 20) / frame_len).clamp(1, 1000) as u64;
            let start = Instant::now();
            for i in 0..args.messages {
                if clients.is_some() && i >= window {
                    let need = ((i - window) * n as u64) as usize;
                    if !wait_until("deliveries", need, Duration::from_secs(60), || received() as usize) {
                        std::process::exit(1);
                    }
                }
                broadcast(&control, &msg);
            }
            (args.messages, start)
        }
    };

    let mut ok = true;
    if let Some((counters, client_control, client_thread)) = clients {
        let expected = sent * n as u64;
        let done = wait_until("messages delivered", expected as usize, Duration::from_secs(120), || {
            counters.received.load(Ordering::Relaxed) as usize
        });
        let secs = start.elapsed().as_secs_f64();
        let got = counters.received.load(Ordering::Relaxed);
        let wrong = counters.wrong_size.load(Ordering::Relaxed);
        println!("delivered {got} of {expected} messages ({n} clients x {sent} broadcasts of {} B)", args.size);
        if args.hz.is_none() {
            println!(
                "fan-out rate: {:.0} messages delivered/s ({:.1} MB/s of frames) in {secs:.3} s",
                got as f64 / secs,
                got as f64 * frame_len as f64 / secs / 1e6
            );
            if let (Some(a), Some(b)) = (cpu0, thread_cpu_ticks("wsloop")) {
                let cpu = (b - a) as f64 / clock_ticks() as f64;
                println!("server loop thread CPU: {cpu:.2} s in {secs:.3} s ({:.0}% of one core)", cpu / secs * 100.0);
            }
        }
        ok = done && wrong == 0 && got == expected;
        if wrong > 0 {
            println!("{wrong} messages had the wrong size");
        }
        let _ = control.shutdown();
        let _ = server.join();
        let _ = client_control.shutdown();
        let _ = client_thread.join();
    } else {
        println!("sent {sent} broadcasts to {n} connections; shutting down");
        let _ = control.shutdown();
        let _ = server.join();
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// `--clients-only URL`: connect, count, report when the server has closed every connection.
fn clients_only(url: &str, args: &Args) -> i32 {
    let n = args.clients;
    let (counters, _control, handle) = start_clients(url, n, args.size_given.then_some(args.size));
    let start = Instant::now();
    if !wait_until("connections open", n, Duration::from_secs(120), || counters.open.load(Ordering::Relaxed)) {
        return 1;
    }
    println!("{n} clients open in {:.2} s", start.elapsed().as_secs_f64());
    // The loop returns when the server has closed every connection.
    let _ = handle.join();
    let got = counters.received.load(Ordering::Relaxed);
    println!(
        "clients received {got} messages ({:.1} per client, {} of the wrong size); {} closed",
        got as f64 / n as f64,
        counters.wrong_size.load(Ordering::Relaxed),
        counters.closed.load(Ordering::Relaxed)
    );
    0
}
