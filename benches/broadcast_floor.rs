//! The floor for the 60 Hz fan-out figure: the same fan-out with no WebSocket library.
//!
//! ```text
//! cargo bench --bench broadcast_floor -- --serve 127.0.0.1:19020 10000 &
//! cargo run --release --example broadcast -- --clients-only ws://127.0.0.1:19020/ --clients 10000 --size 100
//! ```
//!
//! With `--serve ADDR N` it accepts `N` WebSocket clients on plain blocking sockets, answers each
//! opening handshake by hand (only `Sec-WebSocket-Accept` is computed, with
//! `wsloop::protocol::handshake::headers::accept_key`), then writes one 100-byte binary frame to
//! every socket per tick, one `write` each, 300 ticks at 60 Hz, and prints its CPU time (utime +
//! stime of its one thread, 10 ms ticks) and how long the 300 ticks really took (a machine
//! whose kernel cannot keep up stretches them). Then it drops the sockets, which ends the clients.
//! Without `--serve` (as `cargo bench` runs it) it prints this usage and exits: it needs clients
//! from another process, because 20,000 descriptors in one process exceed the usual `ulimit -n`.
//!
//! Compare with `examples/broadcast.rs --server-only` (same clients, same load, through wsloop);
//! results in `docs/performance.md`, "100 B to 10,000 connections at 60 Hz".

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const TICKS: u32 = 300;
const HZ: u64 = 60;
const PAYLOAD: usize = 100;

/// utime and stime of the calling thread, in microseconds.
fn thread_cpu_us() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    let f: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..].split_whitespace().collect();
    let tick = |i: usize| f[i].parse::<u64>().expect("stat field") * 10_000;
    (tick(11), tick(12))
}

/// Read one handshake head and answer it with a `101`.
fn handshake(s: &mut std::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v))
        .ok_or(std::io::ErrorKind::InvalidData)?
        .trim();
    let accept = wsloop::protocol::handshake::headers::accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(i) = args.iter().position(|a| a == "--serve") else {
        println!("broadcast_floor: run with -- --serve ADDR N (see the file's documentation); nothing to do");
        return;
    };
    let addr = args.get(i + 1).expect("--serve ADDR N");
    let n: usize = args.get(i + 2).and_then(|v| v.parse().ok()).expect("--serve ADDR N");
    let listener = TcpListener::bind(addr.as_str()).expect("bind");
    eprintln!("broadcast_floor on ws://{}/, waiting for {n} clients", listener.local_addr().unwrap());
    let mut socks = Vec::with_capacity(n);
    while socks.len() < n {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("TCP_NODELAY");
        if handshake(&mut s).is_ok() {
            socks.push(s);
        }
    }
    let mut frame = vec![0x82u8, PAYLOAD as u8];
    frame.extend_from_slice(&[7u8; PAYLOAD]);
    let (u0, s0) = thread_cpu_us();
    let start = Instant::now();
    for tick in 0..TICKS {
        for s in socks.iter_mut() {
            s.write_all(&frame).expect("write");
        }
        let next = start + Duration::from_micros(1_000_000 / HZ * (tick as u64 + 1));
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (u1, s1) = thread_cpu_us();
    let pct = |us: u64| us as f64 / elapsed / 1e4;
    println!(
        "bare write loop: {:.1}% of one core (user {:.1}%, system {:.1}%); {TICKS} ticks of {n} writes took {elapsed:.2} s (due: {:.2} s)",
        pct(u1 - u0 + s1 - s0),
        pct(u1 - u0),
        pct(s1 - s0),
        TICKS as f64 / HZ as f64
    );
}
