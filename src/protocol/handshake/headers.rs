//! Header values of the opening handshake: token lists, the accept key, extension offers.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 §1.3 appends to the client's key.
pub const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    BASE64.encode(sha.finalize())
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: base64 that decodes to exactly 16 bytes.
pub fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes encode to 24 characters with "==" padding; decode into a fixed buffer, never an
    // allocation sized by the peer.
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(BASE64.decode_slice(key, &mut out), Ok(16))
}

/// A fresh `Sec-WebSocket-Key` from 16 random bytes.
pub fn encode_key(nonce: &[u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// Iterate over the comma-separated elements of a header value, trimmed, skipping empty ones
/// (RFC 7230 §7 list syntax).
pub fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|s| s.trim_matches(|c| c == ' ' || c == '\t')).filter(|s| !s.is_empty())
}

/// Whether a comma-separated header value contains `token`, compared case-insensitively
/// (as `Connection: keep-alive, Upgrade` must match "upgrade").
pub fn contains_token(value: &str, token: &str) -> bool {
    list_elements(value).any(|e| e.eq_ignore_ascii_case(token))
}

/// One extension offered in `Sec-WebSocket-Extensions` (RFC 6455 §9.1), with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, such as `permessage-deflate`.
    pub name: String,
    /// Its parameters, in order: name and optional value (quotes removed).
    pub params: Vec<(String, Option<String>)>,
}

impl ExtensionOffer {
    /// The value of parameter `name`: `None` if absent, `Some(None)` if present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }
}

impl std::fmt::Display for ExtensionOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, "; {n}={v}")?,
                None => write!(f, "; {n}")?,
            }
        }
        Ok(())
    }
}

/// Parse a `Sec-WebSocket-Extensions` value into offers. Malformed elements are skipped (a server
/// simply does not accept what it cannot read).
pub fn parse_extensions(value: &str) -> Vec<ExtensionOffer> {
    let mut out = Vec::new();
    for element in list_elements(value) {
        let mut parts = element.split(';').map(str::trim);
        let name = match parts.next() {
            Some(n) if !n.is_empty() && is_token(n) => n.to_string(),
            _ => continue,
        };
        let mut params = Vec::new();
        let mut ok = true;
        for p in parts {
            if p.is_empty() {
                continue;
            }
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"').to_string())),
                None => (p, None),
            };
            if !is_token(k) {
                ok = false;
                break;
            }
            params.push((k.to_string(), v));
        }
        if ok {
            out.push(ExtensionOffer { name, params });
        }
    }
    out
}

/// Whether `s` is an HTTP token (RFC 7230 §3.2.6).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` may be written as a header value (no CR, LF or other control characters except tab).
pub fn is_valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Limits on the size of an HTTP head (request or response line plus headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes in the head, up to and including the blank line (default 8 KiB).
    pub max_bytes: usize,
    /// Most header fields (default 64).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { max_bytes: 8 * 1024, max_headers: 64 }
    }
}

/// Finds the end of an HTTP head in a buffer that grows by appends, looking at each byte only once
/// (re-scanning the whole buffer on every packet is a CPU DoS, RUSTSEC-2023-0065).
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// The length of the head (through the blank line) once `buf` contains it; `Ok(None)` while
    /// more bytes are needed; an error once the head exceeds `limits.max_bytes`.
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, crate::error::HandshakeError> {
        let start = self.scanned.saturating_sub(3);
        let end = buf.len().min(limits.max_bytes.saturating_add(1));
        if let Some(pos) = buf[start.min(end)..end].windows(4).position(|w| w == b"\r\n\r\n") {
            let head_len = start + pos + 4;
            if head_len > limits.max_bytes {
                return Err(crate::error::HandshakeError::HeadersTooLarge { max: limits.max_bytes });
            }
            return Ok(Some(head_len));
        }
        if buf.len() > limits.max_bytes {
            return Err(crate::error::HandshakeError::HeadersTooLarge { max: limits.max_bytes });
        }
        self.scanned = buf.len();
        Ok(None)
    }
}

/// Run `f` with httparse's header array for at most `max` fields: on the stack up to 64 (the
/// default limit), on the heap above. The caller supplying the array is what bounds the number of
/// headers by construction.
pub(crate) fn with_header_array<'b, R>(max: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> R) -> R {
    let mut stack: [httparse::Header<'b>; 64] = [httparse::EMPTY_HEADER; 64];
    if max <= stack.len() {
        f(&mut stack[..max])
    } else {
        f(&mut vec![httparse::EMPTY_HEADER; max])
    }
}

/// Map httparse's verdict on a complete head (`what`: "request" or "response") to ours.
pub(crate) fn head_status(
    r: Result<httparse::Status<usize>, httparse::Error>,
    max_headers: usize,
    what: &'static str,
) -> Result<(), crate::error::HandshakeError> {
    use crate::error::HandshakeError;
    match r {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(HandshakeError::MalformedHttp(if what == "request" {
            "truncated request head"
        } else {
            "truncated response head"
        })),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders { max: max_headers }),
        Err(_) => Err(HandshakeError::MalformedHttp(if what == "request" {
            "invalid request head"
        } else {
            "invalid response head"
        })),
    }
}

/// Header fields as received: names as sent, values as raw bytes.
///
/// All names and values live in one buffer, with one range per field, so copying a request's
/// headers out of the read buffer costs two allocations however many fields there are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Per field: name start, name end, value end (the value starts at name end).
    fields: Vec<(u32, u32, u32)>,
}

impl Headers {
    /// Copy the fields httparse found.
    pub(crate) fn from_httparse(h: &[httparse::Header<'_>]) -> Self {
        let total = h.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut out = Headers { bytes: Vec::with_capacity(total), fields: Vec::with_capacity(h.len()) };
        for f in h {
            let start = out.bytes.len() as u32;
            out.bytes.extend_from_slice(f.name.as_bytes());
            let name_end = out.bytes.len() as u32;
            out.bytes.extend_from_slice(f.value);
            out.fields.push((start, name_end, out.bytes.len() as u32));
        }
        out
    }

    fn field(&self, f: &(u32, u32, u32)) -> (&str, &[u8]) {
        let (s, n, v) = (f.0 as usize, f.1 as usize, f.2 as usize);
        // Names are HTTP tokens (httparse checked), hence ASCII.
        (std::str::from_utf8(&self.bytes[s..n]).unwrap_or(""), &self.bytes[n..v])
    }

    /// The first value of header `name` (case-insensitive), if it is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name` (case-insensitive), as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// Every UTF-8 value of header `name`, in order (for headers that may repeat).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name).filter_map(|v| std::str::from_utf8(v).ok())
    }

    /// How many times header `name` appears.
    pub fn count(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// The values of header `name`, compared as bytes (names are ASCII tokens, so no UTF-8 check
    /// is needed to find them).
    fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields.iter().filter_map(move |&(s, n, v)| {
            let (s, n, v) = (s as usize, n as usize, v as usize);
            self.bytes[s..n].eq_ignore_ascii_case(name.as_bytes()).then(|| &self.bytes[n..v])
        })
    }

    /// Every field, as (name, value bytes), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|f| self.field(f))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Append `Name: value\r\n` for each extra header, skipping any whose name is not a token or whose
/// value contains CR/LF (header injection). Returns the number skipped.
pub fn write_extra_headers(dst: &mut Vec<u8>, headers: &[(String, String)]) -> usize {
    let mut skipped = 0;
    for (n, v) in headers {
        if !is_token(n) || !is_valid_header_value(v) {
            skipped += 1;
            continue;
        }
        dst.extend_from_slice(n.as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(v.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_section_1_3_accept_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn key_must_decode_to_16_bytes() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ")); // unpadded
        assert!(!is_valid_key(b"c2hvcnQ=")); // 5 bytes
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZSE=")); // 17 bytes
        assert!(!is_valid_key(b"!!!!!!!!!!!!!!!!!!!!!!=="));
        assert!(!is_valid_key(b""));
        assert!(is_valid_key(encode_key(&[0xab; 16]).as_bytes()));
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        assert!(contains_token("keep-alive, Upgrade", "upgrade"));
        assert!(contains_token("UPGRADE", "upgrade"));
        assert!(!contains_token("upgrades", "upgrade"));
        assert!(contains_token(" , websocket ,", "WebSocket"));
    }

    #[test]
    fn extension_offers_with_params() {
        let offers = parse_extensions("permessage-deflate; client_max_window_bits, x-foo; a=1; b=\"two\", bad name");
        assert_eq!(offers.len(), 2);
        assert_eq!(offers[0].name, "permessage-deflate");
        assert_eq!(offers[0].param("client_max_window_bits"), Some(None));
        assert_eq!(offers[1].param("a"), Some(Some("1")));
        assert_eq!(offers[1].param("b"), Some(Some("two")));
        assert_eq!(offers[1].param("c"), None);
        assert_eq!(offers[1].to_string(), "x-foo; a=1; b=two");
    }

    #[test]
    fn head_scanner_finds_end_across_appends() {
        let limits = HeadLimits::default();
        let mut sc = HeadScanner::default();
        let msg = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        for i in 0..msg.len() - 4 {
            assert_eq!(sc.scan(&msg[..i], &limits).unwrap(), None, "prefix {i}");
        }
        assert_eq!(sc.scan(msg, &limits).unwrap(), Some(msg.len() - 4));
    }

    #[test]
    fn head_scanner_enforces_byte_limit() {
        let limits = HeadLimits { max_bytes: 16, max_headers: 4 };
        let mut sc = HeadScanner::default();
        assert!(sc.scan(&[b'a'; 16], &limits).unwrap().is_none());
        assert!(sc.scan(&[b'a'; 17], &limits).is_err());
        let mut sc = HeadScanner::default();
        assert!(sc.scan(b"GET / HTTP/1.1\r\n\r\n", &limits).is_err(), "18-byte head over a 16-byte limit");
    }

    #[test]
    fn headers_lookup_is_case_insensitive() {
        let raw = [httparse::Header { name: "X-A", value: b"1" }, httparse::Header { name: "x-a", value: b"2" }];
        let h = Headers::from_httparse(&raw);
        assert_eq!(h.get("x-A"), Some("1"));
        assert_eq!(h.get_all("X-A").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(h.count("x-a"), 2);
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.len(), 2);
        assert_eq!(
            h.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect::<Vec<_>>(),
            vec![("X-A".to_string(), b"1".to_vec()), ("x-a".to_string(), b"2".to_vec())]
        );
        assert_eq!(h.get_bytes("X-a"), Some(&b"1"[..]));
    }

    #[test]
    fn extra_headers_reject_injection() {
        let mut out = Vec::new();
        let skipped = write_extra_headers(
            &mut out,
            &[
                ("Set-Cookie".into(), "a=b".into()),
                ("Bad".into(), "x\r\nEvil: 1".into()),
                ("Bad Name".into(), "v".into()),
            ],
        );
        assert_eq!(skipped, 2);
        assert_eq!(out, b"Set-Cookie: a=b\r\n");
    }

    #[test]
    fn header_value_validation() {
        assert!(is_valid_header_value("a b\tc"));
        assert!(!is_valid_header_value("a\r\nInjected: 1"));
    }
}
