//! The cross-thread command queue: how [`Sender`](crate::Sender)s on other threads reach the loop.
//!
//! A bounded multi-producer queue that the loop empties **a whole batch at a time**: producers
//! push under a short mutex, and once per turn the loop swaps the queued vector for its own empty
//! one (one lock for the batch) and applies the commands from memory that is contiguous and
//! private to it. A lock-free channel instead costs the loop an atomic operation and a cache
//! miss on the producer's slot for every command. Measured with `benches/cross_thread.rs` (16 B
//! messages from one thread to 100 connections, three runs each, see `docs/performance.md`): the
//! loop thread spent 0.22-0.35 us per cross-thread message with a crossbeam bounded channel and
//! 0.15 us with this queue, against 0.15-0.19 us for the same sends made inside a handler.
//!
//! Neither side allocates in the steady state: the two vectors trade places and keep their
//! capacity (bounded by the queue's capacity, so a burst cannot pin more than that).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// `capacity` items are waiting.
    Full,
    /// The loop is gone: nothing will take the item.
    Closed,
}

/// A bounded queue of `T`, many producers, one consumer that takes everything at once.
#[derive(Debug)]
pub(crate) struct CommandQueue<T> {
    items: Mutex<Vec<T>>,
    capacity: usize,
    closed: AtomicBool,
}

impl<T> CommandQueue<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        CommandQueue { items: Mutex::new(Vec::new()), capacity: capacity.max(1), closed: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A producer cannot panic while holding the lock (push does not allocate-and-panic in a
        // way that leaves the vector inconsistent), but stay usable if one ever did.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `item`, or give it back when `capacity` items are waiting or the queue is closed.
    pub fn push(&self, item: T) -> Result<(), (T, PushError)> {
        if self.closed.load(Ordering::Acquire) {
            return Err((item, PushError::Closed));
        }
        let mut q = self.lock();
        if q.len() >= self.capacity {
            return Err((item, PushError::Full));
        }
        q.push(item);
        Ok(())
    }

    /// Queue `item` even past the capacity: for the loop's own helpers (a name resolution
    /// result), one per connection, whose loss would leave a connection hanging. Fails only when
    /// the queue is closed.
    pub fn push_internal(&self, item: T) -> Result<(), T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.lock().push(item);
        Ok(())
    }

    /// Move every waiting item into `out` (which must be empty): one lock, no copy.
    pub fn take_all(&self, out: &mut Vec<T>) {
        debug_assert!(out.is_empty());
        let mut q = self.lock();
        if !q.is_empty() {
            std::mem::swap(&mut *q, out);
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Refuse further pushes and drop what is waiting (the loop is finished).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let rest = std::mem::take(&mut *self.lock());
        drop(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounded_fifo_taken_in_batches() {
        let q = CommandQueue::new(3);
        for i in 0..3 {
            q.push(i).unwrap();
        }
        assert_eq!(q.push(9), Err((9, PushError::Full)));
        let mut out = Vec::new();
        q.take_all(&mut out);
        assert_eq!(out, [0, 1, 2]);
        assert!(q.is_empty());
        out.clear();
        q.push(3).unwrap();
        q.take_all(&mut out);
        assert_eq!(out, [3], "room again once the batch was taken");
    }

    #[test]
    fn internal_pushes_pass_the_bound_but_not_a_close() {
        let q = CommandQueue::new(1);
        q.push(1).unwrap();
        q.push_internal(2).unwrap();
        let mut out = Vec::new();
        q.take_all(&mut out);
        assert_eq!(out, [1, 2]);
        q.push(3).unwrap();
        q.close();
        assert!(q.is_empty(), "close drops what waits");
        assert_eq!(q.push(4), Err((4, PushError::Closed)));
        assert_eq!(q.push_internal(5), Err(5));
    }

    #[test]
    fn buffers_trade_places_without_reallocating() {
        let q = CommandQueue::new(1000);
        let mut out: Vec<u32> = Vec::with_capacity(1000);
        for round in 0..10 {
            for i in 0..1000 {
                q.push(round * 1000 + i).unwrap();
            }
            q.take_all(&mut out);
            assert_eq!(out.len(), 1000);
            assert!(out.iter().enumerate().all(|(i, v)| *v == round * 1000 + i as u32));
            assert!(out.capacity() <= 2048);
            out.clear();
        }
    }

    #[test]
    fn many_producers_lose_nothing_and_keep_each_ones_order() {
        const PER: u64 = 20_000;
        let q = Arc::new(CommandQueue::new(usize::MAX));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        q.push((p, i)).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u64; 4];
        let mut batch = Vec::new();
        let mut got = 0;
        while got < 4 * PER {
            q.take_all(&mut batch);
            for (p, i) in batch.drain(..) {
                assert_eq!(i, next[p as usize], "producer {p} out of order");
                next[p as usize] += 1;
                got += 1;
            }
            std::thread::yield_now();
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(next, [PER; 4]);
        assert!(q.is_empty());
    }
}
