//! Errors: who caused them, and what the peer is told.
//!
//! Every failure in wsloop is an [`Error`]. Errors caused by the peer's bytes are a
//! [`ProtocolError`] (after the opening handshake; each maps to the close code RFC 6455 asks for,
//! see [`ProtocolError::close_code`]) or a [`HandshakeError`] (during it; each maps to the HTTP
//! status a server answers with, see [`HandshakeError::http_status`]). Errors caused by local misuse
//! or by the operating system have variants of their own, so a handler can tell "the peer broke the
//! protocol" from "my send queue is full" from "the socket died".

use std::fmt;
use std::io;

use crate::protocol::close::CloseCode;

/// A violation of RFC 6455 by the peer, detected after the opening handshake.
///
/// Each variant names the rule that was broken. [`close_code`](Self::close_code) is the status code
/// wsloop sends in its close frame when it fails the connection for this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An RSV bit was set that no negotiated extension defines (RFC 6455 §5.2).
    ReservedBits(u8),
    /// An opcode reserved for future use (3-7, 11-15) (RFC 6455 §5.2).
    ReservedOpcode(u8),
    /// A control frame without the FIN bit (RFC 6455 §5.5).
    FragmentedControlFrame,
    /// A control frame whose payload is longer than 125 bytes (RFC 6455 §5.5).
    ControlFrameTooLong(u64),
    /// A server received a frame that was not masked (RFC 6455 §5.1).
    UnmaskedFrame,
    /// A client received a masked frame (RFC 6455 §5.1).
    MaskedFrame,
    /// A 64-bit payload length with its most significant bit set (RFC 6455 §5.2).
    InvalidPayloadLength,
    /// A continuation frame arrived while no fragmented message was in progress (RFC 6455 §5.4).
    UnexpectedContinuation,
    /// A new text or binary frame arrived inside a fragmented message (RFC 6455 §5.4).
    ExpectedContinuation,
    /// A frame's payload exceeds the configured maximum frame size.
    FrameTooBig {
        /// The announced payload length.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// A message exceeds the configured maximum message size (checked before buffering).
    MessageTooBig {
        /// The size the message would reach with the announced frame.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// A fragmented message has more frames than the configured maximum.
    TooManyFragments {
        /// The configured limit.
        max: usize,
    },
    /// A text message, or a close reason, is not valid UTF-8 (RFC 6455 §8.1).
    InvalidUtf8,
    /// A close frame with a 1-byte payload (RFC 6455 §5.5.1).
    InvalidClosePayload,
    /// A close frame with a status code that must not appear on the wire (RFC 6455 §7.4).
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code RFC 6455 prescribes when failing the connection for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_DATA,
            ProtocolError::FrameTooBig { .. }
            | ProtocolError::MessageTooBig { .. }
            | ProtocolError::TooManyFragments { .. } => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBits(b) => write!(f, "reserved bits set without an extension: {b:#05b}"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            ProtocolError::ControlFrameTooLong(n) => write!(f, "control frame payload of {n} bytes (max 125)"),
            ProtocolError::UnmaskedFrame => f.write_str("unmasked frame from a client"),
            ProtocolError::MaskedFrame => f.write_str("masked frame from a server"),
            ProtocolError::InvalidPayloadLength => f.write_str("64-bit payload length with the high bit set"),
            ProtocolError::UnexpectedContinuation => f.write_str("continuation frame without a message to continue"),
            ProtocolError::ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            ProtocolError::FrameTooBig { size, max } => write!(f, "frame of {size} bytes exceeds the limit of {max}"),
            ProtocolError::MessageTooBig { size, max } => {
                write!(f, "message of at least {size} bytes exceeds the limit of {max}")
            }
            ProtocolError::TooManyFragments { max } => write!(f, "message has more than {max} fragments"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message or close reason"),
            ProtocolError::InvalidClosePayload => f.write_str("close frame with a 1-byte payload"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "close code {c} is not allowed on the wire"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A failed opening handshake (RFC 6455 §4).
///
/// On the server, [`http_status`](Self::http_status) is the status of the HTTP response the client
/// receives. On the client, [`HandshakeError::Rejected`] carries what the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not a well-formed HTTP/1.1 message.
    MalformedHttp(&'static str),
    /// The request's header section exceeds the configured byte limit.
    HeadersTooLarge {
        /// The configured limit in bytes.
        max: usize,
    },
    /// The request has more header fields than the configured limit.
    TooManyHeaders {
        /// The configured limit.
        max: usize,
    },
    /// The request method is not GET.
    MethodNotAllowed,
    /// The request is not HTTP/1.1.
    UnsupportedHttpVersion,
    /// A required header is missing or has the wrong value (the header's name is given).
    MissingOrInvalidHeader(&'static str),
    /// `Sec-WebSocket-Key` does not decode to 16 bytes.
    InvalidKey,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// The server's handler rejected the request (with this HTTP status).
    RejectedByHandler(u16),
    /// Client side: the server answered with a status other than 101.
    Rejected {
        /// The HTTP status code.
        status: u16,
        /// The response headers, as sent.
        headers: Vec<(String, String)>,
        /// The response body (bounded by the handshake size limit).
        body: Vec<u8>,
    },
    /// Client side: `Sec-WebSocket-Accept` does not match the key we sent.
    AcceptMismatch,
    /// Client side: the server chose a subprotocol we did not offer.
    UnexpectedSubprotocol(String),
    /// Client side: the server accepted an extension we did not offer.
    UnexpectedExtension(String),
    /// Client side: the URL is not a `ws://` URL wsloop can connect to.
    InvalidUrl(String),
    /// The handshake did not complete within the configured time.
    Timeout,
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            HandshakeError::HeadersTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedHttpVersion => 505,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::RejectedByHandler(s) | HandshakeError::Rejected { status: s, .. } => *s,
            HandshakeError::Timeout => 408,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::MalformedHttp(what) => write!(f, "malformed HTTP: {what}"),
            HandshakeError::HeadersTooLarge { max } => write!(f, "handshake headers exceed {max} bytes"),
            HandshakeError::TooManyHeaders { max } => write!(f, "handshake has more than {max} headers"),
            HandshakeError::MethodNotAllowed => f.write_str("handshake method is not GET"),
            HandshakeError::UnsupportedHttpVersion => f.write_str("handshake is not HTTP/1.1"),
            HandshakeError::MissingOrInvalidHeader(h) => write!(f, "missing or invalid header {h}"),
            HandshakeError::InvalidKey => f.write_str("Sec-WebSocket-Key is not 16 base64-encoded bytes"),
            HandshakeError::UnsupportedVersion => f.write_str("Sec-WebSocket-Version is not 13"),
            HandshakeError::RejectedByHandler(s) => write!(f, "request rejected by the handler with HTTP {s}"),
            HandshakeError::Rejected { status, .. } => write!(f, "server answered HTTP {status} instead of 101"),
            HandshakeError::AcceptMismatch => f.write_str("Sec-WebSocket-Accept does not match the key"),
            HandshakeError::UnexpectedSubprotocol(p) => {
                write!(f, "server chose subprotocol {p:?} that was not offered")
            }
            HandshakeError::UnexpectedExtension(e) => write!(f, "server accepted extension {e:?} that was not offered"),
            HandshakeError::InvalidUrl(u) => write!(f, "invalid WebSocket URL: {u}"),
            HandshakeError::Timeout => f.write_str("opening handshake timed out"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Every error wsloop reports, to handlers and to callers.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer violated RFC 6455; the connection was failed with [`ProtocolError::close_code`].
    Protocol(ProtocolError),
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// An operating-system I/O error on a socket.
    Io(io::Error),
    /// The connection this [`Sender`](crate::Sender) names is closed, or closing, and takes no
    /// more messages.
    ConnectionClosed,
    /// The event loop is gone (shut down, or its thread ended).
    LoopGone,
    /// The per-connection send queue limit (`Settings::max_send_queue`) would be exceeded; the
    /// message was not queued.
    SendQueueFull {
        /// Bytes already queued for the connection.
        queued: usize,
        /// The configured limit.
        max: usize,
    },
    /// The cross-thread command channel to the event loop is full; the command was not queued.
    ChannelFull,
    /// The peer did not complete the closing handshake, or answer a keep-alive ping, in time.
    Timeout(&'static str),
    /// A handler callback panicked; the connection was closed with 1011.
    HandlerPanic(String),
    /// The connection limit (`Settings::max_connections`) was reached.
    TooManyConnections,
    /// Local misuse of the API (for example a streaming-API call out of order).
    InvalidUse(&'static str),
}

impl Error {
    /// The close code wsloop sends when this error fails an open connection.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Error::Protocol(p) => p.close_code(),
            Error::HandlerPanic(_) => CloseCode::INTERNAL_ERROR,
            _ => CloseCode::ABNORMAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Handshake(e) => write!(f, "handshake error: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::ConnectionClosed => f.write_str("connection is closed"),
            Error::LoopGone => f.write_str("event loop is gone"),
            Error::SendQueueFull { queued, max } => {
                write!(f, "send queue full: {queued} bytes queued, limit {max}")
            }
            Error::ChannelFull => f.write_str("command channel to the event loop is full"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::HandlerPanic(msg) => write!(f, "handler panicked: {msg}"),
            Error::TooManyConnections => f.write_str("connection limit reached"),
            Error::InvalidUse(what) => write!(f, "invalid use: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Handshake(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// A `Result` with wsloop's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_map_to_rfc_close_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::INVALID_DATA);
        assert_eq!(ProtocolError::FrameTooBig { size: 2, max: 1 }.close_code(), CloseCode::TOO_BIG);
        assert_eq!(ProtocolError::MessageTooBig { size: 2, max: 1 }.close_code(), CloseCode::TOO_BIG);
        assert_eq!(ProtocolError::TooManyFragments { max: 1 }.close_code(), CloseCode::TOO_BIG);
        assert_eq!(ProtocolError::ReservedOpcode(3).close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(ProtocolError::UnmaskedFrame.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(ProtocolError::InvalidCloseCode(999).close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn handshake_errors_map_to_http_status() {
        assert_eq!(HandshakeError::UnsupportedVersion.http_status(), 426);
        assert_eq!(HandshakeError::HeadersTooLarge { max: 1 }.http_status(), 431);
        assert_eq!(HandshakeError::TooManyHeaders { max: 1 }.http_status(), 431);
        assert_eq!(HandshakeError::MethodNotAllowed.http_status(), 405);
        assert_eq!(HandshakeError::InvalidKey.http_status(), 400);
        assert_eq!(HandshakeError::RejectedByHandler(403).http_status(), 403);
    }

    #[test]
    fn error_display_names_the_cause() {
        let e = Error::from(ProtocolError::ReservedOpcode(5));
        assert_eq!(e.to_string(), "protocol error: reserved opcode 0x5");
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        assert!(std::error::Error::source(&e).is_some());
    }
}
