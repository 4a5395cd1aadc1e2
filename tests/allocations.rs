//! Heap allocations per echoed message on the loop thread, counted by a global allocator.
//!
//! The rule: no allocation per message for small messages on the hot path. Each case
//! runs a wsloop echo server on its own loop thread and a tungstenite client on the test thread,
//! lets the first messages warm every buffer and queue up, then counts the allocations (and
//! reallocations) made *on the loop thread* while it echoes the next messages. The counters are
//! thread-local, so the client's own allocations do not count. `cargo test --test allocations
//! -- --nocapture` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::{Message as TMessage, WebSocket as TWebSocket};
use wsloop::{Message, Sender, Settings, WebSocket};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator also runs while a thread's locals are being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the only addition is a
// thread-local counter (a `Cell` with a constant initialiser and no destructor, so touching it
// cannot allocate or recurse).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn loop_thread_allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Echo `warm + measured` messages of `size` bytes (`text` or binary), `depth` in flight, and
/// return the loop thread's allocations during the last `measured` echoes.
fn allocations_while_echoing(size: usize, text: bool, depth: usize, warm: usize, measured: usize) -> u64 {
    let (tx, rx) = mpsc::channel::<u64>();
    let factory = move |out: Sender| {
        let tx = tx.clone();
        let mut seen = 0usize;
        let mut start = 0u64;
        move |msg: Message| {
            seen += 1;
            if seen == warm {
                start = loop_thread_allocs();
            }
            let r = out.send(msg);
            if seen == warm + measured {
                // Counted after this message's send was queued; the channel's own allocation
                // (if any) happens after the reading.
                let used = loop_thread_allocs() - start;
                let _ = tx.send(used);
            }
            r
        }
    };
    let settings = Settings { keepalive_interval: None, ..Settings::default() };
    let mut ws = WebSocket::with_settings(factory, settings).unwrap();
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let control = ws.sender();
    let server = ws.spawn().unwrap();

    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut client, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
    let payload = vec![b'a'; size];
    let msg = || {
        if text {
            TMessage::text(String::from_utf8(payload.clone()).unwrap())
        } else {
            TMessage::binary(payload.clone())
        }
    };
    let total = warm + measured;
    let mut sent = 0;
    let mut received = 0;
    while received < total {
        while sent < total && sent - received < depth {
            client.write(msg()).unwrap();
            sent += 1;
        }
        client.flush().unwrap();
        let echo = read_data(&mut client);
        assert_eq!(echo.len(), size, "echo {received} has the wrong size");
        received += 1;
    }
    let used = rx.recv_timeout(Duration::from_secs(10)).expect("the handler reports its count");
    client.close(None).unwrap();
    while client.read().is_ok() {}
    control.shutdown().unwrap();
    server.join().unwrap().unwrap();
    used
}

fn read_data(client: &mut TWebSocket<TcpStream>) -> Vec<u8> {
    loop {
        match client.read().unwrap() {
            TMessage::Binary(b) => return b.to_vec(),
            TMessage::Text(t) => return t.as_bytes().to_vec(),
            _ => continue,
        }
    }
}

/// Echo `warm + measured` messages and assert the loop thread's allocations per message in the
/// measured part stay below `bound`.
fn assert_allocations_below(
    case: &str,
    size: usize,
    text: bool,
    depth: usize,
    warm: usize,
    measured: usize,
    bound: f64,
) {
    let used = allocations_while_echoing(size, text, depth, warm, measured);
    let per = used as f64 / measured as f64;
    eprintln!("{case}: {used} allocations on the loop thread for {measured} echoes = {per:.4} per message");
    assert!(per < bound, "{case}: the hot path allocates {per} times per message (bound {bound})");
}

#[test]
fn small_binary_ping_pong_allocates_nothing_per_message() {
    assert_allocations_below("16 B binary, depth 1", 16, false, 1, 2_000, 20_000, 0.01);
}

#[test]
fn small_binary_pipelined_allocates_nothing_per_message() {
    assert_allocations_below("16 B binary, depth 32", 16, false, 32, 5_000, 50_000, 0.01);
}

#[test]
fn small_text_allocates_nothing_per_message() {
    assert_allocations_below("128 B text, depth 1", 128, true, 1, 2_000, 20_000, 0.01);
}

#[test]
fn large_binary_allocations_are_amortised() {
    // 64 KiB messages are read into pooled buffers and queued by reference, their headers split
    // off one shared tail: an occasional buffer, never one per message (before the tail kept
    // room for headers: 1.2 per message).
    assert_allocations_below("64 KiB binary, depth 4", 64 * 1024, false, 4, 200, 2_000, 0.05);
}
