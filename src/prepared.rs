//! [`PreparedMessage`]: frame a message once, send the same bytes to many connections.

use bytes::{Bytes, BytesMut};

use crate::protocol::frame::{header_len, write_frame, OpCode};
use crate::protocol::message::Message;

/// A message framed once, ready to be queued on any number of connections.
///
/// A server sends unmasked frames, so the header and payload built here are identical for every
/// connection: [`Sender::send_prepared`](crate::Sender::send_prepared) and
/// [`Sender::broadcast_prepared`](crate::Sender::broadcast_prepared) queue a reference to the same
/// `Bytes` (one reference-count increment, no copy, no allocation beyond a queue slot).
///
/// A client must mask every frame with a fresh random key (RFC 6455 §5.3), so on a client
/// connection the prepared message is masked (and therefore copied) per send; preparing it still
/// saves nothing but does no harm.
///
/// Cloning is cheap (reference counts).
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    message: Message,
    frame: Bytes,
}

impl PreparedMessage {
    /// Frame `msg` as one unmasked frame (header and payload in one buffer).
    pub fn new(msg: impl Into<Message>) -> Self {
        let message = msg.into();
        let opcode = if message.is_text() { OpCode::Text } else { OpCode::Binary };
        let mut buf = BytesMut::with_capacity(header_len(message.len() as u64, false) + message.len());
        write_frame(&mut buf, opcode, true, 0, message.as_bytes(), None);
        PreparedMessage { message, frame: buf.freeze() }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The unmasked frame, as servers send it.
    pub fn server_frame(&self) -> &Bytes {
        &self.frame
    }

    /// Bytes one send queues on a connection of this role.
    pub fn frame_len(&self, client: bool) -> usize {
        if client {
            header_len(self.message.len() as u64, true) + self.message.len()
        } else {
            self.frame.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_once_as_an_unmasked_final_frame() {
        let p = PreparedMessage::new("hello");
        assert_eq!(&p.server_frame()[..], b"\x81\x05hello");
        assert_eq!(p.frame_len(false), 7);
        assert_eq!(p.frame_len(true), 11);
        let q = p.clone();
        assert_eq!(q.server_frame().as_ptr(), p.server_frame().as_ptr(), "clones share the frame");
        let b = PreparedMessage::new(vec![0u8; 300]);
        assert_eq!(&b.server_frame()[..4], &[0x82, 126, 0x01, 0x2c]);
    }
}
