//! Messages: the unit handlers send and receive at the message level.
//!
//! Payloads are [`Bytes`], so a received message can be kept, sliced, echoed or broadcast without
//! copying. Text is [`Utf8Bytes`]: bytes that are known to be valid UTF-8 and dereference to `str`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// Immutable, reference-counted bytes that are guaranteed to be valid UTF-8.
///
/// Cloning is cheap (a reference count). Dereferences to `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Utf8Bytes(Bytes::new())
    }

    /// A string from a `&'static str`, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    /// Wrap bytes that the caller has already validated.
    ///
    /// Validation is repeated in debug builds; in release builds it is trusted, because the protocol
    /// core validates text incrementally as it arrives and must not pay for it twice.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// The text as `&str`.
    pub fn as_str(&self) -> &str {
        // The invariant of this type is that the bytes are valid UTF-8; a checked conversion keeps
        // this free of `unsafe`. `from_utf8` on ASCII runs at memory speed, and handlers that need
        // zero-cost access can use `as_bytes`.
        match std::str::from_utf8(&self.0) {
            Ok(s) => s,
            Err(_) => unreachable!("Utf8Bytes holds valid UTF-8 by construction"),
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Convert into the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Utf8Bytes {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;
    fn try_from(b: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&b)?;
        Ok(Utf8Bytes(b))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The two kinds of data message (RFC 6455 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// UTF-8 text (opcode 0x1).
    Text,
    /// Binary data (opcode 0x2).
    Binary,
}

/// A complete data message.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Message {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }

    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes, of either kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The payload, of either kind, as `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) if t.len() <= 64 => write!(f, "Text({:?})", t.as_str()),
            Message::Text(t) => write!(f, "Text(<{} bytes>)", t.len()),
            Message::Binary(b) if b.len() <= 32 => write!(f, "Binary({:?})", &b[..]),
            Message::Binary(b) => write!(f, "Binary(<{} bytes>)", b.len()),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(s: Utf8Bytes) -> Self {
        Message::Text(s)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8bytes_rejects_invalid() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(b"ok \xe2\x82\xac")).is_ok());
        assert!(Utf8Bytes::try_from(Bytes::from_static(b"\xc0\xaf")).is_err());
    }

    #[test]
    fn message_conversions() {
        let m: Message = "héllo".into();
        assert!(m.is_text());
        assert_eq!(m.as_text(), Some("héllo"));
        assert_eq!(m.len(), 6);
        let b: Message = vec![1u8, 2, 3].into();
        assert_eq!(b.kind(), MessageKind::Binary);
        assert_eq!(b.as_bytes(), &[1, 2, 3]);
        assert_eq!(b.as_text(), None);
        assert_eq!(Message::text(String::from("x")).into_bytes(), Bytes::from_static(b"x"));
    }

    #[test]
    fn debug_is_bounded() {
        let big = Message::binary(vec![0u8; 1000]);
        assert_eq!(format!("{big:?}"), "Binary(<1000 bytes>)");
    }
}
