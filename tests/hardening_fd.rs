//! File-descriptor exhaustion (issue 7). This test exhausts the descriptors of its whole process,
//! so it is the only test of its binary (`cargo test --test hardening_fd`): no other test can fail
//! for want of a descriptor while it runs.

mod hardening_support;
mod support;

use std::fs::File;
use std::sync::mpsc;
use std::time::Instant;

use hardening_support::*;
use support::{tclient, Ev, T};
use wsloop::Settings;

fn echo(c: &mut support::Client, text: &str) -> std::time::Duration {
    let start = Instant::now();
    c.send(tungstenite::Message::text(text)).unwrap();
    assert_eq!(c.read().unwrap(), tungstenite::Message::text(text));
    start.elapsed()
}

#[test]
fn accept_pauses_on_emfile_and_resumes_when_descriptors_free_up() {
    let (tx, rx) = mpsc::channel();
    let factory = TaggedFactory::new(tx);
    let probes = factory.probes();
    let server = support::spawn_server(factory, Settings::default());
    let ctl = server.control.clone();
    // A connection opened before the exhaustion keeps being served during it.
    let mut early = tclient(&server.url());
    echo(&mut early, "before");
    let mut cpu = ThreadCpu::open(probes.loop_tid());
    let request = upgrade_request(server.addr, "");

    // Use up every descriptor (bounded: the limit here is 20,000).
    let mut files = Vec::new();
    let err = loop {
        match File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) => break e,
        }
        assert!(files.len() < 1_000_000, "no descriptor limit?");
    };
    assert_eq!(err.raw_os_error(), Some(24), "EMFILE expected, got {err}");
    let exhausted_with = files.len();
    // Free exactly one: the client's socket takes it, so the server's accept() gets EMFILE.
    files.pop();
    let mut pending = Raw::connect(server.addr);
    pending.write_all(request.as_bytes());
    assert_eq!(File::open("/dev/null").map_err(|e| e.raw_os_error()).err(), Some(Some(24)));

    let (t0, wall) = (cpu.ticks(), Instant::now());
    let mut worst = std::time::Duration::ZERO;
    let mut rounds = 0;
    while wall.elapsed() < ms(700) {
        worst = worst.max(echo(&mut early, &format!("during{rounds}")));
        rounds += 1;
        std::thread::sleep(ms(50));
    }
    let (busy, wall_ms) = ((cpu.ticks() - t0) * TICK_MS, wall.elapsed().as_millis() as u64);
    let paused = ctl.loop_stats();
    eprintln!(
        "fd exhaustion: {exhausted_with} files; loop CPU {busy} ms in {wall_ms} ms; {} accept pauses; worst echo {worst:?}",
        paused.accept_pauses
    );
    pending.s.set_read_timeout(Some(ms(50))).unwrap();
    let mut b = [0u8; 16];
    match std::io::Read::read(&mut pending.s, &mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("no handshake response while the server cannot accept, got {other:?}"),
    }
    assert_eq!((paused.accepted, paused.connections), (1, 1), "nothing accepted without descriptors");
    // Accepting is retried every 100 ms, not in a loop.
    assert!(
        (3..=12).contains(&paused.accept_pauses),
        "{} accept pauses in {wall_ms} ms of exhaustion",
        paused.accept_pauses
    );
    assert!(busy * 10 < wall_ms, "the loop used {busy} ms of CPU in {wall_ms} ms without descriptors");
    assert!(worst < ms(250), "echo latency {worst:?} during the exhaustion");
    assert!(rounds >= 5);

    // Descriptors free up: the pending connection is accepted and answered.
    drop(files);
    let freed = Instant::now();
    pending.s.set_read_timeout(Some(T)).unwrap();
    assert_101(&pending.read_head());
    assert!(freed.elapsed() < ms(500), "accepted {:?} after descriptors were freed", freed.elapsed());
    pending.send(OP_TEXT, true, b"recovered");
    assert_eq!(pending.read_frame(), Frame { fin: true, opcode: OP_TEXT, payload: b"recovered".to_vec() });
    let resumed = ctl.loop_stats();
    assert_eq!((resumed.accepted, resumed.connections), (2, 2));
    std::thread::sleep(ms(300));
    assert_eq!(ctl.loop_stats().accept_pauses, resumed.accept_pauses, "accepting is no longer paused");
    let mut late = tclient(&server.url());
    echo(&mut late, "late");
    echo(&mut early, "after");

    let events: Vec<Ev> = rx.try_iter().map(|(_, e)| e).collect();
    assert_eq!(events, [Ev::Open, Ev::Open, Ev::Open], "no connection failed ({exhausted_with} files were open)");
    drop((early, late, pending));
    server.stop();
}
