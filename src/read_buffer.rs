//! A connection's read buffer: bytes read from the socket and not yet decoded.
//!
//! Bytes are received straight into the buffer's spare capacity (`recv` into
//! `MaybeUninit<u8>`, through socket2), so nothing is zeroed or copied before the decoder sees
//! it, and payloads leave as `Bytes` split off the same allocation. Zeroing the spare room instead
//! (the only way to read into a `BytesMut` without `unsafe`) cost a `memset` of the whole free
//! area on every refill: with `../shared/bench` scenario c (64 KiB echoes) the server's CPU per
//! message went from 51.6 to 41.3 us when this change landed (together with the decoder's
//! whole-message path; see `docs/performance.md`).
//!
//! The event loop owns one full-size buffer and lends it to whichever connection is reading; after
//! decoding, at most one partial frame or handshake head is left (payload is handed out as it
//! arrives, or a binary frame of up to half the buffer is awaited whole), which the connection
//! usually keeps as a copy in a buffer of its own (`Connection::drive` says when it keeps the
//! loop's buffer instead). Idle connections hold no buffer at all.

use std::io;
use std::os::fd::AsFd;

use bytes::{Buf, BytesMut};

/// Buffers kept for reuse by the loop.
const POOL_SIZE: usize = 16;
/// Leftover buffers kept for reuse by the loop.
const LEFTOVER_POOL_SIZE: usize = 8;
/// Leftovers up to this size are copied into a buffer of their own size; larger ones into a
/// pooled buffer (see [`ReadBuffer::leftover`]).
pub(crate) const SMALL_LEFTOVER: usize = 4096;

/// How far a connection's pass may read past its read budget, twice over: its reads are offered
/// the budget plus this much (so a socket holding a little more than the budget, as with four
/// pipelined 64 KiB frames and a 256 KiB budget, is drained by one `recv`), and a pass that
/// still ends inside a frame awaited whole reads up to this much more to complete it (see
/// `Connection::drive`) instead of leaving a partial frame to be copied out and back. Read
/// buffers are allocated with this much room beyond the largest read they are asked for.
pub(crate) const COMPLETION_ROOM: usize = 16 * 1024;

/// Read bytes waiting to be decoded.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffer {
    buf: BytesMut,
}

impl ReadBuffer {
    /// An empty buffer that holds no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting to be decoded.
    pub fn filled(&self) -> usize {
        self.buf.len()
    }

    /// The waiting bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf
    }

    /// Room for reading without moving the data or allocating.
    pub fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Memory held, in bytes.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Receive once from `socket` into at most `max` bytes of room (made if needed: at least
    /// `max` when less than a quarter of it is free). Returns what `recv` returned (`0` is end of
    /// stream) and the room it was offered: a read that filled its room may have left data in the
    /// socket.
    ///
    /// `pool` holds buffers whose memory was still referenced by payloads handed out (queued for
    /// writing, kept by a handler) when more room was needed: they are reused once released,
    /// instead of allocating (and page-faulting) a fresh buffer for every read.
    pub fn read_from<S: AsFd>(
        &mut self,
        socket: &S,
        max: usize,
        pool: &mut Vec<BytesMut>,
    ) -> io::Result<(usize, usize)> {
        if self.buf.capacity() - self.buf.len() < max.div_ceil(4) {
            self.make_room(max, pool);
        }
        if self.buf.capacity() == self.buf.len() {
            // Never offer recv an empty buffer: its Ok(0) would read as end of stream.
            self.buf.reserve(max.max(1));
        }
        let len = self.buf.len();
        let spare = self.buf.spare_capacity_mut();
        let room = spare.len().min(max);
        let n = socket2::SockRef::from(socket).recv(&mut spare[..room])?;
        assert!(n <= room, "recv reported more bytes than it was given room for");
        // SAFETY: `recv` wrote `n` bytes to the start of the spare capacity (it returns the number
        // of bytes the kernel copied into the buffer), and `n <= room <= spare capacity` was just
        // checked, so `[len, len + n)` is initialised and within the allocation.
        #[allow(unsafe_code)]
        unsafe {
            self.buf.set_len(len + n);
        }
        Ok((n, room))
    }

    fn make_room(&mut self, max: usize, pool: &mut Vec<BytesMut>) {
        if self.buf.try_reclaim(max) {
            return;
        }
        // A pooled buffer whose payloads have all been released, or else a new one; either way
        // with room for the waiting bytes *and* `max` more (plus room to complete a frame).
        let need = self.buf.len() + max + COMPLETION_ROOM;
        let mut fresh = match pool.iter_mut().position(|b| b.try_reclaim(need)) {
            Some(i) => pool.swap_remove(i),
            None => BytesMut::with_capacity(need),
        };
        fresh.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, fresh);
        if old.capacity() > 0 && pool.len() < POOL_SIZE {
            old.clear();
            pool.push(old);
        }
    }

    /// Move an empty buffer's start back to the beginning of its allocation (to at least `size`
    /// bytes of room, plus [`COMPLETION_ROOM`]) when no payload handed out still references it; else leave it as it is.
    ///
    /// The loop's buffer is consumed from the front, so without this each pass read into the
    /// free tail after the previous connection's bytes: in `../shared/bench` scenario c, 65% of
    /// reads filled the (smaller) room they were offered, 1.44 `recvfrom` per `writev` against
    /// the raw floor's 1.0; and small messages walked through the whole buffer's cache lines
    /// instead of reusing the first few.
    pub fn rewind(&mut self, size: usize) {
        let size = size + COMPLETION_ROOM;
        if self.buf.is_empty() && self.buf.capacity() < size {
            // Never allocates: false (nothing moved) when the memory is still shared.
            let _ = self.buf.try_reclaim(size);
        }
    }

    /// Take the buffer (waiting bytes and spare room) for the decoder; nothing is read into this
    /// `ReadBuffer` until [`restore`](Self::restore) gives back what the decoder left.
    pub fn take_data(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Give back the buffer taken with [`take_data`](Self::take_data), holding what the decoder
    /// left (a partial frame) in front of the spare room.
    pub fn restore(&mut self, data: BytesMut) {
        debug_assert!(self.buf.is_empty() && self.buf.capacity() == 0, "restore without take_data");
        self.buf = data;
    }

    /// Append bytes (used when a leftover moves between the loop's buffer and a connection's).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drop `n` bytes from the front of the data (for example a parsed handshake head).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        if n > 0 {
            self.buf.advance(n);
        }
    }

    /// Drop the data; hand a large allocation to `pool` for reuse (else free it).
    pub fn recycle_into(&mut self, pool: &mut Vec<BytesMut>) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() >= 64 * 1024 && pool.len() < POOL_SIZE {
            buf.clear();
            pool.push(buf);
        }
    }

    /// A buffer holding a copy of `bytes`, a connection's undecoded leftover (a partial frame).
    ///
    /// A large leftover goes into a buffer from `pool` (buffers of at least `large_capacity`
    /// bytes that earlier leftovers were copied into, see
    /// [`release_leftover`](Self::release_leftover)), or a new one of that capacity. Without the
    /// pool, every pass over a connection that ends inside a 64 KiB frame allocated a buffer for
    /// the copy and the next pass freed it: glibc gave the freed top of its heap back to the
    /// system and grew it again (`brk` about 440 times a second and a page fault per 4 KiB
    /// touched, in `../shared/bench` scenario c).
    pub fn leftover(bytes: &[u8], pool: &mut Vec<BytesMut>, large_capacity: usize) -> Self {
        let mut buf = if bytes.len() > SMALL_LEFTOVER {
            match pool.iter().rposition(|b| b.capacity() >= bytes.len()) {
                Some(i) => pool.swap_remove(i),
                None => BytesMut::with_capacity(large_capacity.max(bytes.len())),
            }
        } else {
            BytesMut::with_capacity(bytes.len())
        };
        buf.extend_from_slice(bytes);
        ReadBuffer { buf }
    }

    /// Drop the data; keep a large allocation in `pool` for the next
    /// [`leftover`](Self::leftover) (else free it).
    pub fn release_leftover(&mut self, pool: &mut Vec<BytesMut>) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() > SMALL_LEFTOVER && pool.len() < LEFTOVER_POOL_SIZE {
            buf.clear();
            pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn rewind_returns_to_the_start_only_when_nothing_references_the_buffer() {
        let (mut w, r) = pair();
        let mut rb = ReadBuffer::new();
        w.write_all(&[7u8; 100]).unwrap();
        assert_eq!(rb.read_from(&r, 1024, &mut Vec::new()).unwrap().0, 100);
        let full = rb.capacity();
        // A new buffer has the read size plus the completion room.
        assert!(full >= 1024 + COMPLETION_ROOM);
        assert_eq!(rb.spare(), full - 100);
        // A payload handed out keeps its bytes: the buffer may not move back over them.
        let mut data = rb.take_data();
        let payload = data.split_to(60).freeze();
        rb.restore(data);
        rb.consume(40);
        assert_eq!(rb.filled(), 0);
        assert_eq!(rb.capacity(), full - 100);
        rb.rewind(1024);
        assert_eq!(rb.capacity(), full - 100, "rewound over a live payload");
        assert_eq!(&payload[..], &[7u8; 60][..]);
        // Released: the whole allocation is offered again, without allocating.
        drop(payload);
        rb.rewind(1024);
        assert!(rb.capacity() >= 1024 + COMPLETION_ROOM, "capacity {} after rewind", rb.capacity());
        assert_eq!(rb.spare(), rb.capacity());
        // Waiting bytes are never moved or dropped by a rewind.
        w.write_all(b"abc").unwrap();
        rb.read_from(&r, 1024, &mut Vec::new()).unwrap();
        let cap = rb.capacity();
        rb.rewind(1 << 20);
        assert_eq!((rb.data(), rb.capacity()), (&b"abc"[..], cap));
    }

    #[test]
    fn read_decode_restore_cycle() {
        let (mut w, r) = pair();
        let mut rb = ReadBuffer::new();
        assert_eq!(rb.capacity(), 0);
        w.write_all(b"hello world").unwrap();
        assert_eq!(rb.read_from(&r, 64, &mut Vec::new()).unwrap().0, 11);
        assert_eq!(rb.data(), b"hello world");
        let mut data = rb.take_data();
        let hello = data.split_to(6).freeze();
        assert_eq!(&hello[..], b"hello ");
        rb.restore(data);
        assert_eq!(rb.data(), b"world");
        w.write_all(b"!").unwrap();
        let (n, room) = rb.read_from(&r, 64, &mut Vec::new()).unwrap();
        assert_eq!(n, 1);
        assert!(room <= 64);
        assert_eq!(rb.data(), b"world!");
        drop(hello);
    }

    #[test]
    fn room_is_bounded_by_max_and_end_of_stream_is_zero() {
        let (mut w, r) = pair();
        let mut rb = ReadBuffer::new();
        w.write_all(&[7u8; 1000]).unwrap();
        let (n, room) = rb.read_from(&r, 100, &mut Vec::new()).unwrap();
        assert_eq!((n, room), (100, 100), "a read never exceeds its room");
        assert!(rb.data().iter().all(|b| *b == 7));
        drop(w);
        let mut total = 100;
        loop {
            let (n, _) = rb.read_from(&r, 4096, &mut Vec::new()).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 1000);
        assert_eq!(rb.filled(), 1000);
    }

    #[test]
    fn reuses_its_allocation_when_payloads_are_released() {
        let (mut w, r) = pair();
        let mut rb = ReadBuffer::new();
        let mut pool = Vec::new();
        let chunk = vec![7u8; 1000];
        for _ in 0..200 {
            w.write_all(&chunk).unwrap();
            let mut got = 0;
            while got < chunk.len() {
                got += rb.read_from(&r, 8192, &mut pool).unwrap().0;
            }
            let mut d = rb.take_data();
            let payload = d.split_to(d.len()).freeze();
            assert_eq!(payload.len(), 1000);
            drop(payload);
            rb.restore(d);
        }
        assert!(rb.capacity() <= 16384, "capacity {}", rb.capacity());
        assert_eq!(rb.filled(), 0);
    }

    #[test]
    fn pooled_buffers_are_reused_once_released() {
        let (mut w, r) = pair();
        let mut rb = ReadBuffer::new();
        let mut pool = Vec::new();
        let mut held = Vec::new();
        // Each read's payload stays referenced for a while (as queued writes would), so the
        // buffer cannot be reclaimed in place: pooled buffers take over instead of new ones.
        let mut ptrs = std::collections::HashSet::new();
        for i in 0..50 {
            w.write_all(&[i as u8; 3000]).unwrap();
            let mut got = 0;
            while got < 3000 {
                got += rb.read_from(&r, 4096, &mut pool).unwrap().0;
            }
            ptrs.insert(rb.data().as_ptr() as usize & !4095);
            let mut d = rb.take_data();
            held.push(d.split_to(3000).freeze());
            rb.restore(d);
            if held.len() > 2 {
                held.remove(0);
            }
        }
        assert!(pool.len() <= POOL_SIZE);
        assert!(ptrs.len() <= POOL_SIZE + 2, "{} distinct buffers used for 50 reads", ptrs.len());
    }

    #[test]
    fn data_longer_than_the_read_size_still_gets_room() {
        // A waiting handshake head of exactly `max` (and 2x `max`) bytes: the next read must
        // still be offered room, or recv's Ok(0) would look like end of stream.
        for waiting in [100, 200, 250] {
            let (mut w, r) = pair();
            let mut rb = ReadBuffer::new();
            let mut pool = Vec::new();
            rb.extend_from_slice(&vec![1u8; waiting]);
            w.write_all(b"more").unwrap();
            let (n, room) = rb.read_from(&r, 100, &mut pool).unwrap();
            assert!(room >= 25, "room {room} with {waiting} bytes waiting");
            assert_eq!(n, 4);
            assert_eq!(rb.filled(), waiting + 4);
        }
    }

    #[test]
    fn consume_and_extend() {
        let mut rb = ReadBuffer::new();
        rb.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\x81");
        rb.consume(18);
        assert_eq!(rb.data(), b"\x81");
        rb = ReadBuffer::default();
        assert_eq!(rb.capacity(), 0);
    }

    #[test]
    fn large_leftovers_reuse_pooled_buffers_and_small_ones_do_not_pool() {
        let mut pool = Vec::new();
        let big = vec![9u8; 6000];
        let mut a = ReadBuffer::leftover(&big, &mut pool, 64 * 1024);
        assert_eq!(a.data(), &big[..]);
        assert_eq!(a.capacity(), 64 * 1024, "a large leftover gets a buffer of the large capacity");
        let ptr = a.data().as_ptr();
        a.release_leftover(&mut pool);
        assert_eq!((a.filled(), a.capacity()), (0, 0), "released: the buffer holds no memory");
        assert_eq!(pool.len(), 1);
        let b = ReadBuffer::leftover(&big[..5000], &mut pool, 64 * 1024);
        assert_eq!(b.data().as_ptr(), ptr, "the pooled allocation is reused");
        assert_eq!(b.data(), &big[..5000]);
        assert!(pool.is_empty());
        // Larger than any pooled buffer and than the large capacity: a buffer that fits.
        let huge = vec![1u8; 100 * 1024];
        let mut c = ReadBuffer::leftover(&huge, &mut pool, 64 * 1024);
        assert_eq!(c.data(), &huge[..]);
        // Small leftovers take exactly what they need and are freed, not pooled.
        let mut d = ReadBuffer::leftover(b"abc", &mut pool, 64 * 1024);
        assert_eq!(d.data(), b"abc");
        assert!(d.capacity() < SMALL_LEFTOVER);
        d.release_leftover(&mut pool);
        assert!(pool.is_empty());
        // The pool is bounded.
        for _ in 0..LEFTOVER_POOL_SIZE + 3 {
            let mut e = ReadBuffer::leftover(&big, &mut Vec::new(), 64 * 1024);
            e.release_leftover(&mut pool);
        }
        assert_eq!(pool.len(), LEFTOVER_POOL_SIZE);
        c.release_leftover(&mut pool);
        assert_eq!(pool.len(), LEFTOVER_POOL_SIZE);
    }
}
