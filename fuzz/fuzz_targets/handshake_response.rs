//! Fuzz the client side of the opening handshake: `ResponseParser::parse` on arbitrary bytes, fed
//! incrementally, then `ServerResponse::validate` against what the client offered.
//!
//! Input layout: byte 0 is flags (bit 0: tight limits, 256 bytes and 4 headers; bit 1: prepend a
//! valid `101` status line and accept key, so the fuzzer spends its time on the subprotocol and
//! extension checks; bit 2: offer subprotocol "chat"; bit 3: offer permessage-deflate), byte 1
//! chooses the read sizes (1 up to 2^(b & 7) bytes), the rest is the response.
//!
//! Checked, beyond "never panics":
//! - incremental parsing gives the same result as parsing the whole buffer at once;
//! - a parsed head ends with CRLF CRLF inside the buffer;
//! - every accessor of the `ServerResponse` works, and `validate` never accepts a response that
//!   is not `101`-shaped: wrong accept key, a subprotocol that was not offered, or an extension that
//!   was not offered; nor accepts one response for two different keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::protocol::handshake::client::{ClientRequest, ResponseParser, ServerResponse};
use wsloop::protocol::handshake::headers::{accept_key, contains_token, HeadLimits};
use wsloop::HandshakeError;

/// The key of RFC 6455 §1.3's example, whose accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Another valid key, to check that the accept value is tied to the key.
const OTHER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEA==";

const PREFIX: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

fn parse_incrementally(
    limits: HeadLimits,
    input: &[u8],
    sizes: &mut impl FnMut() -> usize,
) -> Option<Result<(ServerResponse, usize), HandshakeError>> {
    let mut parser = ResponseParser::new(limits);
    let mut buf = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = sizes().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        match parser.parse(&buf) {
            Ok(None) => continue,
            Ok(Some(r)) => return Some(Ok(r)),
            Err(e) => return Some(Err(e)),
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let limits = if flags & 1 != 0 { HeadLimits { max_bytes: 256, max_headers: 4 } } else { HeadLimits::default() };
    let mut input = Vec::with_capacity(PREFIX.len() + data.len());
    if flags & 2 != 0 {
        input.extend_from_slice(PREFIX);
    }
    input.extend_from_slice(&data[2..]);
    let mut request = ClientRequest::default();
    if flags & 4 != 0 {
        request.protocols.push("chat".into());
    }
    if flags & 8 != 0 {
        request.extensions.push("permessage-deflate; client_max_window_bits".into());
    }

    let split = data[1];
    let max = 1usize << (split & 7);
    let mut state = u32::from(split >> 3) | 0x7f4a_0000;
    let mut sizes = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max
    };

    let incremental = parse_incrementally(limits, &input, &mut sizes);
    let whole = if input.is_empty() { None } else { ResponseParser::new(limits).parse(&input).transpose() };
    assert_eq!(incremental, whole, "incremental and one-shot parsing disagree");

    let Some(Ok((resp, head_len))) = incremental else { return };
    assert!(head_len <= input.len() && head_len <= limits.max_bytes);
    assert!(input[..head_len].ends_with(b"\r\n\r\n"));
    let _ = (resp.status(), resp.content_length(), resp.header("upgrade"), resp.headers().len());
    for (name, _) in resp.headers().iter() {
        assert!(!name.is_empty());
    }
    for e in resp.extensions() {
        let _ = e.to_string();
    }

    let accepted = resp.validate(KEY, &request).is_ok();
    if accepted {
        // Accepted: then it really is a WebSocket upgrade for our key and our offers.
        assert_eq!(resp.headers().count("sec-websocket-accept"), 1, "accepted with a repeated accept key");
        let accept = resp.headers().get("sec-websocket-accept").expect("accepted without an accept key");
        assert_eq!(accept.trim(), accept_key(KEY.as_bytes()));
        assert!(resp.headers().get_all("upgrade").any(|v| contains_token(v, "websocket")));
        assert!(resp.headers().get_all("connection").any(|v| contains_token(v, "upgrade")));
        if let Some(p) = resp.protocol() {
            assert!(request.protocols.iter().any(|o| o == p), "accepted unoffered subprotocol {p:?}");
        }
        for e in resp.extensions() {
            assert!(
                request.extensions.iter().any(|o| o.split(';').next().unwrap().trim().eq_ignore_ascii_case(&e.name)),
                "accepted unoffered extension {:?}",
                e.name
            );
        }
    }
    // One response cannot be the answer to two different keys.
    let other = resp.validate(OTHER_KEY, &request).is_ok();
    assert!(!(accepted && other), "accepted for two different keys");
});
