//! Close frames: status codes and reasons (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::protocol::message::Utf8Bytes;

/// A close status code (RFC 6455 §7.4).
///
/// Any `u16` can be represented; [`is_sendable`](Self::is_sendable) tells whether a code may appear
/// in a close frame on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection was closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message's data was inconsistent with its type (invalid UTF-8 in a text message).
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: the message violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message is too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition (for example a handler panic).
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting (IANA registry).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway (IANA registry).
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: TLS handshake failure (never sent on the wire).
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether this code may be sent in (and accepted from) a close frame: 1000-1003, 1007-1014
    /// and 3000-4999.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(c: u16) -> Self {
        CloseCode(c)
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> Self {
        c.0
    }
}

/// The longest close reason that fits a control frame (125 bytes minus the 2-byte code).
pub const MAX_REASON_LEN: usize = 123;

/// The parsed payload of a close frame: a status code and a UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, at most [`MAX_REASON_LEN`] bytes of UTF-8.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// Parse a close frame's (unmasked) payload.
    ///
    /// An empty payload is a close without a status (`Ok(None)`, reported to handlers as 1005). A
    /// 1-byte payload, a code that may not be sent, or a reason that is not UTF-8 is an error.
    pub fn parse(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::InvalidClosePayload),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_sendable() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// Append the close payload (code and reason) to `dst`.
    ///
    /// A reason longer than [`MAX_REASON_LEN`] bytes is cut at the last character boundary that fits.
    pub fn write_payload(code: CloseCode, reason: &str, dst: &mut BytesMut) {
        dst.put_u16(code.0);
        dst.extend_from_slice(truncate_reason(reason).as_bytes());
    }
}

/// `reason`, cut to at most [`MAX_REASON_LEN`] bytes at a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_follow_rfc_6455_section_7_4() {
        for c in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(c).is_sendable(), "{c} must be sendable");
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(c).is_sendable(), "{c} must not be sendable");
        }
    }

    #[test]
    fn parse_empty_is_no_status() {
        assert_eq!(CloseFrame::parse(Bytes::new()), Ok(None));
    }

    #[test]
    fn parse_one_byte_fails() {
        assert_eq!(CloseFrame::parse(Bytes::from_static(&[3])), Err(ProtocolError::InvalidClosePayload));
    }

    #[test]
    fn parse_code_and_reason() {
        let f = CloseFrame::parse(Bytes::from_static(b"\x03\xe8bye \xc3\xa9")).unwrap().unwrap();
        assert_eq!(f.code, CloseCode::NORMAL);
        assert_eq!(&*f.reason, "bye é");
    }

    #[test]
    fn parse_rejects_unsendable_code() {
        assert_eq!(CloseFrame::parse(Bytes::from_static(&[0x03, 0xed])), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(CloseFrame::parse(Bytes::from_static(&[0x13, 0x88])), Err(ProtocolError::InvalidCloseCode(5000)));
    }

    #[test]
    fn parse_rejects_invalid_utf8_reason() {
        assert_eq!(CloseFrame::parse(Bytes::from_static(b"\x03\xe8\xff")), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn write_payload_truncates_reason_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut dst = BytesMut::new();
        CloseFrame::write_payload(CloseCode::GOING_AWAY, &reason, &mut dst);
        assert!(dst.len() <= 125);
        assert_eq!(dst.len(), 2 + 122);
        let parsed = CloseFrame::parse(dst.freeze()).unwrap().unwrap();
        assert_eq!(parsed.code, CloseCode::GOING_AWAY);
        assert_eq!(parsed.reason.len(), 122);
    }
}
