//! A 1 GiB message streamed through the streaming API, in both directions, with the process's
//! peak memory (VmHWM) growing by less than 32 MiB. Alone in its test binary, so no other test
//! disturbs the measurement.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;
use wsloop::{Bytes, CloseCode, Handler, Level, MessageKind, Sender, Settings, WebSocket};

const TOTAL: u64 = 1 << 30;
const FRAME: u64 = 8 << 20; // 128 frames of 8 MiB (under the default 16 MiB frame limit)
const CHUNK: usize = 64 << 10;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The byte at stream offset `i`: a pattern the receiver can check without storing anything.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// Server: receives at the stream level, checks every byte against the pattern, reports totals.
struct Sink {
    out: Sender,
    tx: mpsc::Sender<(u64, u64, u64, bool)>,
    received: u64,
    frames: u64,
    chunks: u64,
    ok: bool,
}

impl Handler for Sink {
    fn level(&self) -> Level {
        Level::Stream
    }
    fn on_frame_begin(&mut self, _len: u64) -> wsloop::Result<()> {
        self.frames += 1;
        Ok(())
    }
    fn on_frame_data(&mut self, chunk: Bytes) -> wsloop::Result<()> {
        for (k, b) in chunk.iter().enumerate() {
            if *b != pattern(self.received + k as u64) {
                self.ok = false;
            }
        }
        self.received += chunk.len() as u64;
        self.chunks += 1;
        Ok(())
    }
    fn on_message_end(&mut self) -> wsloop::Result<()> {
        self.tx.send((self.received, self.frames, self.chunks, self.ok)).unwrap();
        self.out.close(CloseCode::NORMAL, "got it")
    }
}

/// Client: streams the pattern with begin_frame/send_frame_data, never queueing more than
/// ~1 MiB: it refills only when the queue drains (`on_writable`), so the test also proves that
/// pacing by `on_writable` alone never stalls.
struct Source {
    out: Sender,
    sent: u64,
    frame_left: u64,
}

impl Source {
    fn pump(&mut self) -> wsloop::Result<()> {
        while self.out.buffered_amount() < (1 << 20) && self.sent < TOTAL {
            if self.frame_left == 0 {
                let len = FRAME.min(TOTAL - self.sent);
                self.out.begin_frame(len)?;
                self.frame_left = len;
            }
            let n = (CHUNK as u64).min(self.frame_left);
            let chunk: Vec<u8> = (0..n).map(|k| pattern(self.sent + k)).collect();
            self.out.send_frame_data(chunk)?;
            self.sent += n;
            self.frame_left -= n;
        }
        if self.sent == TOTAL && self.frame_left == 0 {
            self.sent += 1; // end once
            return self.out.end_message();
        }
        Ok(())
    }
}

impl Handler for Source {
    fn on_open(&mut self) -> wsloop::Result<()> {
        self.out.begin_message(MessageKind::Binary)?;
        self.pump()
    }
    fn on_writable(&mut self) -> wsloop::Result<()> {
        self.pump()
    }
}

#[test]
fn one_gib_streams_through_in_bounded_memory() {
    let before = vm_hwm_kib();
    let (tx, rx) = mpsc::channel();
    let server = spawn_server(
        move |out: Sender| Sink { out, tx: tx.clone(), received: 0, frames: 0, chunks: 0, ok: true },
        Settings::default(),
    );
    let mut client = WebSocket::new(|out: Sender| Source { out, sent: 0, frame_left: 0 }).unwrap();
    client.connect(&server.url()).unwrap();
    let start = Instant::now();
    let h = client.spawn().unwrap();
    let (received, frames, chunks, ok) = rx.recv_timeout(Duration::from_secs(240)).expect("message never completed");
    join_within(h, Duration::from_secs(10));
    let grown = vm_hwm_kib().saturating_sub(before);
    eprintln!(
        "1 GiB in {:?}: {frames} frames, {chunks} chunks delivered, peak RSS grew {} KiB",
        start.elapsed(),
        grown
    );
    assert_eq!(received, TOTAL);
    assert_eq!(frames, TOTAL / FRAME + 1, "128 data frames plus end_message's empty final frame");
    assert!(ok, "every byte arrived in order and intact");
    // Each chunk is at most one read (the 256 KiB read size plus the 16 KiB a read may go past
    // the budget), so an 8 MiB frame arrives in 31 or more pieces: data is delivered as it
    // arrives, not buffered per frame.
    assert!(chunks >= TOTAL / (272 << 10), "data is delivered as it arrives, not per frame ({chunks} chunks)");
    assert!(grown < 32 * 1024, "peak memory grew by {grown} KiB (limit 32 MiB)");
    server.stop();
}
