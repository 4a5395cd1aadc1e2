//! Every limit and timeout of an event loop, each with its default.
//!
//! The defaults are the safe ones a public server wants (see `docs/reliability.md`); a game server
//! on a trusted network may lower the size limits further, a file-transfer service may raise them.

use std::time::Duration;

/// Configuration of a [`WebSocket`](crate::WebSocket) event loop and all its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Largest frame payload accepted from a peer; a larger frame fails the connection with 1009
    /// as soon as its header arrives. Default: 16 MiB. `None`: no limit.
    pub max_frame_size: Option<u64>,
    /// Largest message accepted from a peer (sum of its frames), checked before buffering.
    /// Default: 64 MiB. `None`: no limit (only sensible with the streaming API).
    pub max_message_size: Option<u64>,
    /// Most frames one message may be split into; more fails with 1009. Default: 65,536.
    pub max_fragments: Option<usize>,
    /// Most simultaneous connections (servers and clients). When reached, accepting pauses until
    /// one closes. Default: 100,000.
    pub max_connections: usize,
    /// The listen backlog: connections the kernel completes and holds until the loop accepts
    /// them (capped by the kernel's `net.core.somaxconn`). Default: 1024.
    pub listen_backlog: i32,
    /// Most bytes in an opening handshake's HTTP head; more gets HTTP 431. Default: 8 KiB.
    pub max_handshake_bytes: usize,
    /// Most header fields in an opening handshake; more gets HTTP 431. Default: 64.
    pub max_handshake_headers: usize,
    /// Time allowed from TCP accept (or connect) to a completed opening handshake. Default: 5 s.
    pub open_timeout: Duration,
    /// Time allowed for the closing handshake (the peer's close frame, then its TCP close) after
    /// wsloop sent a close frame. Default: 3 s.
    pub close_timeout: Duration,
    /// Close a connection with 1001 when nothing was received from it for this long. Default:
    /// `None` (keep-alive already detects dead peers).
    pub idle_timeout: Option<Duration>,
    /// Send a ping when nothing was received for this long. Default: 30 s. `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// After a keep-alive ping, drop the connection if nothing arrives within this time. Default:
    /// 30 s.
    pub keepalive_timeout: Duration,
    /// Answer pings with pongs automatically (RFC 6455 §5.5.2). Default: true.
    pub auto_pong: bool,
    /// Set TCP_NODELAY on every connection (no Nagle delay; what latency-sensitive servers
    /// want, and wsloop batches its own writes). Default: true.
    pub tcp_nodelay: bool,
    /// Size of the loop's read buffer, and the most read from one socket per read call (plus
    /// 16 KiB, see `read_budget`; buffers are allocated 32 KiB larger). Idle connections hold
    /// no read buffer (the loop owns one). Default: 256 KiB.
    pub read_buffer_size: usize,
    /// Most bytes queued for sending on one connection (frames not yet accepted by the kernel).
    /// A send beyond it fails with [`Error::SendQueueFull`](crate::Error::SendQueueFull) and is not
    /// queued. Default: 16 MiB + 64 KiB (one maximal frame and then some).
    pub max_send_queue: usize,
    /// When a connection's unsent bytes rose above this mark (the peer reads slower than we
    /// send) and then drain back to it, [`Handler::on_writable`](crate::Handler::on_writable) is
    /// called. Default: 64 KiB.
    pub send_queue_low_water: usize,
    /// Capacity of the channel carrying commands from other threads to the loop; a send from
    /// another thread beyond it fails with [`Error::ChannelFull`](crate::Error::ChannelFull).
    /// Default: 65,536 commands.
    pub channel_capacity: usize,
    /// Bytes read from one connection per readiness event before the loop serves the others
    /// (fairness). A pass may read up to 32 KiB past it: 16 KiB so a socket holding slightly
    /// more than the budget is drained by one read, and 16 KiB more to finish a frame the
    /// budget ran out in. Default: 256 KiB.
    pub read_budget: usize,
    /// Split outgoing messages into frames of at most this many payload bytes (Autobahn's
    /// `autoFragmentSize`). Default: `None` (one frame per message).
    pub auto_fragment_size: Option<usize>,
    /// Catch a panic in a handler callback, close that connection with 1011 and keep the loop
    /// running. When false, a panic unwinds out of `run()`. Default: true.
    pub catch_panics: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_frame_size: Some(16 << 20),
            max_message_size: Some(64 << 20),
            max_fragments: Some(65_536),
            max_connections: 100_000,
            listen_backlog: 1024,
            max_handshake_bytes: 8 * 1024,
            max_handshake_headers: 64,
            open_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(3),
            idle_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(30),
            auto_pong: true,
            tcp_nodelay: true,
            read_buffer_size: 256 * 1024,
            max_send_queue: (16 << 20) + (64 << 10),
            send_queue_low_water: 64 * 1024,
            channel_capacity: 65_536,
            read_budget: 256 * 1024,
            auto_fragment_size: None,
            catch_panics: true,
        }
    }
}
