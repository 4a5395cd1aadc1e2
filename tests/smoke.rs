use wsloop::{Message, Sender, WebSocket};

#[test]
fn tungstenite_echo_roundtrip() {
    let mut ws = WebSocket::new(|out: Sender| move |msg: Message| out.send(msg)).unwrap();
    let addr = ws.listen("127.0.0.1:0").unwrap();
    let stop = ws.sender();
    let h = ws.spawn().unwrap();
    let (mut c, resp) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
    assert_eq!(resp.status(), 101);
    c.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(c.read().unwrap(), tungstenite::Message::text("hello"));
    c.send(tungstenite::Message::binary(vec![1u8; 100_000])).unwrap();
    assert_eq!(c.read().unwrap(), tungstenite::Message::binary(vec![1u8; 100_000]));
    c.close(None).unwrap();
    while c.read().is_ok() {}
    drop(c);
    stop.shutdown().unwrap();
    h.join().unwrap().unwrap();
}
