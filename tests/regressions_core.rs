//! Regression tests for bugs in the protocol core found by the fuzz targets in `fuzz/` and by
//! `tests/proptest_core.rs`. Each test names the target that found the bug and keeps its
//! minimised input.

use bytes::BytesMut;
use wsloop::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use wsloop::protocol::handshake::client::{ClientRequest, ResponseParser};
use wsloop::protocol::mask::{apply_mask, apply_mask_bytewise};
use wsloop::{HandshakeError, ProtocolError};

/// The RFC 6455 §1.3 example key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Found while triaging a `fuzz/handshake_response` report (the report itself was a harness
/// mistake, see `fuzz/README.md`): with two `Sec-WebSocket-Accept` fields the client used the first
/// and ignored the second, so `Accept: <right value>` followed by `Accept: <anything>` passed
/// `validate`. Repeated fields mean their comma-joined value (RFC 7230 §3.2.2), which is never the
/// expected accept value, and RFC 6455 §4.1 says the client must then fail the connection. A
/// repeated field is now an `AcceptMismatch`, as a repeated `Sec-WebSocket-Key` already is on the
/// server side.
#[test]
fn duplicate_accept_header_is_rejected() {
    let other_key = "AQIDBAUGBwgJCgsMDQ4PEA==";
    let other_accept = wsloop::protocol::handshake::headers::accept_key(other_key.as_bytes());
    for (first, second) in [(ACCEPT, other_accept.as_str()), (other_accept.as_str(), ACCEPT), (ACCEPT, ACCEPT)] {
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {first}\r\nSec-WebSocket-Accept: {second}\r\n\r\n"
        );
        let (r, _) = ResponseParser::default().parse(response.as_bytes()).unwrap().unwrap();
        let req = ClientRequest::default();
        assert_eq!(r.validate(KEY, &req), Err(HandshakeError::AcceptMismatch), "{first} / {second}");
        assert_eq!(r.validate(other_key, &req), Err(HandshakeError::AcceptMismatch), "{first} / {second}");
    }
    // A single, correct field is still accepted.
    let ok = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    let (r, _) = ResponseParser::default().parse(ok.as_bytes()).unwrap().unwrap();
    assert_eq!(r.validate(KEY, &ClientRequest::default()), Ok(()));
}

/// Found by `tests/proptest_core.rs`: the byte-at-a-time masking reference overflowed (a panic in
/// debug builds) for offsets near `usize::MAX`, which `apply_mask` documents as valid.
#[test]
fn bytewise_mask_reference_accepts_offsets_near_usize_max() {
    let key = [0xde, 0xad, 0xbe, 0xef];
    for offset in [usize::MAX - 3, usize::MAX - 1, usize::MAX] {
        let mut a = *b"0123456789";
        let mut b = a;
        apply_mask(&mut a, key, offset);
        apply_mask_bytewise(&mut b, key, offset);
        assert_eq!(a, b, "offset {offset}");
    }
}

/// Found by `fuzz/frame_decoder` (not a bug, pinned so it stays deliberate): an overlong control
/// frame is refused from its first two bytes, before its extended length has arrived, so the
/// length in `ControlFrameTooLong` is the 7-bit marker (126 or 127) when the extended length is not
/// yet in the buffer and the real length when it is.
#[test]
fn overlong_control_frame_fails_from_its_first_two_bytes() {
    let mut dec = Decoder::new(DecoderConfig::new(Role::Client));
    let mut buf = BytesMut::from(&b"\x89\x7f"[..]);
    assert_eq!(dec.next_event(&mut buf), Err(ProtocolError::ControlFrameTooLong(127)));
    let mut dec = Decoder::new(DecoderConfig::new(Role::Client));
    let mut buf = BytesMut::from(&b"\x89\x7f\xff\xff\xff\xff\xff\xff\xff\x6f"[..]);
    assert_eq!(dec.next_event(&mut buf), Err(ProtocolError::ControlFrameTooLong(0xffff_ffff_ffff_ff6f)));
    // And the decoder stays failed.
    let mut more = BytesMut::from(&b"\x82\x00"[..]);
    assert_eq!(dec.next_event(&mut more), Ok(None));
    let mut dec = Decoder::new(DecoderConfig::new(Role::Client));
    let mut ok = BytesMut::from(&b"\x89\x01x"[..]);
    assert_eq!(dec.next_event(&mut ok), Ok(Some(Event::Ping(bytes::Bytes::from_static(b"x")))));
}
