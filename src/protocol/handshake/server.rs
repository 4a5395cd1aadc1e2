//! The server side of the opening handshake (RFC 6455 §4.2): parse and validate the client's
//! request, then answer with `101 Switching Protocols` or an HTTP error.

use crate::error::HandshakeError;
use crate::protocol::handshake::headers::{
    accept_key, contains_token, head_status, is_valid_header_value, is_valid_key, list_elements, parse_extensions,
    with_header_array, write_extra_headers, ExtensionOffer, HeadLimits, HeadScanner, Headers,
};

/// A validated WebSocket upgrade request, as a server's handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    resource: String,
    headers: Headers,
    key: String,
    protocols: Vec<String>,
    extensions: Vec<ExtensionOffer>,
}

impl Request {
    /// The request target as sent: path and query, such as `/chat?room=1`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.resource.split_once('?').map_or(&self.resource, |(p, _)| p)
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.resource.split_once('?').map(|(_, q)| q)
    }

    /// The value of query parameter `name` (first occurrence, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if kv == name => Some(""),
            _ => None,
        })
    }

    /// Every header field.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The `Host` header.
    pub fn host(&self) -> &str {
        self.headers.get("host").unwrap_or("")
    }

    /// The `Origin` header, sent by browsers (check it to stop cross-site WebSocket hijacking).
    pub fn origin(&self) -> Option<&str> {
        self.headers.get("origin")
    }

    /// Every cookie from the `Cookie` header(s), as (name, value).
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.get_all("cookie").flat_map(|v| v.split(';')).filter_map(|c| {
            let (n, v) = c.trim().split_once('=')?;
            Some((n.trim(), v.trim().trim_matches('"')))
        })
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), in its order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The extensions the client offers (`Sec-WebSocket-Extensions`), with their parameters.
    pub fn extensions(&self) -> &[ExtensionOffer] {
        &self.extensions
    }

    /// The client's `Sec-WebSocket-Key`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Parses the upgrade request incrementally, scanning each byte once, within [`HeadLimits`].
#[derive(Debug, Clone, Default)]
pub struct RequestParser {
    scanner: HeadScanner,
    limits: HeadLimits,
}

impl RequestParser {
    /// A parser with these limits.
    pub fn new(limits: HeadLimits) -> Self {
        RequestParser { scanner: HeadScanner::default(), limits }
    }

    /// Parse and validate the request at the start of `buf` (which grows as bytes arrive).
    ///
    /// Returns the request and the length of its head once it is complete, `Ok(None)` while more
    /// bytes are needed, or the error whose [`http_status`](HandshakeError::http_status) the server
    /// answers with. Bytes after the head (a client may pipeline its first frames) are left alone.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
        let Some(head_len) = self.scanner.scan(buf, &self.limits)? else {
            return Ok(None);
        };
        let max = self.limits.max_headers;
        let request = with_header_array(max, |storage| {
            let mut req = httparse::Request::new(storage);
            head_status(req.parse(&buf[..head_len]), max, "request")?;
            validate(&req)
        })?;
        Ok(Some((request, head_len)))
    }
}

fn validate(req: &httparse::Request<'_, '_>) -> Result<Request, HandshakeError> {
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let headers = Headers::from_httparse(req.headers);
    if headers.count("host") != 1 {
        return Err(HandshakeError::MissingOrInvalidHeader("Host"));
    }
    if !headers.get_all("upgrade").any(|v| contains_token(v, "websocket")) {
        return Err(HandshakeError::MissingOrInvalidHeader("Upgrade"));
    }
    if !headers.get_all("connection").any(|v| contains_token(v, "upgrade")) {
        return Err(HandshakeError::MissingOrInvalidHeader("Connection"));
    }
    if headers.count("sec-websocket-version") != 1 || headers.get("sec-websocket-version").map(str::trim) != Some("13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match (headers.count("sec-websocket-key"), headers.get("sec-websocket-key")) {
        (1, Some(k)) if is_valid_key(k.trim().as_bytes()) => k.trim().to_string(),
        _ => return Err(HandshakeError::InvalidKey),
    };
    let protocols = headers.get_all("sec-websocket-protocol").flat_map(list_elements).map(str::to_string).collect();
    let extensions = headers.get_all("sec-websocket-extensions").flat_map(parse_extensions).collect();
    Ok(Request { resource: req.path.unwrap_or("/").to_string(), headers, key, protocols, extensions })
}

/// How a server accepts a request: the `101` response's choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    protocol: Option<String>,
    extensions: Option<String>,
    headers: Vec<(String, String)>,
}

impl Response {
    /// Accept with no subprotocol and no extra headers.
    pub fn accept() -> Self {
        Self::default()
    }

    /// Select `protocol` as the subprotocol. It should be one the client offered
    /// ([`Request::protocols`]); a client rejects any other.
    pub fn with_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// Add a header to the `101` response (for example `Set-Cookie`). Headers whose name is not an
    /// HTTP token or whose value contains CR/LF are dropped (and logged), never sent.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The accepted `Sec-WebSocket-Extensions` value (set by extension negotiation).
    pub fn with_extensions(mut self, value: impl Into<String>) -> Self {
        self.extensions = Some(value.into());
        self
    }

    /// The selected subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extra headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Append the `101 Switching Protocols` response for `key` to `dst`.
    pub fn write(&self, key: &str, dst: &mut Vec<u8>) {
        dst.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        dst.extend_from_slice(accept_key(key.as_bytes()).as_bytes());
        dst.extend_from_slice(b"\r\n");
        if let Some(p) = self.protocol.as_deref().filter(|p| is_valid_header_value(p)) {
            dst.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            dst.extend_from_slice(p.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        if let Some(e) = self.extensions.as_deref().filter(|e| is_valid_header_value(e)) {
            dst.extend_from_slice(b"Sec-WebSocket-Extensions: ");
            dst.extend_from_slice(e.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        if write_extra_headers(dst, &self.headers) > 0 {
            log::warn!("dropped invalid extra header(s) from a 101 response");
        }
        dst.extend_from_slice(b"\r\n");
    }
}

/// How a server refuses a request: an HTTP status (4xx or 5xx), headers and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Rejection {
    /// Refuse with `status` (values outside 400-599 become 500), an empty body, no extra headers.
    pub fn new(status: u16) -> Self {
        let status = if (400..=599).contains(&status) { status } else { 500 };
        Rejection { status, headers: Vec::new(), body: Vec::new() }
    }

    /// The response body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// An extra response header (dropped if it is not a valid name and value).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The response for a handshake error: its status, the headers RFC 6455 asks for (426 carries
    /// `Sec-WebSocket-Version: 13`), and the error's text as the body.
    pub fn from_error(e: &HandshakeError) -> Self {
        let mut r = Rejection::new(e.http_status()).with_body(e.to_string());
        match e {
            HandshakeError::UnsupportedVersion => r = r.with_header("Sec-WebSocket-Version", "13"),
            HandshakeError::MethodNotAllowed => r = r.with_header("Allow", "GET"),
            _ => {}
        }
        r
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Append the whole HTTP response to `dst`. The connection is closed after it.
    pub fn write(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status)).as_bytes());
        write_extra_headers(dst, &self.headers);
        dst.extend_from_slice(
            format!(
                "Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        dst.extend_from_slice(&self.body);
    }
}

/// The standard reason phrase for an HTTP status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        s if (400..500).contains(&s) => "Client Error",
        _ => "Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat?room=1&x HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Cookie: session=abc; theme=\"dark\"\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
        RequestParser::default().parse(buf)
    }

    #[test]
    fn parses_the_rfc_example_request() {
        let (req, n) = parse(RFC_REQUEST).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1&x"));
        assert_eq!(req.query_param("room"), Some("1"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.host(), "server.example.com");
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.protocols(), ["chat", "superchat"]);
        assert_eq!(req.extensions()[0].name, "permessage-deflate");
        assert_eq!(req.cookie("session"), Some("abc"));
        assert_eq!(req.cookie("theme"), Some("dark"));
        assert_eq!(req.key(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn incremental_parse_byte_by_byte() {
        let mut p = RequestParser::default();
        for i in 0..RFC_REQUEST.len() {
            assert_eq!(p.parse(&RFC_REQUEST[..i]).unwrap(), None);
        }
        assert!(p.parse(RFC_REQUEST).unwrap().is_some());
    }

    #[test]
    fn leaves_pipelined_bytes() {
        let mut buf = RFC_REQUEST.to_vec();
        buf.extend_from_slice(&[0x81, 0x80]);
        let (_, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(&buf[n..], &[0x81, 0x80]);
    }

    fn with(replace: &str, by: &str) -> Vec<u8> {
        String::from_utf8(RFC_REQUEST.to_vec()).unwrap().replacen(replace, by, 1).into_bytes()
    }

    #[test]
    fn validation_errors_and_their_status() {
        let cases: &[(&str, &str, HandshakeError)] = &[
            ("GET ", "POST ", HandshakeError::MethodNotAllowed),
            ("HTTP/1.1", "HTTP/1.0", HandshakeError::UnsupportedHttpVersion),
            ("Host: server.example.com\r\n", "", HandshakeError::MissingOrInvalidHeader("Host")),
            ("Upgrade: websocket", "Upgrade: h2c", HandshakeError::MissingOrInvalidHeader("Upgrade")),
            ("Connection: Upgrade", "Connection: keep-alive", HandshakeError::MissingOrInvalidHeader("Connection")),
            ("Version: 13", "Version: 8", HandshakeError::UnsupportedVersion),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", HandshakeError::InvalidKey),
        ];
        for (from, to, expect) in cases {
            let buf = with(from, to);
            assert_eq!(parse(&buf).unwrap_err(), *expect, "{from} -> {to}");
        }
        assert_eq!(HandshakeError::UnsupportedVersion.http_status(), 426);
    }

    #[test]
    fn token_matching_is_case_insensitive_and_list_aware() {
        let buf = with("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
        let buf = String::from_utf8(buf).unwrap().replace("Upgrade: websocket", "upgrade: WebSocket");
        assert!(parse(buf.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let e = parse(&buf).unwrap_err();
        assert_eq!(e, HandshakeError::TooManyHeaders { max: 64 });
        assert_eq!(e.http_status(), 431);
    }

    #[test]
    fn header_limit_above_64_uses_a_heap_array() {
        let mut buf = String::from_utf8(RFC_REQUEST.to_vec()).unwrap();
        let extra: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
        buf = buf.replacen("Host:", &format!("{extra}Host:"), 1);
        let mut p = RequestParser::new(HeadLimits { max_bytes: 64 * 1024, max_headers: 100 });
        let (req, _) = p.parse(buf.as_bytes()).unwrap().unwrap();
        assert_eq!(req.headers().len(), 89);
        assert_eq!(req.header("x-79"), Some("v"));
        let mut p = RequestParser::new(HeadLimits { max_bytes: 64 * 1024, max_headers: 88 });
        assert_eq!(p.parse(buf.as_bytes()).unwrap_err(), HandshakeError::TooManyHeaders { max: 88 });
    }

    #[test]
    fn oversized_head_is_431_without_waiting_for_the_end() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.extend(std::iter::repeat_n(b'a', 9000));
        let e = parse(&buf).unwrap_err();
        assert_eq!(e.http_status(), 431);
    }

    #[test]
    fn garbage_is_400() {
        let e = parse(b"\x16\x03\x01\x02\x00\r\n\r\n").unwrap_err();
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn accept_response_has_rfc_accept_and_choices() {
        let mut out = Vec::new();
        Response::accept()
            .with_protocol("chat")
            .with_header("Set-Cookie", "id=1")
            .write("dGhlIHNhbXBsZSBub25jZQ==", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(s.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(s.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(s.contains("Set-Cookie: id=1\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn rejection_response() {
        let mut out = Vec::new();
        Rejection::new(403).with_body("go away").with_header("X-Why", "test").write(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(s.contains("X-Why: test\r\n"));
        assert!(s.contains("Content-Length: 7\r\n"));
        assert!(s.ends_with("\r\n\r\ngo away"));
        assert_eq!(Rejection::new(200).status(), 500);
        let mut out = Vec::new();
        Rejection::from_error(&HandshakeError::UnsupportedVersion).write(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n"));
    }
}
