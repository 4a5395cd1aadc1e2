//! A connection's read buffer: bytes read from the socket and not yet decoded.
//!
//! Reading into a `BytesMut` without `unsafe` needs initialised memory. Zeroing the spare capacity
//! before every read would cost a 64 KiB `memset` per small message, so the spare region is zeroed
//! once when it is allocated (or reclaimed) and then reused: the buffer's length always covers
//! its whole initialised area, and `filled` says how much of it holds data. The decoder works on
//! the filled part, split off for the purpose and joined back in O(1).
//!
//! The event loop owns one full-size buffer and lends it to whichever connection is reading; a
//! connection keeps a buffer only while it holds a partial frame, so idle connections hold none.

use std::io::{self, Read};

use bytes::BytesMut;

/// Read bytes waiting to be decoded.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffer {
    /// `[0, filled)` holds data; `[filled, len)` is initialised spare room.
    buf: BytesMut,
    filled: usize,
}

impl ReadBuffer {
    /// An empty buffer that holds no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting to be decoded.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The waiting bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Memory held, in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Read once from `r` into at most `max` bytes of room (made if needed). Returns what `read`
    /// returned (`0` is end of stream) and how much room it was offered: a read that filled its
    /// room may have left data in the socket.
    pub fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<(usize, usize)> {
        if self.buf.len() - self.filled < max.min(4096) {
            self.make_room(max);
        }
        let end = self.buf.len().min(self.filled + max);
        let room = end - self.filled;
        let n = r.read(&mut self.buf[self.filled..end])?;
        self.filled += n;
        Ok((n, room))
    }

    /// Room for `room` more bytes after the data (reclaiming consumed space where possible).
    fn make_room(&mut self, room: usize) {
        self.buf.truncate(self.filled);
        self.buf.reserve(room);
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
    }

    /// Split off the waiting bytes for the decoder. Give them back with [`restore`](Self::restore).
    pub fn take_data(&mut self) -> BytesMut {
        let data = self.buf.split_to(self.filled);
        self.filled = 0;
        data
    }

    /// Give back what the decoder left (a partial frame), joining it with the spare room.
    pub fn restore(&mut self, mut data: BytesMut) {
        debug_assert_eq!(self.filled, 0);
        self.filled = data.len();
        data.unsplit(std::mem::take(&mut self.buf));
        self.buf = data;
    }

    /// Append bytes (used when a small leftover moves from the loop's buffer to a connection).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.buf.len() - self.filled < bytes.len() {
            self.make_room(bytes.len());
        }
        self.buf[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    /// Drop `n` bytes from the front of the data (for example a parsed handshake head).
    pub fn consume(&mut self, n: usize) {
        let mut data = self.take_data();
        let _ = data.split_to(n.min(data.len()));
        self.restore(data);
    }

    /// Drop all data and memory.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_decode_restore_cycle() {
        let mut rb = ReadBuffer::new();
        assert_eq!(rb.capacity(), 0);
        let mut src: &[u8] = b"hello world";
        assert_eq!(rb.read_from(&mut src, 64).unwrap().0, 11);
        assert_eq!(rb.data(), b"hello world");
        let mut data = rb.take_data();
        let hello = data.split_to(6).freeze();
        assert_eq!(&hello[..], b"hello ");
        rb.restore(data);
        assert_eq!(rb.data(), b"world");
        let mut more: &[u8] = b"!";
        rb.read_from(&mut more, 64).unwrap();
        assert_eq!(rb.data(), b"world!");
        drop(hello);
    }

    #[test]
    fn reclaims_space_without_growing_forever() {
        let mut rb = ReadBuffer::new();
        let chunk = vec![7u8; 1000];
        for _ in 0..1000 {
            let mut src: &[u8] = &chunk;
            rb.read_from(&mut src, 8192).unwrap();
            let mut d = rb.take_data();
            let _ = d.split_to(d.len());
            rb.restore(d);
        }
        assert!(rb.capacity() <= 16384, "capacity {}", rb.capacity());
        assert_eq!(rb.filled(), 0);
    }

    #[test]
    fn consume_and_extend() {
        let mut rb = ReadBuffer::new();
        rb.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\x81");
        rb.consume(18);
        assert_eq!(rb.data(), b"\x81");
        rb.clear();
        assert_eq!(rb.capacity(), 0);
    }
}
