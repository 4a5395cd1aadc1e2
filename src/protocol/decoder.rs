//! The incremental frame-stream decoder: bytes in, protocol events out.
//!
//! [`Decoder::next_event`] takes the connection's read buffer and returns the next [`Event`], or
//! `None` when it needs more bytes. It never copies payload: data is unmasked in place and handed
//! out as `Bytes` split off the buffer, as soon as it arrives (so a frame's payload can be streamed
//! without ever being whole in memory). Every RFC 6455 rule that depends on connection state is
//! enforced here, before any payload is buffered:
//!
//! - masking direction (a server requires masked frames, a client rejects them, §5.1);
//! - RSV bits only as negotiated extensions allow (§5.2; RSV1 only on a message's first frame, as
//!   RFC 7692 defines it);
//! - fragmentation (§5.4): no continuation without a message, no new message inside one; control
//!   frames may interleave;
//! - frame size, message size and fragment-count limits, checked against the announced length;
//! - UTF-8 validity of text, fail-fast on every chunk (§8.1), unless the message is compressed (an
//!   extension then validates after inflating);
//! - close frame payloads (§5.5.1, §7.4).
//!
//! The event sequence for a data message is `MessageBegin`, then for each frame `FrameBegin`,
//! zero or more `FrameData`, `FrameEnd`, and finally `MessageEnd`. Control frames arrive whole, as
//! `Ping`, `Pong` or `Close`, possibly between the frames of a message.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::protocol::close::CloseFrame;
use crate::protocol::frame::{FrameHeader, HeaderParse, OpCode, RSV1};
use crate::protocol::mask::apply_mask;
use crate::protocol::message::MessageKind;
use crate::protocol::utf8::Utf8Validator;

/// Which end of the connection this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepted the connection; receives masked frames, sends unmasked ones.
    Server,
    /// Opened the connection; receives unmasked frames, sends masked ones.
    Client,
}

/// Limits and negotiated options for a [`Decoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    /// This endpoint's role.
    pub role: Role,
    /// Largest accepted frame payload; `None` for no limit.
    pub max_frame_size: Option<u64>,
    /// Largest accepted message (sum of its frames); `None` for no limit.
    pub max_message_size: Option<u64>,
    /// Most frames one message may have; `None` for no limit.
    pub max_fragments: Option<usize>,
    /// RSV bits that negotiated extensions define (for example [`RSV1`] for permessage-deflate).
    pub allowed_rsv: u8,
}

impl DecoderConfig {
    /// Defaults for `role`: 16 MiB frames, 64 MiB messages, 65,536 fragments, no extensions.
    pub fn new(role: Role) -> Self {
        DecoderConfig {
            role,
            max_frame_size: Some(16 << 20),
            max_message_size: Some(64 << 20),
            max_fragments: Some(65_536),
            allowed_rsv: 0,
        }
    }
}

/// What the decoder found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first frame of a data message starts.
    MessageBegin {
        /// Text or binary.
        kind: MessageKind,
        /// RSV1 was set on the first frame (a compressed message under permessage-deflate).
        compressed: bool,
    },
    /// A data frame starts (the first of a message, or a continuation).
    FrameBegin {
        /// The frame's payload length, as announced.
        len: u64,
        /// This is the message's final frame.
        fin: bool,
    },
    /// Unmasked payload of the current frame, as much as has arrived (never empty). Text has been
    /// validated up to here.
    FrameData(Bytes),
    /// The current data frame is complete.
    FrameEnd {
        /// It was the message's final frame (a `MessageEnd` follows).
        fin: bool,
    },
    /// The message is complete (and, for text, valid UTF-8 to its end).
    MessageEnd,
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame (`None`: no status code). The decoder returns nothing after it.
    Close(Option<CloseFrame>),
}

/// What [`Decoder::whole_message`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WholeMessage {
    /// A whole single-frame message, consumed: its kind and unmasked (for text, validated)
    /// payload.
    Message(MessageKind, Bytes),
    /// The start of a binary frame the fast path will take whole once the rest has arrived:
    /// read at least `missing` more bytes before decoding.
    Incomplete {
        /// Bytes of the frame not in the buffer yet.
        missing: usize,
    },
    /// Not for the fast path: decode with [`Decoder::next_event`].
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    FrameBegin {
        len: u64,
        fin: bool,
        mask: Option<[u8; 4]>,
    },
    Payload {
        remaining: u64,
        offset: u64,
        fin: bool,
        mask: Option<[u8; 4]>,
    },
    MessageEnd,
    /// After a close frame or an error: nothing more is decoded.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct InMessage {
    kind: MessageKind,
    len: u64,
    fragments: usize,
    validate: bool,
}

/// The incremental decoder for one connection's incoming frames.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: DecoderConfig,
    state: State,
    message: Option<InMessage>,
    utf8: Utf8Validator,
}

impl Decoder {
    /// A decoder at the start of a frame stream.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder { config, state: State::Header, message: None, utf8: Utf8Validator::new() }
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Change the configuration (for example to lift the message size limit for a streaming
    /// handler, or allow RSV1 after negotiating an extension).
    pub fn config_mut(&mut self) -> &mut DecoderConfig {
        &mut self.config
    }

    /// Whether the decoder is between messages (no fragmented message in progress).
    pub fn is_idle(&self) -> bool {
        self.message.is_none() && self.state == State::Header
    }

    /// Decode the next event from `buf`, consuming the bytes it covers.
    ///
    /// `Ok(None)` means more bytes are needed (or a close frame was already returned). An error
    /// means the peer broke the protocol: fail the connection with [`ProtocolError::close_code`];
    /// the decoder returns nothing after it.
    pub fn next_event(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        let r = self.step(buf);
        if r.is_err() {
            self.state = State::Done;
        }
        r
    }

    /// How many more bytes are needed, at least, before `next_event` can make progress; 0 when it
    /// can make progress now. Useful to size reads.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        match self.state {
            State::Header => match FrameHeader::parse(buf) {
                Ok(HeaderParse::Incomplete(n)) => n,
                Ok(HeaderParse::Complete(h, n)) if h.opcode.is_control() => {
                    (n + h.payload_len as usize).saturating_sub(buf.len())
                }
                _ => 0,
            },
            State::Payload { remaining, .. } if remaining > 0 && buf.is_empty() => 1,
            _ => 0,
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        match self.state {
            State::Done => Ok(None),
            State::Header => {
                let (h, n) = match FrameHeader::parse(buf)? {
                    HeaderParse::Incomplete(_) => return Ok(None),
                    HeaderParse::Complete(h, n) => (h, n),
                };
                match (self.config.role, h.mask.is_some()) {
                    (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
                    (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
                    _ => {}
                }
                if h.opcode.is_control() {
                    // Extensions define no RSV bits for control frames.
                    if h.rsv != 0 {
                        return Err(ProtocolError::ReservedBits(h.rsv));
                    }
                    let len = h.payload_len as usize;
                    if buf.len() < n + len {
                        return Ok(None); // control frames are small: wait for the whole frame
                    }
                    buf.advance(n);
                    let mut payload = buf.split_to(len);
                    if let Some(key) = h.mask {
                        apply_mask(&mut payload, key, 0);
                    }
                    let payload = payload.freeze();
                    return Ok(Some(match h.opcode {
                        OpCode::Ping => Event::Ping(payload),
                        OpCode::Pong => Event::Pong(payload),
                        _ => {
                            let close = CloseFrame::parse(payload)?;
                            self.state = State::Done;
                            Event::Close(close)
                        }
                    }));
                }
                self.data_frame_header(h, n, buf)
            }
            State::FrameBegin { len, fin, mask } => {
                self.state = State::Payload { remaining: len, offset: 0, fin, mask };
                Ok(Some(Event::FrameBegin { len, fin }))
            }
            State::Payload { remaining: 0, fin, .. } => {
                if fin {
                    if self.message.is_some_and(|m| m.validate) {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    self.state = State::MessageEnd;
                } else {
                    self.state = State::Header;
                }
                Ok(Some(Event::FrameEnd { fin }))
            }
            State::Payload { remaining, offset, fin, mask } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = remaining.min(buf.len() as u64) as usize;
                let mut chunk = buf.split_to(n);
                if let Some(key) = mask {
                    apply_mask(&mut chunk, key, offset as usize);
                }
                if self.message.is_some_and(|m| m.validate) {
                    self.utf8.feed(&chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                self.state = State::Payload { remaining: remaining - n as u64, offset: offset + n as u64, fin, mask };
                Ok(Some(Event::FrameData(chunk.freeze())))
            }
            State::MessageEnd => {
                self.message = None;
                self.state = State::Header;
                Ok(Some(Event::MessageEnd))
            }
        }
    }

    fn data_frame_header(
        &mut self,
        h: FrameHeader,
        n: usize,
        buf: &mut BytesMut,
    ) -> Result<Option<Event>, ProtocolError> {
        let starts = match (h.opcode, self.message.is_some()) {
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, true) => None,
            (_, true) => return Err(ProtocolError::ExpectedContinuation),
            (OpCode::Text, false) => Some(MessageKind::Text),
            (_, false) => Some(MessageKind::Binary),
        };
        let rsv_allowed = if starts.is_some() { self.config.allowed_rsv } else { self.config.allowed_rsv & !RSV1 };
        if h.rsv & !rsv_allowed != 0 {
            return Err(ProtocolError::ReservedBits(h.rsv));
        }
        if let Some(max) = self.config.max_frame_size {
            if h.payload_len > max {
                return Err(ProtocolError::FrameTooBig { size: h.payload_len, max });
            }
        }
        let (so_far, fragments) = self.message.map_or((0, 0), |m| (m.len, m.fragments));
        let size = so_far.saturating_add(h.payload_len);
        if let Some(max) = self.config.max_message_size {
            if size > max {
                return Err(ProtocolError::MessageTooBig { size, max });
            }
        }
        if let Some(max) = self.config.max_fragments {
            if fragments + 1 > max {
                return Err(ProtocolError::TooManyFragments { max });
            }
        }
        buf.advance(n);
        self.state = State::FrameBegin { len: h.payload_len, fin: h.fin, mask: h.mask };
        match starts {
            Some(kind) => {
                let compressed = h.rsv & RSV1 != 0;
                let validate = kind == MessageKind::Text && !compressed;
                if validate {
                    self.utf8.reset();
                }
                self.message = Some(InMessage { kind, len: size, fragments: 1, validate });
                Ok(Some(Event::MessageBegin { kind, compressed }))
            }
            None => {
                if let Some(m) = self.message.as_mut() {
                    m.len = size;
                    m.fragments += 1;
                }
                self.step(buf)
            }
        }
    }

    /// Fast path for the message level: when the buffer starts with a whole, unfragmented,
    /// uncompressed text or binary frame that breaks no rule, consume it and return its kind and
    /// unmasked (and, for text, validated) payload in one step. `Ok(None)` means "not applicable
    /// here": use [`next_event`](Self::next_event), which handles everything else (and reports
    /// any error). The result is the same as `next_event`'s five events for that frame.
    pub fn try_whole_message(&mut self, buf: &mut BytesMut) -> Result<Option<(MessageKind, Bytes)>, ProtocolError> {
        Ok(match self.whole_message(buf, 0)? {
            WholeMessage::Message(kind, payload) => Some((kind, payload)),
            WholeMessage::Incomplete { .. } | WholeMessage::Decode => None,
        })
    }

    /// [`try_whole_message`](Self::try_whole_message) plus the decision to await a binary frame
    /// whole, in one look at the header (the receive path's per-message cost): a whole message,
    /// "wait for the rest of this binary frame of at most `await_limit` bytes (header included)",
    /// or "decode with `next_event`".
    pub fn whole_message(&mut self, buf: &mut BytesMut, await_limit: usize) -> Result<WholeMessage, ProtocolError> {
        if self.state != State::Header || self.message.is_some() {
            return Ok(WholeMessage::Decode);
        }
        let Ok(HeaderParse::Complete(h, n)) = FrameHeader::parse(buf) else { return Ok(WholeMessage::Decode) };
        let kind = match h.opcode {
            OpCode::Text => MessageKind::Text,
            OpCode::Binary => MessageKind::Binary,
            _ => return Ok(WholeMessage::Decode),
        };
        let masked_ok = match self.config.role {
            Role::Server => h.mask.is_some(),
            Role::Client => h.mask.is_none(),
        };
        let len = h.payload_len;
        let within = |limit: Option<u64>| limit.is_none_or(|max| len <= max);
        if !h.fin
            || h.rsv != 0
            || !masked_ok
            || !within(self.config.max_frame_size)
            || !within(self.config.max_message_size)
        {
            return Ok(WholeMessage::Decode);
        }
        let total = n as u64 + len;
        if (buf.len() as u64) < total {
            // Text is never awaited: its UTF-8 must fail fast, as its bytes arrive.
            let wait = kind == MessageKind::Binary && total <= await_limit as u64;
            let missing = (total - buf.len() as u64) as usize;
            return Ok(if wait { WholeMessage::Incomplete { missing } } else { WholeMessage::Decode });
        }
        buf.advance(n);
        let mut payload = buf.split_to(len as usize);
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        if kind == MessageKind::Text && std::str::from_utf8(&payload).is_err() {
            self.state = State::Done;
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(WholeMessage::Message(kind, payload.freeze()))
    }

    /// Whether [`next_event`](Self::next_event) certainly returns `None` for an empty buffer: the
    /// decoder is between frames, inside a payload, or done. (After a frame header or at a
    /// frame's end it still has events to give without more bytes.) Lets a reader skip decoding
    /// when nothing has arrived.
    pub fn needs_input(&self) -> bool {
        match self.state {
            State::Header | State::Done => true,
            State::Payload { remaining, .. } => remaining > 0,
            State::FrameBegin { .. } | State::MessageEnd => false,
        }
    }

    /// The kind of the message in progress, if any.
    pub fn message_kind(&self) -> Option<MessageKind> {
        self.message.map(|m| m.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close::CloseCode;
    use crate::protocol::frame::write_frame;

    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        write_frame(&mut b, op, fin, 0, payload, Some([1, 2, 3, 4]));
        b
    }

    fn all_events(dec: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Event>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(e) = dec.next_event(buf)? {
            out.push(e);
        }
        Ok(out)
    }

    fn server() -> Decoder {
        Decoder::new(DecoderConfig::new(Role::Server))
    }

    #[test]
    fn single_text_frame_event_sequence() {
        let mut buf = client_frame(OpCode::Text, true, b"Hello");
        let ev = all_events(&mut server(), &mut buf).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::MessageBegin { kind: MessageKind::Text, compressed: false },
                Event::FrameBegin { len: 5, fin: true },
                Event::FrameData(Bytes::from_static(b"Hello")),
                Event::FrameEnd { fin: true },
                Event::MessageEnd,
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_frame_has_no_data_event() {
        let mut buf = client_frame(OpCode::Binary, true, b"");
        let ev = all_events(&mut server(), &mut buf).unwrap();
        assert_eq!(ev.len(), 4);
        assert!(!ev.iter().any(|e| matches!(e, Event::FrameData(_))));
    }

    #[test]
    fn fragmented_with_interleaved_ping() {
        let mut buf = client_frame(OpCode::Text, false, b"Hel");
        buf.extend_from_slice(&client_frame(OpCode::Ping, true, b"p"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, b"lo"));
        let ev = all_events(&mut server(), &mut buf).unwrap();
        assert_eq!(ev[3], Event::FrameEnd { fin: false });
        assert_eq!(ev[4], Event::Ping(Bytes::from_static(b"p")));
        assert_eq!(ev[5], Event::FrameBegin { len: 2, fin: true });
        assert_eq!(ev.last(), Some(&Event::MessageEnd));
    }

    #[test]
    fn partial_payload_is_delivered_as_it_arrives() {
        let whole = client_frame(OpCode::Binary, true, &[7u8; 100]);
        let mut dec = server();
        let mut buf = BytesMut::from(&whole[..50]);
        let ev = all_events(&mut dec, &mut buf).unwrap();
        let got: usize = ev.iter().map(|e| if let Event::FrameData(d) = e { d.len() } else { 0 }).sum();
        assert_eq!(got, 50 - 6);
        buf.extend_from_slice(&whole[50..]);
        let ev = all_events(&mut dec, &mut buf).unwrap();
        assert_eq!(ev[0], Event::FrameData(Bytes::from(vec![7u8; 56])));
        assert_eq!(ev.last(), Some(&Event::MessageEnd));
    }

    #[test]
    fn control_frame_waits_until_whole() {
        let whole = client_frame(OpCode::Ping, true, b"12345");
        let mut dec = server();
        let mut buf = BytesMut::from(&whole[..8]);
        assert_eq!(dec.next_event(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 8, "nothing consumed");
        assert_eq!(dec.bytes_needed(&buf), 3);
        buf.extend_from_slice(&whole[8..]);
        assert_eq!(dec.next_event(&mut buf).unwrap(), Some(Event::Ping(Bytes::from_static(b"12345"))));
    }

    #[test]
    fn server_rejects_unmasked_and_client_rejects_masked() {
        let mut b = BytesMut::new();
        write_frame(&mut b, OpCode::Text, true, 0, b"x", None);
        assert_eq!(server().next_event(&mut b.clone()), Err(ProtocolError::UnmaskedFrame));
        let mut client = Decoder::new(DecoderConfig::new(Role::Client));
        assert!(client.next_event(&mut b).unwrap().is_some());
        let mut m = client_frame(OpCode::Text, true, b"x");
        let mut client = Decoder::new(DecoderConfig::new(Role::Client));
        assert_eq!(client.next_event(&mut m), Err(ProtocolError::MaskedFrame));
    }

    #[test]
    fn continuation_rules() {
        let mut b = client_frame(OpCode::Continuation, true, b"x");
        assert_eq!(server().next_event(&mut b), Err(ProtocolError::UnexpectedContinuation));
        let mut b = client_frame(OpCode::Text, false, b"x");
        b.extend_from_slice(&client_frame(OpCode::Binary, true, b"y"));
        assert_eq!(all_events(&mut server(), &mut b), Err(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn rsv_bits_fail_without_extension() {
        let mut b = BytesMut::new();
        write_frame(&mut b, OpCode::Text, true, 0b010, b"x", Some([0; 4]));
        assert_eq!(server().next_event(&mut b), Err(ProtocolError::ReservedBits(0b010)));
    }

    #[test]
    fn rsv1_allowed_only_on_first_frame_with_extension() {
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.allowed_rsv = RSV1;
        let mut b = BytesMut::new();
        write_frame(&mut b, OpCode::Text, false, RSV1, b"\xff", Some([0; 4]));
        write_frame(&mut b, OpCode::Continuation, true, RSV1, b"x", Some([0; 4]));
        let mut dec = Decoder::new(cfg);
        assert_eq!(
            dec.next_event(&mut b).unwrap(),
            Some(Event::MessageBegin { kind: MessageKind::Text, compressed: true })
        );
        // Compressed text is not validated here: 0xff passes (the extension validates after inflating).
        assert_eq!(dec.next_event(&mut b).unwrap(), Some(Event::FrameBegin { len: 1, fin: false }));
        assert_eq!(dec.next_event(&mut b).unwrap(), Some(Event::FrameData(Bytes::from_static(b"\xff"))));
        assert_eq!(dec.next_event(&mut b).unwrap(), Some(Event::FrameEnd { fin: false }));
        assert_eq!(dec.next_event(&mut b), Err(ProtocolError::ReservedBits(RSV1)));
        // And never on control frames.
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.allowed_rsv = RSV1;
        let mut b = BytesMut::new();
        write_frame(&mut b, OpCode::Ping, true, RSV1, b"", Some([0; 4]));
        assert_eq!(Decoder::new(cfg).next_event(&mut b), Err(ProtocolError::ReservedBits(RSV1)));
    }

    #[test]
    fn frame_limit_fails_before_payload_arrives() {
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.max_frame_size = Some(10);
        // Only the header of an 11-byte frame: rejected at once, nothing buffered.
        let whole = client_frame(OpCode::Binary, true, &[0; 11]);
        let mut b = BytesMut::from(&whole[..6]);
        assert_eq!(Decoder::new(cfg).next_event(&mut b), Err(ProtocolError::FrameTooBig { size: 11, max: 10 }));
    }

    #[test]
    fn message_limit_counts_all_fragments() {
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.max_message_size = Some(10);
        let mut b = client_frame(OpCode::Binary, false, &[0; 6]);
        b.extend_from_slice(&client_frame(OpCode::Continuation, true, &[0; 6]));
        let r = all_events(&mut Decoder::new(cfg), &mut b);
        assert_eq!(r, Err(ProtocolError::MessageTooBig { size: 12, max: 10 }));
    }

    #[test]
    fn fragment_count_limit() {
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.max_fragments = Some(3);
        let mut b = client_frame(OpCode::Binary, false, b"a");
        for _ in 0..3 {
            b.extend_from_slice(&client_frame(OpCode::Continuation, false, b"a"));
        }
        let r = all_events(&mut Decoder::new(cfg), &mut b);
        assert_eq!(r, Err(ProtocolError::TooManyFragments { max: 3 }));
    }

    #[test]
    fn utf8_fails_fast_inside_a_frame() {
        // The frame is announced as 20 bytes but only the bad prefix has arrived.
        let payload = b"ab\xc0\xafcdefghijklmnopqr";
        let whole = client_frame(OpCode::Text, true, payload);
        let mut b = BytesMut::from(&whole[..6 + 4]);
        let r = all_events(&mut server(), &mut b);
        assert_eq!(r, Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let s = "€".as_bytes();
        let mut b = client_frame(OpCode::Text, false, &s[..1]);
        b.extend_from_slice(&client_frame(OpCode::Continuation, false, &s[1..2]));
        b.extend_from_slice(&client_frame(OpCode::Continuation, true, &s[2..]));
        let ev = all_events(&mut server(), &mut b).unwrap();
        assert_eq!(ev.last(), Some(&Event::MessageEnd));
    }

    #[test]
    fn utf8_incomplete_at_message_end_fails() {
        let mut b = client_frame(OpCode::Text, true, b"\xe2\x82");
        assert_eq!(all_events(&mut server(), &mut b), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn binary_is_not_validated() {
        let mut b = client_frame(OpCode::Binary, true, b"\xff\xfe");
        assert!(all_events(&mut server(), &mut b).is_ok());
    }

    #[test]
    fn close_frame_parsed_and_decoder_stops() {
        let mut b = client_frame(OpCode::Close, true, b"\x03\xe8ok");
        b.extend_from_slice(&client_frame(OpCode::Text, true, b"after"));
        let mut dec = server();
        match dec.next_event(&mut b).unwrap() {
            Some(Event::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::NORMAL);
                assert_eq!(&*f.reason, "ok");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dec.next_event(&mut b).unwrap(), None);
    }

    #[test]
    fn invalid_close_payloads() {
        let mut b = client_frame(OpCode::Close, true, b"\x03");
        assert_eq!(server().next_event(&mut b), Err(ProtocolError::InvalidClosePayload));
        let mut b = client_frame(OpCode::Close, true, b"\x03\xe8\xff");
        assert_eq!(server().next_event(&mut b), Err(ProtocolError::InvalidUtf8));
        let mut b = client_frame(OpCode::Close, true, &999u16.to_be_bytes());
        assert_eq!(server().next_event(&mut b), Err(ProtocolError::InvalidCloseCode(999)));
    }

    #[test]
    fn whole_message_fast_path_matches_the_event_sequence() {
        let mut buf = client_frame(OpCode::Text, true, "héllo".as_bytes());
        buf.extend_from_slice(&client_frame(OpCode::Text, false, b"frag"));
        let mut dec = server();
        let (kind, payload) = dec.try_whole_message(&mut buf).unwrap().unwrap();
        assert_eq!((kind, &payload[..]), (MessageKind::Text, "héllo".as_bytes()));
        // A fragment is not a whole message: the fast path declines and leaves it alone.
        let before = buf.len();
        assert_eq!(dec.try_whole_message(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), before);
        assert_eq!(
            dec.next_event(&mut buf).unwrap(),
            Some(Event::MessageBegin { kind: MessageKind::Text, compressed: false })
        );
        // Inside a message it always declines.
        let mut more = client_frame(OpCode::Binary, true, b"x");
        assert_eq!(dec.try_whole_message(&mut more).unwrap(), None);
    }

    #[test]
    fn whole_message_fast_path_declines_what_it_does_not_check() {
        let mut dec = server();
        // Incomplete, unmasked (a protocol error left to next_event), over the limit, RSV set.
        let whole = client_frame(OpCode::Binary, true, &[1; 10]);
        assert_eq!(dec.try_whole_message(&mut BytesMut::from(&whole[..8])).unwrap(), None);
        let mut unmasked = BytesMut::new();
        write_frame(&mut unmasked, OpCode::Binary, true, 0, b"x", None);
        assert_eq!(dec.try_whole_message(&mut unmasked).unwrap(), None);
        assert_eq!(dec.next_event(&mut unmasked), Err(ProtocolError::UnmaskedFrame));
        let mut cfg = DecoderConfig::new(Role::Server);
        cfg.max_message_size = Some(5);
        let mut big = client_frame(OpCode::Binary, true, &[0; 6]);
        let mut dec = Decoder::new(cfg);
        assert_eq!(dec.try_whole_message(&mut big).unwrap(), None);
        assert!(dec.next_event(&mut big).is_err());
        let mut rsv = BytesMut::new();
        write_frame(&mut rsv, OpCode::Binary, true, RSV1, b"x", Some([0; 4]));
        assert_eq!(server().try_whole_message(&mut rsv).unwrap(), None);
    }

    #[test]
    fn whole_message_fast_path_rejects_invalid_utf8() {
        let mut buf = client_frame(OpCode::Text, true, b"\xc0\xaf");
        let mut dec = server();
        assert_eq!(dec.try_whole_message(&mut buf), Err(ProtocolError::InvalidUtf8));
        assert_eq!(dec.next_event(&mut buf).unwrap(), None, "nothing after the error");
    }

    #[test]
    fn awaits_only_incomplete_whole_binary_frames_within_the_limit() {
        let whole = client_frame(OpCode::Binary, true, &[5; 1000]);
        let look = |bytes: &[u8], limit: usize| {
            let mut buf = BytesMut::from(bytes);
            let r = server().whole_message(&mut buf, limit).unwrap();
            if !matches!(r, WholeMessage::Message(..)) {
                assert_eq!(&buf[..], bytes, "nothing consumed unless a message is returned");
            }
            r
        };
        assert_eq!(look(&whole[..500], 4096), WholeMessage::Incomplete { missing: whole.len() - 500 });
        assert_eq!(look(&whole, 4096), WholeMessage::Message(MessageKind::Binary, Bytes::from(vec![5; 1000])));
        assert_eq!(look(&whole[..500], 1000), WholeMessage::Decode, "over the limit: stream it");
        let text = client_frame(OpCode::Text, true, &[b'a'; 1000]);
        assert_eq!(look(&text[..500], 4096), WholeMessage::Decode, "text fails fast, never awaited");
        let frag = client_frame(OpCode::Binary, false, &[5; 1000]);
        assert_eq!(look(&frag[..500], 4096), WholeMessage::Decode);
        assert_eq!(look(&whole[..3], 4096), WholeMessage::Decode, "header incomplete");
    }

    #[test]
    fn needs_input_only_where_an_empty_buffer_yields_nothing() {
        let mut dec = server();
        assert!(dec.needs_input(), "between frames");
        let mut buf = client_frame(OpCode::Binary, true, b"");
        buf.extend_from_slice(&client_frame(OpCode::Binary, true, b"abc")[..7]);
        let mut seen = 0;
        loop {
            if buf.is_empty() && dec.needs_input() {
                assert_eq!(dec.clone().next_event(&mut buf).unwrap(), None);
                break;
            }
            match dec.next_event(&mut buf).unwrap() {
                Some(_) => seen += 1,
                None => panic!("decoder claimed progress without input"),
            }
        }
        // Empty frame: 4 events; second frame: MessageBegin, FrameBegin, one data byte.
        assert_eq!(seen, 7);
        assert!(matches!(dec.state, State::Payload { remaining: 2, .. }));
    }

    #[test]
    fn nothing_after_an_error() {
        let mut b = client_frame(OpCode::Continuation, true, b"x");
        let mut dec = server();
        assert!(dec.next_event(&mut b).is_err());
        let mut good = client_frame(OpCode::Text, true, b"x");
        assert_eq!(dec.next_event(&mut good).unwrap(), None);
    }
}
