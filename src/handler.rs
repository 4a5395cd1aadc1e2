//! The user's side: a [`Handler`] per connection, made by a [`Factory`].
//!
//! Every callback has a default, so a handler implements only what it needs. Callbacks run on the
//! loop's thread, one at a time; a handler sends through the [`Sender`] its factory gave it (the
//! commands are applied right after the callback returns, so a handler may close its own
//! connection, or send to others, from inside any callback).
//!
//! A callback returning `Err(e)` fails the connection: wsloop calls [`Handler::on_error`] with `e`
//! and closes with 1011 (Internal Error), or with the protocol close code if `e` is a
//! [`ProtocolError`](crate::ProtocolError).

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::protocol::close::CloseCode;
use crate::protocol::handshake::client::ServerResponse;
use crate::protocol::handshake::server::{Rejection, Request, Response};
use crate::protocol::message::{Message, MessageKind};
use crate::sender::{Sender, Token};

/// At which granularity a handler receives data messages.
///
/// One pipeline serves all three: the decoder delivers payload chunks as they arrive; the frame
/// level joins the chunks of each frame, the message level those of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Whole messages through [`Handler::on_message`] (the default).
    #[default]
    Message,
    /// [`Handler::on_message_begin`], then [`Handler::on_message_frame`] once per whole frame,
    /// then [`Handler::on_message_end`].
    Frame,
    /// [`Handler::on_message_begin`], then per frame [`Handler::on_frame_begin`],
    /// [`Handler::on_frame_data`] for each chunk as it arrives from the socket, and
    /// [`Handler::on_frame_end`], then [`Handler::on_message_end`]. Nothing is buffered beyond the
    /// read buffer, and the message size limit does not apply (the frame size limit does).
    Stream,
}

/// Callbacks for one WebSocket connection.
#[allow(unused_variables)]
pub trait Handler {
    /// Server only: the client's upgrade request arrived. Inspect its path, query, headers,
    /// cookies and origin; accept (optionally choosing a subprotocol from
    /// [`Request::protocols`] and adding headers such as `Set-Cookie`), or reject with any
    /// HTTP status and body. Default: accept, with no subprotocol.
    fn on_request(&mut self, request: &Request) -> std::result::Result<Response, Rejection> {
        Ok(Response::accept())
    }

    /// Client only: the server's `101` response arrived and was validated. Returning an error
    /// abandons the connection. Default: accept.
    fn on_response(&mut self, response: &ServerResponse) -> Result<()> {
        Ok(())
    }

    /// The connection is open: messages may flow.
    fn on_open(&mut self) -> Result<()> {
        Ok(())
    }

    /// A whole data message arrived (message level).
    fn on_message(&mut self, msg: Message) -> Result<()> {
        Ok(())
    }

    /// The connection is closed: the peer's close code and reason, 1005 ([`CloseCode::NO_STATUS`])
    /// if its close frame had none, or 1006 ([`CloseCode::ABNORMAL`]) if the connection ended
    /// without a closing handshake. Called exactly once for every connection that was opened.
    fn on_close(&mut self, code: CloseCode, reason: &str) {}

    /// Something failed: a protocol violation by the peer, an I/O error, a timeout, a failed
    /// handshake. For an open connection, [`on_close`](Self::on_close) follows.
    fn on_error(&mut self, err: Error) {
        log::debug!("connection error: {err}");
    }

    /// A ping arrived. With `Settings::auto_pong` (the default) the pong is already queued.
    fn on_ping(&mut self, payload: Bytes) -> Result<()> {
        Ok(())
    }

    /// A pong arrived (solicited or not).
    fn on_pong(&mut self, payload: Bytes) -> Result<()> {
        Ok(())
    }

    /// A timer set with [`Sender::timeout`] expired.
    fn on_timeout(&mut self, token: Token) -> Result<()> {
        Ok(())
    }

    /// The connection's send queue drained below the low-water mark after a send found it above
    /// it (see `Settings::max_send_queue` and [`Sender::buffered_amount`]).
    fn on_writable(&mut self) -> Result<()> {
        Ok(())
    }

    /// The level at which this handler receives data ([`Level::Message`] by default). Asked once,
    /// when the connection opens.
    fn level(&self) -> Level {
        Level::Message
    }

    /// Frame and stream levels: a data message starts.
    fn on_message_begin(&mut self, kind: MessageKind) -> Result<()> {
        Ok(())
    }

    /// Frame level: the whole payload of one frame of the current message.
    fn on_message_frame(&mut self, payload: Bytes) -> Result<()> {
        Ok(())
    }

    /// Stream level: a frame of `len` payload bytes starts.
    fn on_frame_begin(&mut self, len: u64) -> Result<()> {
        Ok(())
    }

    /// Stream level: the next chunk of the current frame's payload, as it arrived (text has been
    /// validated as UTF-8 up to here, though a chunk may end inside a character).
    fn on_frame_data(&mut self, chunk: Bytes) -> Result<()> {
        Ok(())
    }

    /// Stream level: the current frame is complete.
    fn on_frame_end(&mut self) -> Result<()> {
        Ok(())
    }

    /// Frame and stream levels: the current message is complete.
    fn on_message_end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A closure taking each message is a handler: `move |msg| out.send(msg)` echoes.
impl<F> Handler for F
where
    F: FnMut(Message) -> Result<()>,
{
    fn on_message(&mut self, msg: Message) -> Result<()> {
        self(msg)
    }
}

/// Makes a [`Handler`] for each connection.
///
/// A closure `|out: Sender| handler` is a factory.
pub trait Factory {
    /// The handler type.
    type Handler: Handler;

    /// A server accepted a TCP connection (its handshake has not happened yet).
    fn connection_made(&mut self, out: Sender) -> Self::Handler;

    /// A client connection is being opened (see [`WebSocket::connect`](crate::WebSocket::connect)).
    /// Default: the same as [`connection_made`](Self::connection_made).
    fn client_connected(&mut self, out: Sender) -> Self::Handler {
        self.connection_made(out)
    }

    /// A handler is being dropped (its connection is gone).
    fn connection_lost(&mut self, handler: Self::Handler) {
        drop(handler);
    }

    /// The loop is about to return from `run()`.
    fn on_shutdown(&mut self) {}
}

impl<F, H> Factory for F
where
    F: FnMut(Sender) -> H,
    H: Handler,
{
    type Handler = H;

    fn connection_made(&mut self, out: Sender) -> H {
        self(out)
    }
}
