//! Fuzz the server side of the opening handshake: `RequestParser::parse` on arbitrary bytes, fed
//! incrementally as a socket would deliver them.
//!
//! Input layout: byte 0 chooses the limits (bit 0: tight limits, 256 bytes and 4 headers, instead
//! of the defaults), byte 1 chooses the read sizes (1 up to 2^(b & 7) bytes), the rest is the
//! request.
//!
//! Checked, beyond "never panics":
//! - incremental parsing gives the same result as parsing the whole buffer at once;
//! - a parsed head ends with CRLF CRLF inside the buffer, and the key is a valid key;
//! - every accessor of the `Request` works;
//! - the `101` response the server writes for the request is accepted by the client-side parser
//!   and validator (with the first offered subprotocol selected): the two sides agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::protocol::handshake::client::{ClientRequest, ResponseParser};
use wsloop::protocol::handshake::headers::{is_valid_key, HeadLimits};
use wsloop::protocol::handshake::server::{Request, RequestParser, Response};
use wsloop::HandshakeError;

fn limits(flags: u8) -> HeadLimits {
    if flags & 1 != 0 {
        HeadLimits { max_bytes: 256, max_headers: 4 }
    } else {
        HeadLimits::default()
    }
}

/// Feed `input` in chunks to one parser, calling `parse` after each append, as the event loop does.
fn parse_incrementally(
    limits: HeadLimits,
    input: &[u8],
    sizes: &mut impl FnMut() -> usize,
) -> Option<Result<(Request, usize), HandshakeError>> {
    let mut parser = RequestParser::new(limits);
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

fn exercise(req: &Request) {
    let _ = (req.resource(), req.path(), req.query(), req.query_param("a"), req.query_param(""));
    let _ = (req.host(), req.origin(), req.cookie("s"), req.headers().len(), req.header("x"));
    let _ = req.cookies().count();
    for (name, value) in req.headers().iter() {
        assert!(!name.is_empty());
        let _ = value.len();
    }
    for e in req.extensions() {
        let _ = e.to_string();
        let _ = e.param("client_max_window_bits");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limits = limits(data[0]);
    let split = data[1];
    let input = &data[2..];
    let max = 1usize << (split & 7);
    let mut state = u32::from(split >> 3) | 0x51ed_0000;
    let mut sizes = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max
    };

    let incremental = parse_incrementally(limits, input, &mut sizes);
    let whole = if input.is_empty() { None } else { RequestParser::new(limits).parse(input).transpose() };
    assert_eq!(incremental, whole, "incremental and one-shot parsing disagree");

    let Some(Ok((req, head_len))) = incremental else { return };
    assert!(head_len <= input.len() && head_len <= limits.max_bytes);
    assert!(input[..head_len].ends_with(b"\r\n\r\n"));
    assert!(is_valid_key(req.key().as_bytes()));
    exercise(&req);

    // What the server answers must satisfy the client that sent this request.
    let mut response = Response::accept();
    if let Some(p) = req.protocols().first() {
        response = response.with_protocol(p.clone());
    }
    let mut wire = Vec::new();
    response.write(req.key(), &mut wire);
    let (parsed, n) = ResponseParser::default()
        .parse(&wire)
        .expect("our own 101 response does not parse")
        .expect("our own 101 response is incomplete");
    assert_eq!((n, parsed.status()), (wire.len(), 101));
    let client = ClientRequest { protocols: req.protocols().to_vec(), ..Default::default() };
    if let Err(e) = parsed.validate(req.key(), &client) {
        panic!("the client rejects the server's own 101 response: {e:?}\nprotocols {:?}", req.protocols());
    }
});
