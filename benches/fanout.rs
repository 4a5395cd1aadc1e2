//! Fan-out: one `PreparedMessage` broadcast to 1,000 connections, 16 B and 1 KiB, measured as
//! messages delivered per second.
//!
//! ```text
//! cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! Per benchmark, a wsloop server loop (its own thread) and 1,000 raw client sockets are set up
//! once: the clients complete the opening handshake with blocking sockets, then turn
//! non-blocking and are drained by one thread on a mio poll, which counts the bytes received.
//! Every connection receives exactly one frame per broadcast, so a broadcast is delivered when
//! 1,000 frames' worth of bytes have arrived. One iteration is one `broadcast_prepared` from the
//! benchmark thread, timed until the drain thread has seen it arrive on all 1,000 connections
//! (`iter_custom`, a mutex and condition variable); throughput is 1,000 elements per iteration,
//! so criterion's elem/s is messages delivered per second. Broadcasts are not overlapped: each
//! time includes the wake-up of the loop and the last client's read.
//!
//! `kernel_floor_write_loop` is the reference without wsloop: the same frame bytes written by the
//! benchmark thread to 1,000 plain accepted sockets, one `write` each, same clients, same drain
//! thread. The difference between the two is what wsloop adds (the cross-thread command and
//! wake-up, and the loop's own work).
//!
//! Results and the machine they were taken on are in `docs/performance.md`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mio::{Events, Interest, Poll, Token};
use wsloop::{Handler, PreparedMessage, Sender, Settings, WebSocket};

const CONNECTIONS: usize = 1000;

/// Bytes received by all clients, the count a waiter waits for, and the condition variable the
/// drain thread signals when the count reaches it (only then, so the waiting benchmark thread is
/// woken once per broadcast, not once per poll turn).
#[derive(Default)]
struct Delivered {
    bytes: Mutex<u64>,
    target: AtomicU64,
    reached: Condvar,
}

/// The server's handler counts open connections (a broadcast reaches open connections only).
struct Member(Arc<AtomicUsize>);

impl Handler for Member {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What sends to the 1,000 clients.
enum Server {
    /// A wsloop server loop on its own thread, broadcasting.
    Wsloop { control: Sender, thread: Option<JoinHandle<wsloop::Result<()>>> },
    /// The reference without wsloop: the accepted sockets, written one after the other by the
    /// benchmark thread (one `write` of the same frame bytes per socket).
    Floor(Vec<TcpStream>),
}

/// A server with 1,000 raw clients and the thread draining them.
struct Rig {
    server: Server,
    delivered: Arc<Delivered>,
    stop: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
}

/// Connect and complete the opening handshake on a blocking socket (the server sends nothing
/// more until the first broadcast, so reading up to the end of the head reads nothing else).
fn handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("handshake read"), 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

impl Rig {
    /// A wsloop server with 1,000 clients.
    fn wsloop() -> Rig {
        let open = Arc::new(AtomicUsize::new(0));
        let o = open.clone();
        let settings = Settings {
            keepalive_interval: None, // nothing but the broadcasts reaches the clients
            close_timeout: Duration::from_millis(200),
            ..Settings::default()
        };
        let mut ws = WebSocket::with_settings(move |_out: Sender| Member(o.clone()), settings).unwrap();
        let addr = ws.listen("127.0.0.1:0").unwrap();
        let control = ws.sender();
        let server = Some(ws.spawn().unwrap());
        let clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| handshake(addr)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while open.load(Ordering::Relaxed) < CONNECTIONS {
            assert!(Instant::now() < deadline, "only {} connections opened", open.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(1));
        }
        Rig::with_clients(Server::Wsloop { control, thread: server }, clients)
    }

    /// The reference: 1,000 plain TCP connections, no WebSocket handshake, no wsloop.
    fn floor() -> Rig {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::with_capacity(CONNECTIONS);
        let mut accepted = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let (a, _) = listener.accept().unwrap();
            a.set_nodelay(true).unwrap();
            clients.push(c);
            accepted.push(a);
        }
        Rig::with_clients(Server::Floor(accepted), clients)
    }

    fn with_clients(server: Server, clients: Vec<TcpStream>) -> Rig {
        let delivered = Arc::new(Delivered::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (d, st) = (delivered.clone(), stop.clone());
        let drain =
            Some(std::thread::Builder::new().name("drain".into()).spawn(move || drain(clients, d, st)).unwrap());
        Rig { server, delivered, stop, drain }
    }

    /// Broadcast `msg` once and wait until every connection has received it.
    fn round(&self, msg: &PreparedMessage, frame_len: u64) -> Duration {
        let d = &*self.delivered;
        let target = *d.bytes.lock().unwrap() + frame_len * CONNECTIONS as u64;
        d.target.store(target, Ordering::Relaxed);
        let start = Instant::now();
        match &self.server {
            Server::Wsloop { control, .. } => control.broadcast_prepared(msg).expect("broadcast"),
            Server::Floor(socks) => {
                for mut s in socks {
                    s.write_all(msg.server_frame()).expect("write");
                }
            }
        }
        let guard = d.bytes.lock().unwrap();
        let (guard, timeout) = d.reached.wait_timeout_while(guard, Duration::from_secs(10), |n| *n < target).unwrap();
        let elapsed = start.elapsed();
        assert!(!timeout.timed_out(), "broadcast not delivered within 10 s: {} of {target} bytes", *guard);
        elapsed
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Close the clients first (the server sees EOF), then shut the server down.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
        if let Server::Wsloop { control, thread } = &mut self.server {
            let _ = control.shutdown();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Read every client until `stop`, adding the bytes to `delivered` once per poll turn.
fn drain(clients: Vec<TcpStream>, delivered: Arc<Delivered>, stop: Arc<AtomicBool>) {
    let mut poll = Poll::new().unwrap();
    let mut socks: Vec<mio::net::TcpStream> = clients
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            mio::net::TcpStream::from_std(s)
        })
        .collect();
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).unwrap();
    }
    let mut events = Events::with_capacity(CONNECTIONS);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        let mut got = 0u64;
        for ev in events.iter() {
            let s = &mut socks[ev.token().0];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("client read failed: {e}"),
                }
            }
        }
        if got > 0 {
            let mut bytes = delivered.bytes.lock().unwrap();
            *bytes += got;
            if *bytes >= delivered.target.load(Ordering::Relaxed) {
                delivered.reached.notify_all();
            }
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_1000_connections");
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    for (name, make) in [("broadcast_prepared", Rig::wsloop as fn() -> Rig), ("kernel_floor_write_loop", Rig::floor)] {
        for (label, size) in [("16B", 16usize), ("1KiB", 1024)] {
            let msg = PreparedMessage::new((0..size).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
            let frame_len = msg.frame_len(false) as u64;
            let rig = make();
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rig.round(&msg, frame_len)).sum())
            });
            drop(rig);
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = fanout
}
criterion_main!(benches);
