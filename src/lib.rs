//! # wsloop
//!
//! A fast, small and strictly RFC 6455 WebSocket library for servers and clients, on a
//! single-threaded [mio](https://docs.rs/mio) event loop.
//!
//! - Write a [`Handler`] per connection (`on_open`, `on_message`, `on_close`, handshake hooks,
//!   ping/pong, timers, and frame- or stream-level callbacks for huge messages).
//! - A [`Factory`] makes one handler per connection and gives it a [`Sender`]: a cheap,
//!   cloneable, `Send + Sync` handle that any thread can use to send, close, ping or broadcast.
//! - One thread runs the event loop ([`WebSocket::run`]) and owns every socket.
//!
//! ```no_run
//! use wsloop::{Message, Sender};
//!
//! // An echo server in three lines.
//! wsloop::listen("127.0.0.1:9001", |out: Sender| {
//!     move |msg: Message| out.send(msg)
//! }).unwrap();
//! ```
//!
//! The crate is layered: [`protocol`] is the sans-IO core (frames, masking, UTF-8, close codes,
//! the opening handshake: bytes in, events out, no sockets), under the event loop. See
//! `docs/architecture.md` for the layers, `docs/guide.md` for a tour and `docs/reliability.md`
//! for every limit and timeout.
#![deny(missing_docs, missing_debug_implementations)]
// One `unsafe` block in the crate, in `read_buffer.rs` (receiving into uninitialised capacity),
// justified by a benchmark and documented with its SAFETY argument; everything else is safe.
#![deny(unsafe_code)]

pub mod error;
pub mod protocol;

mod connection;
mod handler;
mod prepared;
mod read_buffer;
mod runtime;
mod sender;
mod settings;
mod write_queue;

pub use error::{Error, HandshakeError, ProtocolError, Result};
pub use handler::{Factory, Handler, Level};
pub use prepared::PreparedMessage;
pub use protocol::close::{CloseCode, CloseFrame};
pub use protocol::handshake::client::{ClientRequest, ServerResponse};
pub use protocol::handshake::server::{Rejection, Request, Response};
pub use protocol::message::{Message, MessageKind, Utf8Bytes};
pub use runtime::{connect, listen, LoopStats, WebSocket};
pub use sender::{ConnId, Sender, TimeoutHandle, Token};
pub use settings::Settings;

/// Re-exported so handlers can name payload types without adding the dependency.
pub use bytes::Bytes;

/// The code in `README.md` and `docs/guide.md`, compiled as doc tests so the documentation
/// cannot drift from the API.
#[cfg(doctest)]
mod doc_tests {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/guide.md")]
    struct Guide;
}
