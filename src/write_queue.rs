//! A connection's outgoing bytes, written with vectored writes when the socket is writable.
//!
//! Small frames are copied into one contiguous tail buffer, so a turn's worth of small messages
//! leaves in one `write`. Large payloads (and shared prepared frames) are queued as their own
//! `Bytes`, by reference, and go out in the same `writev` as the frames around them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::protocol::mask::apply_mask;

/// Payloads at least this long are queued by reference instead of copied.
pub(crate) const COPY_THRESHOLD: usize = 4096;
/// Tail capacity kept after the queue drains; more is released so idle connections stay small.
const KEEP_CAPACITY: usize = 4096;
/// Tail room reserved when a large frame's header finds none: enough for about a hundred
/// headers, and within [`KEEP_CAPACITY`], so a drained queue keeps it.
const HEADER_ROOM: usize = 1024;
/// Most slices in one `writev`.
const MAX_IOVECS: usize = 64;

/// Outgoing bytes of one connection.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    /// Sealed chunks, in order, before `tail`.
    chunks: VecDeque<Bytes>,
    /// Small frames appended after the chunks.
    tail: BytesMut,
    len: usize,
}

impl WriteQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory held by the tail buffer.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Queue raw bytes (an HTTP head), copied.
    pub fn push_slice(&mut self, b: &[u8]) {
        self.tail.extend_from_slice(b);
        self.len += b.len();
    }

    /// Queue shared bytes by reference (small ones are copied: a reference costs a queue slot
    /// and an iovec, a copy of a few bytes costs less).
    pub fn push_bytes(&mut self, b: Bytes) {
        if b.len() < 256 {
            self.push_slice(&b);
            return;
        }
        self.seal();
        self.len += b.len();
        self.chunks.push_back(b);
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }

    /// Queue one frame; returns the bytes queued. A masked payload is masked as it is copied; an
    /// unmasked payload of at least [`COPY_THRESHOLD`] bytes is queued by reference.
    pub fn push_frame(&mut self, opcode: OpCode, fin: bool, rsv: u8, payload: &Bytes, mask: Option<[u8; 4]>) -> usize {
        if mask.is_none() && payload.len() < 126 {
            // The common small server frame: a two-byte header and the payload, appended in
            // place (RFC 6455 §5.2: FIN, RSV, opcode; then the 7-bit length, mask bit clear).
            let n = 2 + payload.len();
            self.tail.reserve(n);
            self.tail.put_u8((fin as u8) << 7 | (rsv & 0x7) << 4 | opcode as u8);
            self.tail.put_u8(payload.len() as u8);
            self.tail.extend_from_slice(payload);
            self.len += n;
            return n;
        }
        let header = FrameHeader { fin, rsv, opcode, mask, payload_len: payload.len() as u64 };
        let mut h = [0u8; MAX_HEADER_LEN];
        let hl = header.encode(&mut h);
        if mask.is_none() && payload.len() >= COPY_THRESHOLD {
            // The header is sealed off the tail as a chunk of its own. With room for many
            // headers in the tail, the next ones are split off the same allocation (a reference
            // count, no allocation): reserving only the header's bytes made every large frame
            // allocate two small buffers (the header's and `bytes`' shared-buffer record), 1.2
            // allocations per 64 KiB echo (tests/allocations.rs).
            if self.tail.capacity() - self.tail.len() < hl {
                self.tail.reserve(HEADER_ROOM);
            }
            self.push_slice(&h[..hl]);
            self.seal();
            self.len += payload.len();
            self.chunks.push_back(payload.clone());
        } else {
            self.tail.reserve(hl + payload.len());
            self.tail.extend_from_slice(&h[..hl]);
            let start = self.tail.len();
            self.tail.extend_from_slice(payload);
            if let Some(key) = mask {
                apply_mask(&mut self.tail[start..], key, 0);
            }
            self.len += hl + payload.len();
        }
        hl + payload.len()
    }

    /// Queue a frame header alone (streaming API: the payload follows in chunks).
    pub fn push_header(&mut self, header: &FrameHeader) -> usize {
        let mut h = [0u8; MAX_HEADER_LEN];
        let hl = header.encode(&mut h);
        self.push_slice(&h[..hl]);
        hl
    }

    /// Queue payload bytes of a frame whose header is queued, masked from payload offset `offset`.
    pub fn push_payload(&mut self, data: &Bytes, mask: Option<[u8; 4]>, offset: u64) -> usize {
        match mask {
            Some(key) => {
                let start = self.tail.len();
                self.tail.extend_from_slice(data);
                apply_mask(&mut self.tail[start..], key, offset as usize);
                self.len += data.len();
            }
            None => self.push_bytes(data.clone()),
        }
        data.len()
    }

    /// Write as much as the writer takes, with vectored writes. Returns the bytes written; stops
    /// (without error) at `WouldBlock`. Any other error is returned.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while self.len > 0 {
            let res = if self.chunks.is_empty() {
                w.write(&self.tail)
            } else {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for c in self.chunks.iter().take(MAX_IOVECS - 1) {
                    slices[n] = IoSlice::new(c);
                    n += 1;
                }
                if !self.tail.is_empty() {
                    slices[n] = IoSlice::new(&self.tail);
                    n += 1;
                }
                w.write_vectored(&slices[..n])
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 && self.tail.capacity() > KEEP_CAPACITY {
            self.tail = BytesMut::new();
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(c) if c.len() <= n => {
                    n -= c.len();
                    self.chunks.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    return;
                }
                None => {
                    if n >= self.tail.len() {
                        // Written out: empty the tail where it starts instead of advancing its
                        // start past the bytes, so the next frames reuse the same bytes.
                        // Advancing walked the start through the tail's allocation and
                        // `reserve` then moved it back (`reserve_inner`) whenever the room ran
                        // out: about once per message in an echo server, whose tail is sized by
                        // its handshake response (callgrind, `../shared/bench` scenario d:
                        // 1,946 -> 1,847 instructions per echoed message).
                        self.tail.clear();
                    } else {
                        self.tail.advance(n);
                    }
                    return;
                }
            }
        }
    }

    /// Drop everything queued; returns the bytes dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        *self = Self::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks after `budget` bytes.
    struct Throttled {
        out: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap).min(self.budget);
            self.out.extend_from_slice(&b[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_and_large_frames_keep_order_across_partial_writes() {
        let mut q = WriteQueue::new();
        let big = Bytes::from(vec![b'x'; 10_000]);
        q.push_frame(OpCode::Text, true, 0, &Bytes::from_static(b"a"), None);
        q.push_frame(OpCode::Binary, true, 0, &big, None);
        q.push_frame(OpCode::Text, true, 0, &Bytes::from_static(b"b"), None);
        let mut expect = BytesMut::new();
        crate::protocol::frame::write_frame(&mut expect, OpCode::Text, true, 0, b"a", None);
        crate::protocol::frame::write_frame(&mut expect, OpCode::Binary, true, 0, &big, None);
        crate::protocol::frame::write_frame(&mut expect, OpCode::Text, true, 0, b"b", None);
        assert_eq!(q.len(), expect.len());
        let mut w = Throttled { out: Vec::new(), cap: 777, budget: 5000 };
        assert_eq!(q.write_to(&mut w).unwrap(), 5000);
        assert_eq!(q.len(), expect.len() - 5000);
        w.budget = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.out, &expect[..]);
    }

    #[test]
    fn every_frame_shape_matches_the_encoder() {
        // Small unmasked frames take a shortcut; every shape must give the encoder's bytes.
        let ops = [OpCode::Text, OpCode::Binary, OpCode::Continuation, OpCode::Ping, OpCode::Pong, OpCode::Close];
        for len in [0, 1, 16, 124, 125, 126, 127, 4095, 4096, 70_000] {
            let payload = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            for op in ops {
                for (fin, rsv, mask) in
                    [(true, 0, None), (false, 0, None), (true, 0b100, None), (true, 0, Some([1, 2, 3, 4]))]
                {
                    let mut q = WriteQueue::new();
                    let n = q.push_frame(op, fin, rsv, &payload, mask);
                    let mut expect = BytesMut::new();
                    crate::protocol::frame::write_frame(&mut expect, op, fin, rsv, &payload, mask);
                    assert_eq!((n, q.len()), (expect.len(), expect.len()), "{op:?} {len} {fin} {rsv} {mask:?}");
                    let mut w = Throttled { out: Vec::new(), cap: usize::MAX, budget: usize::MAX };
                    q.write_to(&mut w).unwrap();
                    assert_eq!(w.out, &expect[..], "{op:?} {len} {fin} {rsv} {mask:?}");
                }
            }
        }
    }

    #[test]
    fn masked_frames_are_masked_copies() {
        let mut q = WriteQueue::new();
        let payload = Bytes::from_static(b"Hello");
        q.push_frame(OpCode::Text, true, 0, &payload, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut w = Throttled { out: Vec::new(), cap: 100, budget: 100 };
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!(&payload[..], b"Hello");
    }

    #[test]
    fn large_unmasked_payload_is_not_copied() {
        let mut q = WriteQueue::new();
        let big = Bytes::from(vec![1u8; COPY_THRESHOLD]);
        q.push_frame(OpCode::Binary, true, 0, &big, None);
        assert!(q.chunks.iter().any(|c| c.as_ptr() == big.as_ptr()));
    }

    #[test]
    fn a_drained_tail_is_reused_from_its_start() {
        let mut q = WriteQueue::new();
        let mut w = Throttled { out: Vec::new(), cap: usize::MAX, budget: usize::MAX };
        let msg = Bytes::from_static(b"sixteen byte msg");
        // A first write larger than a frame (the handshake response, say) sizes the tail.
        q.push_slice(&[b'h'; 200]);
        let first = q.tail.as_ptr();
        q.write_to(&mut w).unwrap();
        for _ in 0..1000 {
            q.push_frame(OpCode::Binary, true, 0, &msg, None);
            assert_eq!(q.tail.as_ptr(), first, "each small frame goes to the same bytes once the queue drains");
            q.write_to(&mut w).unwrap();
        }
        assert_eq!(w.out.len(), 200 + 1000 * 18);
        // After a partial write the rest is kept (and written) in order.
        q.push_frame(OpCode::Binary, true, 0, &msg, None);
        let mut w = Throttled { out: Vec::new(), cap: 5, budget: 5 };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.len(), 13);
        w.budget = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(&w.out[2..], &msg[..]);
    }

    #[test]
    fn memory_is_released_when_drained() {
        let mut q = WriteQueue::new();
        q.push_slice(&vec![0u8; 100_000]);
        let mut w = Throttled { out: Vec::new(), cap: usize::MAX, budget: usize::MAX };
        q.write_to(&mut w).unwrap();
        assert!(q.capacity() <= KEEP_CAPACITY);
        assert_eq!(q.clear(), 0);
    }

    #[test]
    fn streamed_payload_masks_with_offsets() {
        let key = [1, 2, 3, 4];
        let mut q = WriteQueue::new();
        let header = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: Some(key), payload_len: 10 };
        q.push_header(&header);
        q.push_payload(&Bytes::from_static(b"abc"), Some(key), 0);
        q.push_payload(&Bytes::from_static(b"defghij"), Some(key), 3);
        let mut w = Throttled { out: Vec::new(), cap: usize::MAX, budget: usize::MAX };
        q.write_to(&mut w).unwrap();
        let mut expect = BytesMut::new();
        crate::protocol::frame::write_frame(&mut expect, OpCode::Binary, true, 0, b"abcdefghij", Some(key));
        assert_eq!(w.out, &expect[..]);
    }
}
