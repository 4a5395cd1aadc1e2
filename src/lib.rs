//! # wsloop
//!
//! A fast, small and strictly RFC 6455 WebSocket library for servers and clients.
//!
//! wsloop is layered:
//!
//! - [`protocol`]: the sans-IO core (frames, masking, UTF-8, close codes, the opening handshake);
//!   bytes in, events out, no sockets.
//!
//! See `docs/architecture.md` for the layers and `docs/guide.md` for a tour.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod error;
pub mod protocol;

pub use error::{Error, HandshakeError, ProtocolError, Result};
pub use protocol::close::{CloseCode, CloseFrame};
pub use protocol::message::{Message, MessageKind, Utf8Bytes};
