//! Fuzz the frame-stream decoder (`wsloop::protocol::decoder::Decoder`) and message assembly
//! (`wsloop::protocol::assembler::Accumulator`).
//!
//! Input layout: byte 0 chooses the configuration (bit 0: role, bit 1: tight size limits, bits 2-4:
//! the RSV bits extensions allow), byte 1 chooses how the rest is split into reads (chunk sizes
//! from 1 up to 2^(b & 7), drawn from a generator seeded by the other bits), the rest is the byte
//! stream from the peer.
//!
//! Checked, beyond "never panics":
//! - the event stream is well formed (`MessageBegin (FrameBegin FrameData* FrameEnd)+ MessageEnd`,
//!   control frames only between data frames, `FrameData` never empty nor beyond the announced
//!   length, nothing after `Close` or after an error);
//! - assembled text messages are valid UTF-8 (and `Accumulator::take_message` debug-asserts it);
//! - `bytes_needed > 0` never comes with an event;
//! - decoding in chunks and decoding the whole stream at once give the same frames and the same
//!   error (differential check of the incremental paths; the length inside `ControlFrameTooLong`
//!   is excluded, see `comparable`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsloop::protocol::assembler::Accumulator;
use wsloop::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use wsloop::protocol::message::{Message, MessageKind};
use wsloop::ProtocolError;

fn config(flags: u8) -> DecoderConfig {
    let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
    let mut cfg = DecoderConfig::new(role);
    cfg.allowed_rsv = (flags >> 2) & 0b111;
    if flags & 2 != 0 {
        cfg.max_frame_size = Some(100);
        cfg.max_message_size = Some(300);
        cfg.max_fragments = Some(4);
    } else {
        cfg.max_frame_size = None;
        cfg.max_message_size = None;
        cfg.max_fragments = None;
    }
    cfg
}

/// Checks the event grammar and assembles messages.
#[derive(Default)]
struct Checker {
    message: Option<(MessageKind, bool)>,
    frame: Option<(u64, u64, bool)>, // (announced, received, fin)
    last_fin: bool,
    acc: Accumulator,
    closed: bool,
    messages: usize,
}

impl Checker {
    fn push(&mut self, ev: &Event) {
        assert!(!self.closed, "event after Close: {ev:?}");
        match ev {
            Event::MessageBegin { kind, compressed } => {
                assert!(self.message.is_none() && self.frame.is_none());
                self.message = Some((*kind, *compressed));
            }
            Event::FrameBegin { len, fin } => {
                assert!(self.message.is_some() && self.frame.is_none());
                self.frame = Some((*len, 0, *fin));
            }
            Event::FrameData(d) => {
                let (len, got, _) = self.frame.as_mut().expect("FrameData outside a frame");
                assert!(!d.is_empty());
                *got += d.len() as u64;
                assert!(*got <= *len);
                self.acc.push(d.clone());
            }
            Event::FrameEnd { fin } => {
                let (len, got, f) = self.frame.take().expect("FrameEnd outside a frame");
                assert_eq!((len, f), (got, *fin));
                self.last_fin = *fin;
            }
            Event::MessageEnd => {
                assert!(self.frame.is_none() && self.last_fin);
                let (kind, compressed) = self.message.take().expect("MessageEnd outside a message");
                if compressed {
                    // Compressed payload is validated by the extension after inflating.
                    self.acc.take();
                } else {
                    let m = self.acc.take_message(kind);
                    if let Message::Text(t) = &m {
                        assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                    }
                    assert_eq!(m.kind(), kind);
                }
                self.messages += 1;
            }
            Event::Ping(p) | Event::Pong(p) => {
                assert!(self.frame.is_none() && p.len() <= 125);
            }
            Event::Close(c) => {
                assert!(self.frame.is_none());
                if let Some(f) = c {
                    assert!(f.code.is_sendable() && f.reason.len() <= 123);
                }
                self.closed = true;
            }
        }
    }
}

/// Merge consecutive `FrameData` events, so streams decoded with different read sizes compare equal.
fn normalise(events: &mut Vec<Event>, ev: Event) {
    if let (Some(Event::FrameData(prev)), Event::FrameData(d)) = (events.last_mut(), &ev) {
        let mut joined = BytesMut::from(&prev[..]);
        joined.extend_from_slice(d);
        *prev = joined.freeze();
        return;
    }
    events.push(ev);
}

/// Drop the data of a frame cut short by an error: how much of it was delivered first depends on
/// the read sizes (fail-fast UTF-8 validation delivers the valid part of a chunk only if the chunk
/// ended before the error).
fn trim_for_error(events: &mut Vec<Event>) {
    while matches!(events.last(), Some(Event::FrameData(_))) {
        events.pop();
    }
}

fn decode(
    cfg: &DecoderConfig,
    stream: &[u8],
    sizes: &mut impl FnMut() -> usize,
) -> (Vec<Event>, Option<ProtocolError>) {
    let mut dec = Decoder::new(cfg.clone());
    let mut buf = BytesMut::new();
    let mut checker = Checker::default();
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let needed = dec.bytes_needed(&buf);
            match dec.next_event(&mut buf) {
                Ok(Some(ev)) => {
                    assert_eq!(needed, 0, "an event although bytes_needed said {needed}");
                    checker.push(&ev);
                    normalise(&mut events, ev);
                }
                Ok(None) => break,
                Err(e) => {
                    // Nothing after an error, whatever arrives.
                    buf.extend_from_slice(rest);
                    buf.extend_from_slice(b"\x82\x80\0\0\0\0\x82\x00");
                    assert_eq!(dec.next_event(&mut buf), Ok(None));
                    trim_for_error(&mut events);
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

/// `ControlFrameTooLong` carries the extended length only if it had arrived when the frame was
/// refused (it is refused from its first two bytes, by design: fail fast); otherwise it carries the
/// 7-bit marker 126 or 127. So its number legitimately depends on the read sizes.
fn comparable(e: Option<ProtocolError>) -> Option<ProtocolError> {
    match e {
        Some(ProtocolError::ControlFrameTooLong(_)) => Some(ProtocolError::ControlFrameTooLong(0)),
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cfg = config(data[0]);
    let split = data[1];
    let stream = &data[2..];

    let max = 1usize << (split & 7);
    let mut state = u32::from(split >> 3) | 0x9e37_0000;
    let mut chunked_sizes = move || {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max
    };
    let (chunked, chunked_err) = decode(&cfg, stream, &mut chunked_sizes);
    let (whole, whole_err) = decode(&cfg, stream, &mut || usize::MAX);
    assert_eq!(comparable(chunked_err), comparable(whole_err), "the error depends on how the stream was split");
    assert_eq!(chunked, whole, "the frames depend on how the stream was split");
});
