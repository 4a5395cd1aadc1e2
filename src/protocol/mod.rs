//! The sans-IO protocol core: RFC 6455 over byte buffers, with no sockets, clocks or threads.
//!
//! | concept | module |
//! |---|---|
//! | frame header parse/encode | [`frame`] |
//! | masking and mask keys | [`mask`] |
//! | incremental UTF-8 validation | [`utf8`] |
//! | close codes and close payloads | [`close`] |
//! | messages and text bytes | [`message`] |
//! | decoding a frame stream into events (all receive-side rules and limits) | [`decoder`] |
//! | joining chunks into frames or messages | [`assembler`] |
//! | the opening handshake, both sides | [`handshake`] |
//!
//! The event loop ([`WebSocket`](crate::WebSocket)) drives these; any other I/O layer can too.

pub mod assembler;
pub mod close;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
