//! The examples run as their documentation says, against each other and against tungstenite.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

/// The example binary, built on demand with this test's profile.
fn example(name: &str) -> PathBuf {
    support::example_binary(name)
}

use support::ChildGuard as Guard;

/// Start an example server and read the `ws://ADDR/` it announces on stdout or stderr.
fn start_server(name: &str, args: &[&str], from_stderr: bool) -> (Guard, String) {
    let mut cmd = Command::new(example(name));
    cmd.args(args).stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn().unwrap();
    let pipe: Box<dyn std::io::Read + Send> =
        if from_stderr { Box::new(child.stderr.take().unwrap()) } else { Box::new(child.stdout.take().unwrap()) };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("server announced no address");
    let start = line.find("ws://").expect("line names a ws:// URL");
    let url: String = line[start..].split_whitespace().next().unwrap().to_string();
    (Guard(child), url)
}

fn wait_exit(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn echo_client_against_echo_server() {
    let (_server, url) = start_server("echo_server", &["--addr", "127.0.0.1:0"], true);
    let client = Command::new(example("echo_client"))
        .args([&url, "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(client, Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "echo_client failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("50 echoes verified"), "{stdout}");
    assert!(stdout.contains("closed: 1000"), "{stdout}");
}

#[test]
fn chat_relays_to_the_other_members_only() {
    let (_server, url) = start_server("chat", &["127.0.0.1:0"], false);
    let base = url.split('?').next().unwrap().to_string();
    let connect = |name: &str| {
        let (c, _) = tungstenite::connect(format!("{base}?name={name}")).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = c.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        c
    };
    let mut alice = connect("alice");
    let mut bob = connect("bob");
    assert_eq!(alice.read().unwrap().into_text().unwrap().as_str(), "* bob joined");
    bob.send(tungstenite::Message::text("hi all")).unwrap();
    assert_eq!(alice.read().unwrap().into_text().unwrap().as_str(), "bob: hi all");
    alice.send(tungstenite::Message::text("hello bob")).unwrap();
    assert_eq!(bob.read().unwrap().into_text().unwrap().as_str(), "alice: hello bob", "bob never sees his own line");
    // A nameless client is refused with 400.
    match tungstenite::connect(base.clone()) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    drop(bob);
    assert_eq!(alice.read().unwrap().into_text().unwrap().as_str(), "* bob left");
}

#[test]
fn foreign_thread_demo_delivers_60_hz_updates() {
    let child = Command::new(example("foreign_thread"))
        .args(["--addr", "127.0.0.1:0", "--demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let counts: Vec<u32> =
        stdout.lines().filter_map(|l| l.split("received ").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(counts.len(), 3, "three bots report: {stdout}");
    for c in counts {
        // About 1.8 s at 60 Hz is ~108 updates; allow for a loaded CI machine.
        assert!((30..=130).contains(&c), "bot received {c} updates: {stdout}");
    }
}
