//! Cross-thread sends: messages pushed by one foreign thread through `Sender`s to 100 connections,
//! against the same messages sent from inside a handler on the loop thread.
//!
//! ```text
//! cargo bench --bench cross_thread            # 2,000,000 messages of 16 B each way
//! cargo bench --bench cross_thread -- 500000  # fewer
//! ```
//!
//! Reports messages per second and CPU time per message: the loop thread's (read from
//! `/proc/self/task/<tid>/schedstat`, the thread named "wsloop") and, for the cross-thread case, the
//! sending thread's too. Clients are plain blocking sockets drained by their own threads, so their
//! cost is not counted. The issue's target: cross-thread CPU per message at most 1.3x the
//! in-handler figure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use wsloop::{Handler, Message, Sender, Settings, WebSocket};

const CONNS: usize = 100;
const SIZE: usize = 16;
/// Messages a handler sends per callback: the same as the most commands the loop takes from the
/// cross-thread channel per turn (`Settings::channel_capacity`), so both paths batch alike.
const BATCH: usize = 65_536;

/// CPU time of one thread, in microseconds: the scheduler's nanosecond run time from
/// `/proc/self/task/<tid>/schedstat` (utime + stime in `stat` only has 10 ms ticks).
fn thread_cpu_us(tid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    ns / 1000
}

fn thread_id_named(name: &str) -> String {
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let tid = e.unwrap().file_name().into_string().unwrap();
        if std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap().trim() == name {
            return tid;
        }
    }
    panic!("no thread named {name}");
}

fn self_tid() -> String {
    std::fs::read_link("/proc/thread-self").unwrap().file_name().unwrap().to_string_lossy().into_owned()
}

/// A client: handshake, then count received bytes until `expect` bytes arrived.
fn client(addr: SocketAddr, received: Arc<AtomicU64>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// On "go" (sent by the bench through `trigger`), sends `n` messages round-robin to every
/// connection, from the loop thread.
struct Pusher {
    all: Arc<std::sync::Mutex<Vec<Sender>>>,
    out: Sender,
}

impl Handler for Pusher {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.all.lock().unwrap().push(self.out.clone());
        Ok(())
    }
    /// Sends the next batch (`t` messages remain), then yields to the loop with a
    /// zero-delay timer, as a handler feeding a game tick would.
    fn on_timeout(&mut self, t: wsloop::Token) -> wsloop::Result<()> {
        let all = self.all.lock().unwrap().clone();
        let payload = wsloop::Bytes::from(vec![7u8; SIZE]);
        let batch = (t.0 as usize).min(BATCH);
        for i in 0..batch {
            all[i % all.len()].send(Message::Binary(payload.clone()))?;
        }
        if t.0 as usize > batch {
            self.out.timeout(Duration::ZERO, wsloop::Token(t.0 - batch as u64))?;
        }
        Ok(())
    }
}

fn run(n: usize, from_handler: bool) -> (f64, f64, f64) {
    let all: Arc<std::sync::Mutex<Vec<Sender>>> = Arc::default();
    let a2 = all.clone();
    let settings = Settings { max_send_queue: 1 << 30, keepalive_interval: None, ..Settings::default() };
    let mut ws = WebSocket::with_settings(move |out: Sender| Pusher { all: a2.clone(), out }, settings).unwrap();
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let control = ws.sender();
    let h = ws.spawn().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            let r = received.clone();
            std::thread::spawn(move || client(addr, r))
        })
        .collect();
    while all.lock().unwrap().len() < CONNS {
        std::thread::sleep(Duration::from_millis(5));
    }
    let loop_tid = thread_id_named("wsloop");
    let expect = (n * (SIZE + 2)) as u64;
    let senders = all.lock().unwrap().clone();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let loop_cpu0 = thread_cpu_us(&loop_tid);
    if from_handler {
        // Ask one handler (through a zero-delay timer) to do all the sending on the loop thread.
        senders[0].timeout(Duration::ZERO, wsloop::Token(n as u64)).unwrap();
        tx.send(0).unwrap();
    } else {
        std::thread::spawn(move || {
            let me = self_tid();
            let c0 = thread_cpu_us(&me);
            let payload = wsloop::Bytes::from(vec![7u8; SIZE]);
            let mut i = 0;
            while i < n {
                match senders[i % senders.len()].send(Message::Binary(payload.clone())) {
                    Ok(()) => i += 1,
                    Err(wsloop::Error::ChannelFull) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            tx.send(thread_cpu_us(&me) - c0).unwrap();
        });
    }
    let sender_cpu = rx.recv().unwrap();
    while received.load(Ordering::Relaxed) < expect {
        assert!(start.elapsed() < Duration::from_secs(120), "delivery stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let loop_cpu = thread_cpu_us(&loop_tid) - loop_cpu0;
    control.shutdown().unwrap();
    h.join().unwrap().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    (n as f64 / elapsed, loop_cpu as f64 / n as f64, sender_cpu as f64 / n as f64)
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2_000_000);
    println!("{n} messages of {SIZE} B, round-robin to {CONNS} connections");
    let (rate_h, loop_h, _) = run(n, true);
    println!("from a handler:       {:>6.2} M msgs/s, loop thread {:.3} us/msg", rate_h / 1e6, loop_h);
    let (rate_x, loop_x, sender_x) = run(n, false);
    println!(
        "from a foreign thread: {:>6.2} M msgs/s, loop thread {:.3} us/msg, sending thread {:.3} us/msg, total {:.3} us/msg",
        rate_x / 1e6,
        loop_x,
        sender_x,
        loop_x + sender_x
    );
    println!("ratio (loop thread):  {:.2}x; ratio (total CPU): {:.2}x", loop_x / loop_h, (loop_x + sender_x) / loop_h);
}
