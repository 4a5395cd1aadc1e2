//! The runtime: [`WebSocket`], the event loop that owns every socket.
//!
//! ```no_run
//! use wsloop::{Message, Sender};
//!
//! // A three-line echo server.
//! wsloop::listen("127.0.0.1:9001", |out: Sender| move |msg: Message| out.send(msg)).unwrap();
//! ```

pub(crate) mod command_queue;
pub(crate) mod event_loop;
pub(crate) mod timers;

use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::handler::Factory;
use crate::protocol::handshake::client::ClientRequest;
use crate::sender::Sender;
use crate::settings::Settings;
use event_loop::EventLoop;
pub use event_loop::LoopStats;

/// An event loop with its listeners and connections, ready to [`run`](Self::run).
///
/// Build it with [`WebSocket::new`] (default [`Settings`]) or [`WebSocket::with_settings`], add
/// any number of listeners and client connections, then `run()` it on this thread or `spawn()` it
/// on a new one.
#[derive(Debug)]
pub struct WebSocket<F: Factory> {
    inner: EventLoop<F>,
}

impl<F: Factory> WebSocket<F> {
    /// A loop with default settings; `factory` makes a handler for each connection.
    pub fn new(factory: F) -> Result<Self> {
        Self::with_settings(factory, Settings::default())
    }

    /// A loop with `settings`.
    pub fn with_settings(factory: F, settings: Settings) -> Result<Self> {
        if settings.max_connections == 0 {
            return Err(Error::InvalidUse("max_connections must be at least 1"));
        }
        Ok(WebSocket { inner: EventLoop::new(factory, settings)? })
    }

    /// The loop's settings.
    pub fn settings(&self) -> &Settings {
        self.inner.settings()
    }

    /// Listen on `addr` (port 0 picks a free port). Returns the bound address.
    pub fn listen(&mut self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match self.inner.listen(a) {
                Ok(bound) => return Ok(bound),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))))
    }

    /// Open a client connection to a `ws://` URL. Its handler comes from
    /// [`Factory::client_connected`]. Host names are resolved off the loop thread.
    pub fn connect(&mut self, url: &str) -> Result<Sender> {
        self.inner.connect(url, ClientRequest::default())
    }

    /// Open a client connection with subprotocols, extensions, an origin or extra headers.
    pub fn connect_with(&mut self, url: &str, request: ClientRequest) -> Result<Sender> {
        self.inner.connect(url, request)
    }

    /// A handle to the loop itself: [`Sender::broadcast`], [`Sender::shutdown`] and
    /// [`Sender::connect`] work on it from any thread; per-connection methods return
    /// [`Error::InvalidUse`].
    pub fn sender(&self) -> Sender {
        self.inner.loop_sender()
    }

    /// Counters: open connections, accepted and closed totals, timers.
    pub fn stats(&self) -> LoopStats {
        self.inner.stats()
    }

    /// Run the loop on this thread until [`Sender::shutdown`] completes, or until it has neither
    /// listeners nor connections.
    pub fn run(mut self) -> Result<()> {
        self.inner.run()
    }

    /// Run the loop on a new thread. Join the handle to get `run()`'s result.
    pub fn spawn(self) -> Result<JoinHandle<Result<()>>>
    where
        F: Send + 'static,
        F::Handler: Send,
    {
        Ok(std::thread::Builder::new().name("wsloop".into()).spawn(move || self.run())?)
    }
}

/// Serve WebSocket connections on `addr` with default settings, on this thread, forever (until a
/// handler calls [`Sender::shutdown`]).
pub fn listen<F: Factory>(addr: impl ToSocketAddrs, factory: F) -> Result<()> {
    let mut ws = WebSocket::new(factory)?;
    ws.listen(addr)?;
    ws.run()
}

/// Open one client connection to `url` and run until it closes.
pub fn connect<F: Factory>(url: &str, factory: F) -> Result<()> {
    let mut ws = WebSocket::new(factory)?;
    ws.connect(url)?;
    ws.run()
}
