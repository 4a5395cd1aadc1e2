//! Property tests of the sans-IO protocol core (`wsloop::protocol`).
//!
//! - Frames encoded with `write_frame` decode back to the same frames, whatever the byte stream is
//!   split into: at every split point for short frames, at random points (and at every point of the
//!   header) for frames up to 70,000 bytes, so all three length forms are covered.
//! - Sequences of fragmented messages with interleaved control frames round-trip, frame by frame and
//!   message by message (through `Accumulator`).
//! - `FrameHeader::encode` and `FrameHeader::parse` are inverse, and every strict prefix of a header
//!   is reported incomplete.
//! - `Utf8Validator` agrees with `std::str::from_utf8` on validity and error offset for any chunking,
//!   and fails fast: after each chunk it has failed exactly when the bytes so far cannot be the
//!   prefix of valid UTF-8.
//! - `apply_mask` equals the byte-at-a-time reference for every length, alignment and offset.
//! - The decoder never panics on arbitrary bytes, in both roles, and the events it produces are
//!   always well formed.
//!
//! Case counts are kept modest so the whole file runs in a few seconds in a debug build.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use wsloop::protocol::assembler::Accumulator;
use wsloop::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use wsloop::protocol::frame::{header_len, write_frame, FrameHeader, HeaderParse, OpCode, MAX_HEADER_LEN, RSV1};
use wsloop::protocol::mask::{apply_mask, apply_mask_bytewise};
use wsloop::protocol::message::{Message, MessageKind};
use wsloop::protocol::utf8::Utf8Validator;
use wsloop::ProtocolError;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// A frame as the tests see it, both when building the stream and after decoding it. `compressed`
/// is RSV1 on the first frame of a message, the only RSV bit the decoder's events expose.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    compressed: bool,
    payload: Vec<u8>,
}

/// A frame to encode: a `Frame` plus the raw RSV bits written on the wire.
#[derive(Debug, Clone)]
struct Wire {
    frame: Frame,
    rsv: u8,
}

/// splitmix64: cheap deterministic filler, so large payloads cost one `u64` of strategy input.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Characters of every UTF-8 width, including the boundaries of each width and of the surrogates.
const CHARS: &[char] = &[
    'a',
    'Z',
    ' ',
    '\0',
    '\u{7f}',
    '\u{80}',
    'é',
    '\u{7ff}',
    '\u{800}',
    '€',
    '\u{d7ff}',
    '\u{e000}',
    '\u{fffd}',
    '\u{ffff}',
    '\u{10000}',
    '𝄞',
    '😀',
    '\u{10ffff}',
];

/// Valid UTF-8 of at most `max_len` bytes and close to it.
fn random_text(seed: u64, max_len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = String::with_capacity(max_len);
    loop {
        let r = splitmix(&mut s);
        // Mostly ASCII runs, like real text, with multi-byte characters mixed in.
        let c = if r % 3 == 0 { CHARS[(r >> 8) as usize % CHARS.len()] } else { (b'a' + (r >> 8) as u8 % 26) as char };
        if out.len() + c.len_utf8() > max_len {
            break;
        }
        out.push(c);
    }
    out.into_bytes()
}

/// Sorted, deduplicated cut points in `0..=len` from proptest indices.
fn cut_points(len: usize, idx: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// `bytes` split at the given (sorted) cut points.
fn split_at_cuts<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts {
        out.push(&bytes[start..c]);
        start = c;
    }
    out.push(&bytes[start..]);
    out
}

/// Encode frames as `role`'s peer would send them: masked (with keys from `seed`) towards a server,
/// unmasked towards a client.
fn encode(frames: &[Wire], role: Role, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut buf = BytesMut::new();
    for w in frames {
        let mask = match role {
            Role::Server => Some(splitmix(&mut s).to_le_bytes()[..4].try_into().unwrap()),
            Role::Client => None,
        };
        write_frame(&mut buf, w.frame.opcode, w.frame.fin, w.rsv, &w.frame.payload, mask);
    }
    buf.to_vec()
}

/// A decoder with no size limits and every RSV bit allowed, so any frame the tests build is legal.
fn permissive(role: Role) -> Decoder {
    let mut cfg = DecoderConfig::new(role);
    cfg.max_frame_size = None;
    cfg.max_message_size = None;
    cfg.max_fragments = None;
    cfg.allowed_rsv = 0b111;
    Decoder::new(cfg)
}

/// Rebuilds frames and messages from decoder events, asserting that the event stream is well formed:
/// `MessageBegin (FrameBegin FrameData* FrameEnd)+ MessageEnd`, control frames only between data
/// frames, `FrameData` never empty and never more than announced, nothing after `Close`, and text
/// messages valid UTF-8.
#[derive(Debug, Default)]
struct Collector {
    frames: Vec<Frame>,
    messages: Vec<(MessageKind, Vec<u8>)>,
    message: Option<(MessageKind, bool)>,
    first_frame: bool,
    current: Option<(Frame, u64)>,
    acc: Accumulator,
    closed: bool,
}

impl Collector {
    fn push(&mut self, ev: Event) {
        assert!(!self.closed, "event after Close: {ev:?}");
        match ev {
            Event::MessageBegin { kind, compressed } => {
                assert!(self.message.is_none() && self.current.is_none(), "MessageBegin inside a message");
                self.message = Some((kind, compressed));
                self.first_frame = true;
            }
            Event::FrameBegin { len, fin } => {
                assert!(self.current.is_none(), "FrameBegin inside a frame");
                let (kind, compressed) = self.message.expect("FrameBegin outside a message");
                let opcode = match (self.first_frame, kind) {
                    (false, _) => OpCode::Continuation,
                    (true, MessageKind::Text) => OpCode::Text,
                    (true, MessageKind::Binary) => OpCode::Binary,
                };
                let frame = Frame { opcode, fin, compressed: compressed && self.first_frame, payload: Vec::new() };
                self.first_frame = false;
                self.current = Some((frame, len));
            }
            Event::FrameData(data) => {
                let (frame, len) = self.current.as_mut().expect("FrameData outside a frame");
                assert!(!data.is_empty(), "empty FrameData");
                frame.payload.extend_from_slice(&data);
                assert!(frame.payload.len() as u64 <= *len, "more data than announced");
                self.acc.push(data);
            }
            Event::FrameEnd { fin } => {
                let (frame, len) = self.current.take().expect("FrameEnd outside a frame");
                assert_eq!(frame.payload.len() as u64, len, "frame ended before its announced length");
                assert_eq!(frame.fin, fin);
                self.frames.push(frame);
            }
            Event::MessageEnd => {
                assert!(self.current.is_none(), "MessageEnd inside a frame");
                assert!(self.frames.last().is_some_and(|f| f.fin), "MessageEnd without a final frame");
                let (kind, compressed) = self.message.take().expect("MessageEnd outside a message");
                let payload = if kind == MessageKind::Text && !compressed {
                    let m = self.acc.take_message(kind);
                    assert!(matches!(m, Message::Text(_)));
                    let bytes = m.as_bytes().to_vec();
                    assert!(std::str::from_utf8(&bytes).is_ok(), "text message is not UTF-8");
                    bytes
                } else {
                    self.acc.take().to_vec()
                };
                self.messages.push((kind, payload));
            }
            Event::Ping(p) | Event::Pong(p) if p.len() > 125 => panic!("control payload of {} bytes", p.len()),
            Event::Ping(p) => self.control(OpCode::Ping, p.to_vec()),
            Event::Pong(p) => self.control(OpCode::Pong, p.to_vec()),
            Event::Close(c) => {
                let payload = match c {
                    None => Vec::new(),
                    Some(f) => {
                        assert!(f.code.is_sendable());
                        let mut p = f.code.0.to_be_bytes().to_vec();
                        p.extend_from_slice(f.reason.as_bytes());
                        p
                    }
                };
                self.control(OpCode::Close, payload);
                self.closed = true;
            }
        }
    }

    fn control(&mut self, opcode: OpCode, payload: Vec<u8>) {
        assert!(self.current.is_none(), "control frame inside a data frame");
        self.frames.push(Frame { opcode, fin: true, compressed: false, payload });
    }
}

/// Feed `chunks` one after another to a fresh permissive decoder, draining events after each.
fn decode_chunks(role: Role, chunks: &[&[u8]]) -> Result<Collector, ProtocolError> {
    let mut dec = permissive(role);
    let mut buf = BytesMut::new();
    let mut col = Collector::default();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(ev) = dec.next_event(&mut buf)? {
            col.push(ev);
        }
    }
    assert!(buf.is_empty() || col.closed, "{} bytes left undecoded", buf.len());
    Ok(col)
}

fn role_of(server: bool) -> Role {
    if server {
        Role::Server
    } else {
        Role::Client
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for frames
// ---------------------------------------------------------------------------------------------

/// Payload lengths across the 7-bit, 16-bit and 64-bit length forms and their boundaries.
fn payload_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..=125usize,
        2 => 126..=1024usize,
        1 => 1025..=65535usize,
        1 => 65536..=70000usize,
        2 => select(vec![0usize, 1, 2, 125, 126, 127, 65535, 65536, 65537]),
    ]
    .prop_map(move |n| n.min(max))
}

const OPCODES: [OpCode; 6] =
    [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong];

const CLOSE_CODES: &[u16] = &[1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999];

/// One frame that is legal on its own (a continuation is preceded by an empty non-final binary
/// frame to open its message), with payload up to `max` bytes.
fn single_frame(max: usize) -> impl Strategy<Value = Vec<Wire>> {
    (0u8..6, any::<bool>(), 0u8..8, payload_len(max), any::<u64>(), select(CLOSE_CODES)).prop_map(
        |(op, fin, rsv, len, seed, code)| {
            let opcode = OPCODES[op as usize];
            if opcode.is_control() {
                let len = len % 126;
                let payload = match opcode {
                    OpCode::Close if len < 2 => Vec::new(),
                    OpCode::Close => {
                        let mut p = code.to_be_bytes().to_vec();
                        p.extend(random_text(seed, len - 2));
                        p
                    }
                    _ => random_bytes(seed, len),
                };
                return vec![Wire { frame: Frame { opcode, fin: true, compressed: false, payload }, rsv: 0 }];
            }
            let compressed = opcode != OpCode::Continuation && rsv & RSV1 != 0;
            let payload = if opcode == OpCode::Text && !compressed {
                random_text(seed, len)
            } else {
                // Binary, continuation, or compressed text (which the decoder does not validate).
                random_bytes(seed, len)
            };
            let rsv = if opcode == OpCode::Continuation { rsv & !RSV1 } else { rsv };
            let frame = Wire { frame: Frame { opcode, fin, compressed, payload }, rsv };
            if opcode == OpCode::Continuation {
                let opener = Frame { opcode: OpCode::Binary, fin: false, compressed: false, payload: Vec::new() };
                vec![Wire { frame: opener, rsv: 0 }, frame]
            } else {
                vec![frame]
            }
        },
    )
}

fn expected(frames: &[Wire]) -> Vec<Frame> {
    frames.iter().map(|w| w.frame.clone()).collect()
}

/// One data message, its fragmentation and the control frames interleaved with its fragments.
#[derive(Debug, Clone)]
struct MessageSpec {
    kind: MessageKind,
    compressed: bool,
    data: Vec<u8>,
    fragment_cuts: Vec<usize>,
    /// (number of fragments sent before it, ping?, payload)
    controls: Vec<(usize, bool, Vec<u8>)>,
    rsv_extra: Vec<u8>,
}

fn message_spec() -> impl Strategy<Value = MessageSpec> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![4 => 0..=300usize, 1 => 301..=3000usize],
        any::<u64>(),
        prop::collection::vec(any::<Index>(), 0..4),
        prop::collection::vec((0..5usize, any::<bool>(), 0..=125usize, any::<u64>()), 0..3),
        prop::collection::vec(0u8..4, 5),
    )
        .prop_map(|(text, compressed, len, seed, cuts, controls, rsv_extra)| {
            let kind = if text { MessageKind::Text } else { MessageKind::Binary };
            // Uncompressed text is valid UTF-8; fragment cuts may still fall inside characters.
            let data = if text && !compressed { random_text(seed, len) } else { random_bytes(seed, len) };
            let fragment_cuts = cut_points(data.len(), &cuts);
            let controls = controls
                .into_iter()
                .map(|(after, ping, n, s)| (after % (fragment_cuts.len() + 1), ping, random_bytes(s, n)))
                .collect();
            MessageSpec { kind, compressed, data, fragment_cuts, controls, rsv_extra }
        })
}

/// The wire frames for a sequence of messages (then optionally a close frame), and the messages.
fn build_sequence(specs: &[MessageSpec], close: Option<u16>) -> (Vec<Wire>, Vec<(MessageKind, Vec<u8>)>) {
    let mut frames = Vec::new();
    let mut messages = Vec::new();
    for m in specs {
        let pieces = split_at_cuts(&m.data, &m.fragment_cuts);
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            for (_, ping, p) in m.controls.iter().filter(|c| c.0 == i && i > 0) {
                let opcode = if *ping { OpCode::Ping } else { OpCode::Pong };
                frames.push(Wire { frame: Frame { opcode, fin: true, compressed: false, payload: p.clone() }, rsv: 0 });
            }
            let first = i == 0;
            let opcode = match (first, m.kind) {
                (false, _) => OpCode::Continuation,
                (true, MessageKind::Text) => OpCode::Text,
                (true, MessageKind::Binary) => OpCode::Binary,
            };
            // RSV2/RSV3 are allowed by the permissive decoder on any data frame; RSV1 only first.
            let mut rsv = m.rsv_extra[i % m.rsv_extra.len()] & 0b011;
            if first && m.compressed {
                rsv |= RSV1;
            }
            let frame = Frame { opcode, fin: i + 1 == n, compressed: first && m.compressed, payload: piece.to_vec() };
            frames.push(Wire { frame, rsv });
        }
        // Controls placed "before fragment 0" go between messages, after this one.
        for (_, ping, p) in m.controls.iter().filter(|c| c.0 == 0) {
            let opcode = if *ping { OpCode::Ping } else { OpCode::Pong };
            frames.push(Wire { frame: Frame { opcode, fin: true, compressed: false, payload: p.clone() }, rsv: 0 });
        }
        messages.push((m.kind, m.data.clone()));
    }
    if let Some(code) = close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("bye €".as_bytes());
        frames.push(Wire { frame: Frame { opcode: OpCode::Close, fin: true, compressed: false, payload }, rsv: 0 });
    }
    (frames, messages)
}

// ---------------------------------------------------------------------------------------------
// Frame round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Short frames (7-bit and 16-bit length forms): every split point, and one byte at a time.
    #[test]
    fn short_frame_round_trips_at_every_split_point(
        frames in single_frame(300),
        server in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let role = role_of(server);
        let bytes = encode(&frames, role, seed);
        let want = expected(&frames);
        for s in 0..=bytes.len() {
            let got = decode_chunks(role, &[&bytes[..s], &bytes[s..]]).unwrap();
            prop_assert_eq!(&got.frames, &want, "split at {}", s);
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let got = decode_chunks(role, &singles).unwrap();
        prop_assert_eq!(&got.frames, &want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Frames up to 70,000 bytes (all three length forms): random split points, plus every split
    /// point inside the header and around the end.
    #[test]
    fn frame_round_trips_at_random_splits(
        frames in single_frame(70_000),
        server in any::<bool>(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let role = role_of(server);
        let bytes = encode(&frames, role, seed);
        let want = expected(&frames);
        let got = decode_chunks(role, &[&bytes]).unwrap();
        prop_assert_eq!(&got.frames, &want);
        let cuts = cut_points(bytes.len(), &cuts);
        let got = decode_chunks(role, &split_at_cuts(&bytes, &cuts)).unwrap();
        prop_assert_eq!(&got.frames, &want, "cuts {:?}", cuts);
        let header_area = (MAX_HEADER_LEN * 2 + 2).min(bytes.len());
        let splits = (0..=header_area).chain(bytes.len().saturating_sub(3)..=bytes.len());
        for s in splits {
            let got = decode_chunks(role, &[&bytes[..s], &bytes[s..]]).unwrap();
            prop_assert_eq!(&got.frames, &want, "split at {}", s);
        }
    }

    /// Several messages, fragmented, with pings and pongs between fragments and between messages,
    /// optionally ending with a close frame: frames and assembled messages come back identical.
    #[test]
    fn fragmented_message_sequence_round_trips(
        specs in prop::collection::vec(message_spec(), 1..5),
        close in prop::option::of(select(CLOSE_CODES)),
        server in any::<bool>(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let role = role_of(server);
        let (frames, messages) = build_sequence(&specs, close);
        let bytes = encode(&frames, role, seed);
        let want = expected(&frames);
        let cuts = cut_points(bytes.len(), &cuts);
        let got = decode_chunks(role, &split_at_cuts(&bytes, &cuts)).unwrap();
        prop_assert_eq!(&got.frames, &want, "cuts {:?}", cuts);
        prop_assert_eq!(&got.messages, &messages);
        prop_assert_eq!(got.closed, close.is_some());
        if bytes.len() <= 4096 {
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let got = decode_chunks(role, &singles).unwrap();
            prop_assert_eq!(&got.frames, &want);
            prop_assert_eq!(&got.messages, &messages);
        }
    }

    /// `encode` then `parse` is the identity, with the minimal length form; every strict prefix is
    /// incomplete and asks for no more bytes than the header has; trailing bytes are ignored.
    #[test]
    fn header_encode_parse_round_trip(
        fin in any::<bool>(),
        rsv in 0u8..8,
        op in 0u8..6,
        mask in any::<Option<[u8; 4]>>(),
        len in prop_oneof![
            0..=125u64,
            126..=65535u64,
            65536..=(u64::MAX >> 1),
            select(vec![0u64, 125, 126, 65535, 65536, u32::MAX as u64, u64::MAX >> 1]),
        ],
        trailer in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let opcode = OPCODES[op as usize];
        let (fin, len) = if opcode.is_control() { (true, len % 126) } else { (fin, len) };
        let h = FrameHeader { fin, rsv, opcode, mask, payload_len: len };
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut out);
        prop_assert_eq!(n, h.encoded_len());
        prop_assert_eq!(n, header_len(len, mask.is_some()));
        let minimal = if len < 126 { 2 } else if len <= 65535 { 4 } else { 10 };
        prop_assert_eq!(n, minimal + if mask.is_some() { 4 } else { 0 });
        let mut written = BytesMut::new();
        h.write(&mut written);
        prop_assert_eq!(&written[..], &out[..n]);
        prop_assert_eq!(FrameHeader::parse(&out[..n]).unwrap(), HeaderParse::Complete(h, n));
        let mut with_trailer = out[..n].to_vec();
        with_trailer.extend_from_slice(&trailer);
        prop_assert_eq!(FrameHeader::parse(&with_trailer).unwrap(), HeaderParse::Complete(h, n));
        for p in 0..n {
            match FrameHeader::parse(&out[..p]).unwrap() {
                HeaderParse::Incomplete(k) => prop_assert!(k >= 1 && p + k <= n, "prefix {} asks for {}", p, k),
                other => prop_assert!(false, "prefix {} parsed as {:?}", p, other),
            }
        }
    }

    /// `write_frame` is header then payload, masked with the key when there is one.
    #[test]
    fn write_frame_is_header_then_masked_payload(
        fin in any::<bool>(),
        rsv in 0u8..8,
        mask in any::<Option<[u8; 4]>>(),
        len in payload_len(70_000),
        seed in any::<u64>(),
    ) {
        let payload = random_bytes(seed, len);
        let mut buf = BytesMut::new();
        write_frame(&mut buf, OpCode::Binary, fin, rsv, &payload, mask);
        let (h, n) = match FrameHeader::parse(&buf).unwrap() {
            HeaderParse::Complete(h, n) => (h, n),
            HeaderParse::Incomplete(k) => panic!("incomplete, {k} more"),
        };
        prop_assert_eq!(h, FrameHeader { fin, rsv, opcode: OpCode::Binary, mask, payload_len: len as u64 });
        prop_assert_eq!(buf.len(), n + len);
        let mut body = buf[n..].to_vec();
        if let Some(key) = mask {
            apply_mask_bytewise(&mut body, key, 0);
        }
        prop_assert!(body == payload, "payload differs after unmasking");
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

/// Pieces of byte strings biased toward UTF-8 edge cases.
fn utf8_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(0x20u8..0x7f, 1..8),
        4 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        2 => select(CHARS).prop_map(|c| c.to_string().into_bytes()),
        // Invalid: surrogates, overlongs, above U+10FFFF, bytes that never appear, lone continuations.
        3 => select(vec![
            &b"\xed\xa0\x80"[..], b"\xed\xbf\xbf", b"\xed\xa0", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80",
            b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf4\x90",
            b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe", b"\x80", b"\xbf",
        ]).prop_map(<[u8]>::to_vec),
        // Valid boundary sequences next to the invalid ones.
        1 => select(vec![&b"\xed\x9f\xbf"[..], b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xe0\xa0\x80"])
            .prop_map(<[u8]>::to_vec),
        // Truncated multi-byte characters.
        2 => (any::<char>().prop_filter("multi-byte", |c| c.len_utf8() > 1), any::<Index>()).prop_map(|(c, i)| {
            let b = c.to_string().into_bytes();
            b[..1 + i.index(b.len() - 1)].to_vec()
        }),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ]
}

fn utf8_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(utf8_piece(), 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Validity and error offset agree with std for any chunking, and the validator fails fast: after
    /// each chunk it has failed exactly when std finds a definite error (`error_len` is `Some`) in
    /// the bytes fed so far, at the same offset.
    #[test]
    fn utf8_validator_matches_std_for_any_chunking(
        bytes in utf8_stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let cuts = cut_points(bytes.len(), &cuts);
        let std_result = std::str::from_utf8(&bytes);
        let mut v = Utf8Validator::new();
        let mut fed = 0;
        let mut result = Ok(());
        let mut failed_in_chunk_from = None;
        for chunk in split_at_cuts(&bytes, &cuts) {
            let chunk_start = fed;
            fed += chunk.len();
            result = v.feed(chunk);
            let prefix = std::str::from_utf8(&bytes[..fed]);
            match (&result, prefix) {
                (Ok(()), Ok(_)) => {}
                (Ok(()), Err(e)) => prop_assert!(
                    e.error_len().is_none(),
                    "not failed after {} bytes although std says invalid at {}", fed, e.valid_up_to()
                ),
                (Err(err), Err(e)) => {
                    prop_assert!(e.error_len().is_some(), "failed on a valid prefix of {} bytes", fed);
                    prop_assert_eq!(err.valid_up_to, e.valid_up_to() as u64);
                }
                (Err(err), Ok(_)) => prop_assert!(false, "failed at {} on valid input", err.valid_up_to),
            }
            if result.is_err() {
                failed_in_chunk_from = Some(chunk_start);
                break;
            }
        }
        // The fail-fast deadline stated directly: when std reports `error_len` Some, the validator
        // has failed by the time the chunk holding byte `valid_up_to + error_len` (the byte after
        // the invalid sequence, which proves a bad continuation; or the last byte) has been fed.
        if let Err(e) = std_result {
            if let Some(l) = e.error_len() {
                let deadline = (e.valid_up_to() + l).min(bytes.len() - 1);
                match failed_in_chunk_from {
                    Some(start) => prop_assert!(start <= deadline, "failed in a chunk from {} (deadline {})", start, deadline),
                    None => prop_assert!(false, "no error before finish() (deadline byte {})", deadline),
                }
            }
        }
        let final_result = result.and_then(|()| v.finish());
        match std_result {
            Ok(_) => prop_assert!(final_result.is_ok()),
            Err(e) => prop_assert_eq!(final_result.unwrap_err().valid_up_to, e.valid_up_to() as u64),
        }
    }

    /// Byte-at-a-time feeding is the finest chunking: the error comes at the exact byte.
    #[test]
    fn utf8_validator_byte_at_a_time(bytes in utf8_stream()) {
        let std_result = std::str::from_utf8(&bytes);
        let mut v = Utf8Validator::new();
        let mut failed_at = None;
        for (i, b) in bytes.iter().enumerate() {
            if let Err(e) = v.feed(std::slice::from_ref(b)) {
                failed_at = Some((i, e.valid_up_to));
                break;
            }
        }
        match (std_result, failed_at) {
            (Ok(_), None) => prop_assert!(v.finish().is_ok()),
            (Ok(_), Some((i, _))) => prop_assert!(false, "failed at byte {} of valid input", i),
            (Err(e), None) => {
                prop_assert!(e.error_len().is_none(), "missed an error at {}", e.valid_up_to());
                prop_assert_eq!(v.finish().unwrap_err().valid_up_to, e.valid_up_to() as u64);
            }
            (Err(e), Some((i, at))) => {
                prop_assert_eq!(at, e.valid_up_to() as u64);
                let l = e.error_len().expect("failed before the end on a truncated tail");
                // The byte that proves the error is the last of the invalid sequence (bytes that can
                // never appear) or the one after it (a bad continuation).
                prop_assert!(i + 1 == e.valid_up_to() + l || i == e.valid_up_to() + l, "failed at byte {}", i);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Masking
    // -----------------------------------------------------------------------------------------

    /// `apply_mask` equals the byte loop for any length, alignment, key and offset, and unmasking
    /// in arbitrary chunks (each with its own offset) equals unmasking at once.
    #[test]
    fn apply_mask_equals_bytewise(
        data in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), prop::collection::vec(any::<u8>(), 0..2048)],
        align in 0usize..8,
        key in any::<[u8; 4]>(),
        offset in prop_oneof![0usize..16, any::<usize>()],
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let mut storage = vec![0u8; align];
        storage.extend_from_slice(&data);
        let mut reference = data.clone();
        apply_mask_bytewise(&mut reference, key, offset);
        let fast = &mut storage[align..];
        apply_mask(fast, key, offset);
        prop_assert_eq!(&*fast, &reference[..]);
        // Involution.
        apply_mask(fast, key, offset);
        prop_assert_eq!(&*fast, &data[..]);
        // Chunked, as the decoder unmasks payload that arrives in pieces.
        let mut chunked = data.clone();
        let cuts = cut_points(chunked.len(), &cuts);
        let mut start = 0;
        for end in cuts.into_iter().chain(std::iter::once(data.len())) {
            apply_mask(&mut chunked[start..end], key, offset.wrapping_add(start));
            start = end;
        }
        prop_assert_eq!(chunked, reference);
    }

    // -----------------------------------------------------------------------------------------
    // Robustness
    // -----------------------------------------------------------------------------------------

    /// Arbitrary bytes, in both roles, with or without limits and extensions, split anywhere: the
    /// decoder never panics, its events are well formed, it returns nothing after an error, and it
    /// never produces an event while `bytes_needed` says it needs more.
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            frame_soup(),
        ],
        server in any::<bool>(),
        limits in any::<bool>(),
        allowed_rsv in 0u8..8,
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let role = role_of(server);
        let mut cfg = DecoderConfig::new(role);
        cfg.allowed_rsv = allowed_rsv;
        if limits {
            cfg.max_frame_size = Some(100);
            cfg.max_message_size = Some(300);
            cfg.max_fragments = Some(4);
        } else {
            cfg.max_frame_size = None;
            cfg.max_message_size = None;
            cfg.max_fragments = None;
        }
        let mut dec = Decoder::new(cfg);
        let mut buf = BytesMut::new();
        let mut col = Collector::default();
        let cuts = cut_points(bytes.len(), &cuts);
        'feed: for chunk in split_at_cuts(&bytes, &cuts) {
            buf.extend_from_slice(chunk);
            loop {
                let needed = dec.bytes_needed(&buf);
                match dec.next_event(&mut buf) {
                    Ok(Some(ev)) => {
                        prop_assert_eq!(needed, 0, "event although {} more bytes were needed", needed);
                        col.push(ev);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        prop_assert_eq!(dec.next_event(&mut buf), Ok(None));
                        buf.extend_from_slice(b"\x81\x80\0\0\0\0");
                        prop_assert_eq!(dec.next_event(&mut buf), Ok(None));
                        break 'feed;
                    }
                }
            }
        }
    }
}

/// Byte strings made of frame headers with random bits (all opcodes, lengths in every form, masked
/// or not) and random payloads that may be cut short: they get far deeper into the decoder than
/// uniform random bytes.
fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = (
        any::<u8>(),
        any::<bool>(),
        prop_oneof![0..=125u64, 126..=400u64, Just(65536u64), any::<u64>()],
        any::<[u8; 4]>(),
        any::<u64>(),
        prop_oneof![3 => Just(false), 1 => Just(true)],
        any::<bool>(),
    )
        .prop_map(|(b0, masked, len, key, seed, cut_short, text_payload)| {
            let mut out = vec![b0];
            let m = if masked { 0x80 } else { 0 };
            if len < 126 {
                out.push(m | len as u8);
            } else if len <= 0xffff {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            if masked {
                out.extend_from_slice(&key);
            }
            let body_len = (len.min(400) as usize) / if cut_short { 2 } else { 1 };
            let mut body = if text_payload { random_text(seed, body_len) } else { random_bytes(seed, body_len) };
            if masked {
                apply_mask(&mut body, key, 0);
            }
            out.extend_from_slice(&body);
            out
        });
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: edge cases worth pinning down regardless of what proptest draws
// ---------------------------------------------------------------------------------------------

#[test]
fn length_form_boundaries_round_trip_in_both_roles() {
    for len in [0usize, 125, 126, 65535, 65536] {
        for server in [false, true] {
            let role = role_of(server);
            let payload = random_bytes(len as u64, len);
            let frame = Frame { opcode: OpCode::Binary, fin: true, compressed: false, payload };
            let wires = [Wire { frame, rsv: 0 }];
            let bytes = encode(&wires, role, 7);
            let got = decode_chunks(role, &[&bytes]).unwrap();
            assert_eq!(got.frames, expected(&wires), "len {len}");
            assert_eq!(got.messages.len(), 1);
        }
    }
}

#[test]
fn mask_reference_accepts_any_offset() {
    // Only `offset % 4` matters, so offsets near `usize::MAX` are as valid as small ones.
    let key = [1, 2, 3, 4];
    for offset in [usize::MAX - 2, usize::MAX - 1, usize::MAX] {
        let mut a = *b"abcdefgh";
        let mut b = a;
        apply_mask(&mut a, key, offset);
        apply_mask_bytewise(&mut b, key, offset);
        assert_eq!(a, b, "offset {offset}");
    }
}
