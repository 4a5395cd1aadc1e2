//! The client side of the opening handshake (RFC 6455 §4.1): the URL, the request, and the
//! validation of the server's response.

use crate::error::HandshakeError;
use crate::protocol::handshake::headers::{
    accept_key, contains_token, head_status, list_elements, parse_extensions, with_header_array, write_extra_headers,
    ExtensionOffer, HeadLimits, HeadScanner, Headers,
};

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 when the URL names none).
    pub port: u16,
    /// Path and query, at least `/`.
    pub resource: String,
}

impl WsUrl {
    /// Parse `ws://host[:port][/path][?query]`. `wss://` is refused: wsloop has no TLS of its own
    /// (put a TLS-terminating proxy in front, or drive the protocol core over your own stream).
    pub fn parse(url: &str) -> Result<WsUrl, HandshakeError> {
        let bad = || HandshakeError::InvalidUrl(url.to_string());
        let rest = if let Some(r) = strip_prefix_ignore_case(url, "ws://") {
            r
        } else if strip_prefix_ignore_case(url, "wss://").is_some() {
            return Err(HandshakeError::InvalidUrl(format!("{url} (wss:// needs TLS, which wsloop does not provide)")));
        } else {
            return Err(bad());
        };
        let (authority, resource) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let resource = resource.split('#').next().unwrap_or("/");
        let resource = if resource.starts_with('?') { format!("/{resource}") } else { resource.to_string() };
        let resource = if resource.is_empty() { "/".to_string() } else { resource };
        if authority.contains('@') || resource.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => 80,
                p => p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || host.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"-._:~%".contains(&b))) {
            return Err(bad());
        }
        Ok(WsUrl { host, port, resource })
    }

    /// The `Host` header value: the host, bracketed if IPv6, with the port unless it is 80.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// What a client asks for in its upgrade request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRequest {
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// Extension offers (`Sec-WebSocket-Extensions` elements, such as `permessage-deflate`).
    pub extensions: Vec<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// Extra headers (cookies, authorization, ...).
    pub headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// Append the GET upgrade request for `url` with `key` to `dst`.
    pub fn write(&self, url: &WsUrl, key: &str, dst: &mut Vec<u8>) {
        dst.extend_from_slice(b"GET ");
        dst.extend_from_slice(url.resource.as_bytes());
        dst.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        dst.extend_from_slice(url.host_header().as_bytes());
        dst.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
        dst.extend_from_slice(key.as_bytes());
        dst.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
        let mut extra = Vec::new();
        if let Some(o) = &self.origin {
            extra.push(("Origin".to_string(), o.clone()));
        }
        if !self.protocols.is_empty() {
            extra.push(("Sec-WebSocket-Protocol".to_string(), self.protocols.join(", ")));
        }
        if !self.extensions.is_empty() {
            extra.push(("Sec-WebSocket-Extensions".to_string(), self.extensions.join(", ")));
        }
        extra.extend(self.headers.iter().cloned());
        if write_extra_headers(dst, &extra) > 0 {
            log::warn!("dropped invalid header(s) from a client upgrade request");
        }
        dst.extend_from_slice(b"\r\n");
    }
}

/// The server's answer to the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerResponse {
    status: u16,
    headers: Headers,
    protocol: Option<String>,
    extensions: Vec<ExtensionOffer>,
}

impl ServerResponse {
    /// The HTTP status (101 when the upgrade succeeded).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header field.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The subprotocol the server selected.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extensions the server accepted.
    pub fn extensions(&self) -> &[ExtensionOffer] {
        &self.extensions
    }

    /// The body length announced by `Content-Length` (for reading a rejection's body).
    pub fn content_length(&self) -> Option<usize> {
        self.headers.get("content-length").and_then(|v| v.trim().parse().ok())
    }

    /// Check a `101` response against what was sent: `Upgrade`, `Connection`, the accept key, and
    /// that the subprotocol and extensions are ones we offered (RFC 6455 §4.1, steps 1-6).
    pub fn validate(&self, key: &str, request: &ClientRequest) -> Result<(), HandshakeError> {
        if !self.headers.get_all("upgrade").any(|v| contains_token(v, "websocket")) {
            return Err(HandshakeError::MissingOrInvalidHeader("Upgrade"));
        }
        if !self.headers.get_all("connection").any(|v| contains_token(v, "upgrade")) {
            return Err(HandshakeError::MissingOrInvalidHeader("Connection"));
        }
        // Exactly one accept key (a repeated field is invalid, RFC 7230 §3.2.2), and the right one.
        match (self.headers.count("sec-websocket-accept"), self.headers.get("sec-websocket-accept")) {
            (1, Some(a)) if a.trim() == accept_key(key.as_bytes()) => {}
            _ => return Err(HandshakeError::AcceptMismatch),
        }
        if let Some(p) = &self.protocol {
            if !request.protocols.iter().any(|o| o == p) {
                return Err(HandshakeError::UnexpectedSubprotocol(p.clone()));
            }
        }
        for e in &self.extensions {
            let offered = request
                .extensions
                .iter()
                .flat_map(|o| parse_extensions(o))
                .any(|o| o.name.eq_ignore_ascii_case(&e.name));
            if !offered {
                return Err(HandshakeError::UnexpectedExtension(e.name.clone()));
            }
        }
        Ok(())
    }
}

/// Parses the server's response head incrementally, within [`HeadLimits`].
#[derive(Debug, Clone, Default)]
pub struct ResponseParser {
    scanner: HeadScanner,
    limits: HeadLimits,
}

impl ResponseParser {
    /// A parser with these limits.
    pub fn new(limits: HeadLimits) -> Self {
        ResponseParser { scanner: HeadScanner::default(), limits }
    }

    /// Parse the response head at the start of `buf`: the response and the head's length, or
    /// `Ok(None)` while more bytes are needed. Frames the server sends right after the head are
    /// left in `buf` after that length.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(ServerResponse, usize)>, HandshakeError> {
        let Some(head_len) = self.scanner.scan(buf, &self.limits)? else {
            return Ok(None);
        };
        let max = self.limits.max_headers;
        let response = with_header_array(max, |storage| {
            let mut resp = httparse::Response::new(storage);
            head_status(resp.parse(&buf[..head_len]), max, "response")?;
            let headers = Headers::from_httparse(resp.headers);
            let protocol = headers.get_all("sec-websocket-protocol").flat_map(list_elements).next().map(str::to_string);
            let extensions = headers.get_all("sec-websocket-extensions").flat_map(parse_extensions).collect();
            Ok::<_, HandshakeError>(ServerResponse { status: resp.code.unwrap_or(0), headers, protocol, extensions })
        })?;
        Ok(Some((response, head_len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = WsUrl::parse("ws://example.com/chat?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.resource.as_str()), ("example.com", 80, "/chat?x=1"));
        assert_eq!(u.host_header(), "example.com");
        let u = WsUrl::parse("WS://127.0.0.1:9001").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.resource.as_str()), ("127.0.0.1", 9001, "/"));
        assert_eq!(u.host_header(), "127.0.0.1:9001");
        let u = WsUrl::parse("ws://[::1]:9001/a#frag").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.resource.as_str()), ("::1", 9001, "/a"));
        assert_eq!(u.host_header(), "[::1]:9001");
        let u = WsUrl::parse("ws://h?q").unwrap();
        assert_eq!(u.resource, "/?q");
        for bad in ["http://x/", "ws://", "ws://h:99999/", "ws://user@h/", "ws://h/a b", "ws://[::1/", "wss://h/"] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_has_required_headers() {
        let url = WsUrl::parse("ws://h:1/p").unwrap();
        let req = ClientRequest {
            protocols: vec!["a".into(), "b".into()],
            extensions: vec!["x-ext".into()],
            origin: Some("http://o".into()),
            headers: vec![("Cookie".into(), "s=1".into())],
        };
        let mut out = Vec::new();
        req.write(&url, "dGhlIHNhbXBsZSBub25jZQ==", &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("GET /p HTTP/1.1\r\nHost: h:1\r\n"));
        for h in [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            "Origin: http://o",
            "Sec-WebSocket-Protocol: a, b",
            "Sec-WebSocket-Extensions: x-ext",
            "Cookie: s=1",
        ] {
            assert!(s.contains(&format!("{h}\r\n")), "{h}");
        }
        // Our own server-side parser accepts it.
        let (parsed, _) = crate::protocol::handshake::server::RequestParser::default().parse(&out).unwrap().unwrap();
        assert_eq!(parsed.protocols(), ["a", "b"]);
    }

    fn response(extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn parse_validate(buf: &[u8], req: &ClientRequest) -> Result<ServerResponse, HandshakeError> {
        let (r, n) = ResponseParser::default().parse(buf)?.unwrap();
        assert_eq!(n, buf.len());
        r.validate("dGhlIHNhbXBsZSBub25jZQ==", req)?;
        Ok(r)
    }

    #[test]
    fn valid_response_with_offered_protocol() {
        let req = ClientRequest { protocols: vec!["chat".into()], ..Default::default() };
        let r = parse_validate(&response("Sec-WebSocket-Protocol: chat\r\n"), &req).unwrap();
        assert_eq!(r.status(), 101);
        assert_eq!(r.protocol(), Some("chat"));
    }

    #[test]
    fn invalid_responses() {
        let req = ClientRequest::default();
        let bad_accept = String::from_utf8(response("")).unwrap().replace("s3pP", "AAAA");
        assert_eq!(parse_validate(bad_accept.as_bytes(), &req).unwrap_err(), HandshakeError::AcceptMismatch);
        assert_eq!(
            parse_validate(&response("Sec-WebSocket-Protocol: x\r\n"), &req).unwrap_err(),
            HandshakeError::UnexpectedSubprotocol("x".into())
        );
        assert_eq!(
            parse_validate(&response("Sec-WebSocket-Extensions: permessage-deflate\r\n"), &req).unwrap_err(),
            HandshakeError::UnexpectedExtension("permessage-deflate".into())
        );
        let no_upgrade = String::from_utf8(response("")).unwrap().replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            parse_validate(no_upgrade.as_bytes(), &req).unwrap_err(),
            HandshakeError::MissingOrInvalidHeader("Upgrade")
        );
    }

    #[test]
    fn rejection_status_and_length_are_visible() {
        let buf = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope";
        let (r, n) = ResponseParser::default().parse(buf).unwrap().unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.content_length(), Some(4));
        assert_eq!(&buf[n..], b"nope");
    }
}
