//! Joining payload chunks into whole frames or whole messages.
//!
//! The decoder hands out payload as it arrives. The frame level (whole frames) and the message level
//! (whole messages) are built on that stream by an [`Accumulator`]: when a frame or message arrives
//! in one piece, as almost every small one does, its `Bytes` are passed through without a copy;
//! only payload that arrives in several pieces is joined, growing the buffer as bytes actually
//! arrive (never by an announced, untrusted length). Size limits are enforced by the decoder
//! before any of this is buffered.

use bytes::{Bytes, BytesMut};

use crate::protocol::message::{Message, MessageKind, Utf8Bytes};

/// Joins chunks of payload into one `Bytes`.
#[derive(Debug, Default)]
pub struct Accumulator {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Accumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a chunk.
    #[inline]
    pub fn push(&mut self, chunk: Bytes) {
        if !self.joined.is_empty() {
            self.joined.extend_from_slice(&chunk);
        } else if let Some(first) = self.first.take() {
            self.joined.reserve(first.len() + chunk.len());
            self.joined.extend_from_slice(&first);
            self.joined.extend_from_slice(&chunk);
        } else {
            self.first = Some(chunk);
        }
    }

    /// Bytes accumulated so far.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    /// Whether nothing has been accumulated.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take everything accumulated, leaving the accumulator empty (and holding no memory).
    pub fn take(&mut self) -> Bytes {
        if let Some(first) = self.first.take() {
            first
        } else {
            std::mem::take(&mut self.joined).freeze()
        }
    }

    /// Take the accumulated payload as a message of `kind`. Text must have been validated.
    pub fn take_message(&mut self, kind: MessageKind) -> Message {
        let payload = self.take();
        match kind {
            MessageKind::Text => Message::Text(Utf8Bytes::from_validated(payload)),
            MessageKind::Binary => Message::Binary(payload),
        }
    }

    /// Drop everything (for example when the connection fails mid-message).
    pub fn clear(&mut self) {
        self.first = None;
        self.joined = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_chunk_is_passed_through_without_copy() {
        let chunk = Bytes::from(vec![1u8; 100]);
        let ptr = chunk.as_ptr();
        let mut a = Accumulator::new();
        a.push(chunk);
        let out = a.take();
        assert_eq!(out.as_ptr(), ptr);
        assert!(a.is_empty());
    }

    #[test]
    fn several_chunks_are_joined_in_order() {
        let mut a = Accumulator::new();
        a.push(Bytes::from_static(b"ab"));
        a.push(Bytes::from_static(b"c"));
        a.push(Bytes::from_static(b"def"));
        assert_eq!(a.len(), 6);
        assert_eq!(&a.take()[..], b"abcdef");
        assert_eq!(a.len(), 0);
        a.push(Bytes::from_static(b"x"));
        assert_eq!(&a.take()[..], b"x");
    }

    #[test]
    fn take_message_of_each_kind() {
        let mut a = Accumulator::new();
        a.push(Bytes::from_static("hé".as_bytes()));
        assert_eq!(a.take_message(MessageKind::Text), Message::text("hé"));
        a.push(Bytes::from_static(b"\x00"));
        assert_eq!(a.take_message(MessageKind::Binary), Message::binary(vec![0u8]));
        assert_eq!(a.take_message(MessageKind::Binary), Message::binary(Bytes::new()));
    }
}
