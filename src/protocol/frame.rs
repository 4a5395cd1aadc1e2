//! Frame headers (RFC 6455 §5.2): parsing and encoding.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! [`FrameHeader::parse`] checks the rules that need no connection state (reserved opcodes, control
//! frame FIN and length, the 64-bit length's high bit); the [`Decoder`](super::decoder::Decoder)
//! checks the rest (masking direction, RSV bits, fragmentation, limits).

use bytes::{BufMut, BytesMut};

use crate::error::ProtocolError;
use crate::protocol::mask::apply_mask;

/// The longest possible frame header: 2 + 8 (length) + 4 (mask) bytes.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (RFC 6455 §5.2). Reserved opcodes are rejected when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: first frame of a text message.
    Text = 0x1,
    /// 0x2: first frame of a binary message.
    Binary = 0x2,
    /// 0x8: connection close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or the reserved-opcode error.
    pub fn from_u8(v: u8) -> Result<OpCode, ProtocolError> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping or pong.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// The three RSV bits, as `RSV1 << 2 | RSV2 << 1 | RSV3`.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

/// The result of [`FrameHeader::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderParse {
    /// A whole header, and its length in bytes.
    Complete(FrameHeader, usize),
    /// The buffer ends inside the header: at least this many more bytes are needed.
    Incomplete(usize),
}

/// RSV1: the bit RFC 7692 (permessage-deflate) assigns to "this message is compressed".
pub const RSV1: u8 = 0b100;

impl FrameHeader {
    /// Parse a header from the start of `buf`, without consuming or copying anything.
    pub fn parse(buf: &[u8]) -> Result<HeaderParse, ProtocolError> {
        if buf.len() < 2 {
            return Ok(HeaderParse::Incomplete(2 - buf.len()));
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if len7 > MAX_CONTROL_PAYLOAD as u8 {
                // 126/127 announce an extended length, which is always > 125 for a control frame.
                let len = extended_len_hint(buf, len7);
                return Err(ProtocolError::ControlFrameTooLong(len));
            }
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(HeaderParse::Incomplete(header_len - buf.len()));
        }
        let payload_len = match len7 {
            126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidPayloadLength);
                }
                len
            }
            n => n as u64,
        };
        let mask = if masked {
            let m = 2 + ext;
            // One bounds check and one load instead of four.
            let mut key = [0u8; 4];
            key.copy_from_slice(&buf[m..m + 4]);
            Some(key)
        } else {
            None
        };
        Ok(HeaderParse::Complete(FrameHeader { fin, rsv, opcode, mask, payload_len }, header_len))
    }

    /// The encoded length of this header (minimal length form).
    pub fn encoded_len(&self) -> usize {
        header_len(self.payload_len, self.mask.is_some())
    }

    /// Append the encoded header to `dst`, using the minimal length form (RFC 6455 §5.2).
    pub fn write(&self, dst: &mut BytesMut) {
        let mut b = [0u8; MAX_HEADER_LEN];
        let n = self.encode(&mut b);
        dst.extend_from_slice(&b[..n]);
    }

    /// Encode the header into `out`, returning its length.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(m) = self.mask {
            out[n..n + 4].copy_from_slice(&m);
            n += 4;
        }
        n
    }
}

/// The length of a header for a payload of `payload_len` bytes.
#[inline]
pub fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as u64 {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// For error reports only: the extended length if it is already in the buffer.
fn extended_len_hint(buf: &[u8], len7: u8) -> u64 {
    match len7 {
        126 if buf.len() >= 4 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
        n => n as u64,
    }
}

/// Append a whole frame (header and payload) to `dst`. With a mask, the payload is masked as it is
/// copied; `payload` itself is left untouched.
pub fn write_frame(dst: &mut BytesMut, opcode: OpCode, fin: bool, rsv: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let header = FrameHeader { fin, rsv, opcode, mask, payload_len: payload.len() as u64 };
    dst.reserve(header.encoded_len() + payload.len());
    header.write(dst);
    let start = dst.len();
    dst.put_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_complete(buf: &[u8]) -> (FrameHeader, usize) {
        match FrameHeader::parse(buf).unwrap() {
            HeaderParse::Complete(h, n) => (h, n),
            HeaderParse::Incomplete(n) => panic!("incomplete, need {n}"),
        }
    }

    // The examples of RFC 6455 §5.7.
    #[test]
    fn rfc_single_frame_unmasked_text() {
        let (h, n) = parse_complete(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(n, 2);
        assert_eq!(h, FrameHeader { fin: true, rsv: 0, opcode: OpCode::Text, mask: None, payload_len: 5 });
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (h, n) = parse_complete(&bytes);
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut payload = bytes[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(&payload, b"Hello");
        let mut enc = BytesMut::new();
        write_frame(&mut enc, OpCode::Text, true, 0, b"Hello", h.mask);
        assert_eq!(&enc[..], &bytes[..]);
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let (h1, _) = parse_complete(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert!(!h1.fin);
        assert_eq!(h1.opcode, OpCode::Text);
        let (h2, _) = parse_complete(&[0x80, 0x02, 0x6c, 0x6f]);
        assert!(h2.fin);
        assert_eq!(h2.opcode, OpCode::Continuation);
    }

    #[test]
    fn rfc_ping_and_pong() {
        let (h, _) = parse_complete(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(h.opcode, OpCode::Ping);
        let (h, n) = parse_complete(&[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!((h.opcode, n, h.payload_len), (OpCode::Pong, 6, 5));
    }

    #[test]
    fn rfc_256_byte_and_64k_binary() {
        let (h, n) = parse_complete(&[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!((h.payload_len, n), (256, 4));
        let (h, n) = parse_complete(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn encode_uses_minimal_length_form() {
        for (len, expect) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (1 << 40, 10)] {
            let h = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: len };
            let mut b = [0u8; MAX_HEADER_LEN];
            assert_eq!(h.encode(&mut b), expect, "len {len}");
            assert_eq!(h.encoded_len(), expect);
            assert_eq!(parse_complete(&b[..expect]).0, h);
        }
    }

    #[test]
    fn incomplete_reports_bytes_needed() {
        assert_eq!(FrameHeader::parse(&[]).unwrap(), HeaderParse::Incomplete(2));
        assert_eq!(FrameHeader::parse(&[0x82]).unwrap(), HeaderParse::Incomplete(1));
        assert_eq!(FrameHeader::parse(&[0x82, 0x7e, 0x01]).unwrap(), HeaderParse::Incomplete(1));
        assert_eq!(FrameHeader::parse(&[0x82, 0xff, 0, 0]).unwrap(), HeaderParse::Incomplete(10));
    }

    #[test]
    fn reserved_opcodes_fail() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(FrameHeader::parse(&[0x80 | op, 0]), Err(ProtocolError::ReservedOpcode(op)));
        }
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        assert_eq!(FrameHeader::parse(&[0x09, 0x00]), Err(ProtocolError::FragmentedControlFrame));
        assert_eq!(FrameHeader::parse(&[0x89, 0x7e, 0x00, 0x7e]), Err(ProtocolError::ControlFrameTooLong(126)));
        assert!(matches!(
            FrameHeader::parse(&[0x88, 0x7d]),
            Ok(HeaderParse::Incomplete(_)) | Ok(HeaderParse::Complete(..))
        ));
    }

    #[test]
    fn length_high_bit_fails() {
        assert_eq!(
            FrameHeader::parse(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidPayloadLength)
        );
    }

    #[test]
    fn rsv_bits_are_reported() {
        let (h, _) = parse_complete(&[0xc1, 0x00]);
        assert_eq!(h.rsv, RSV1);
        let (h, _) = parse_complete(&[0x91, 0x00]);
        assert_eq!(h.rsv, 0b001);
    }
}
