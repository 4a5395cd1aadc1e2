//! The opening handshake (RFC 6455 §4): HTTP/1.1 Upgrade, sans-IO.
//!
//! [`server`] parses and validates a client's request and writes the `101` or an error response;
//! [`client`] writes the request and validates the server's answer; [`headers`] holds what both
//! share (token lists, the accept key, extension offers, bounded head scanning).

pub mod client;
pub mod headers;
pub mod server;
