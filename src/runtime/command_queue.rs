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

use std::sync::{Mutex, MutexGuard};

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// `capacity` items are waiting.
    Full,
    /// The loop is gone: nothing will take the item.
    Closed,
}

#[derive(Debug)]
struct Inner<T> {
    items: Vec<T>,
    /// Set by [`CommandQueue::close`]; read and written only under the lock, so no push slips in
    /// after a close.
    closed: bool,
}

/// A bounded queue of `T`, many producers, one consumer that takes everything at once.
#[derive(Debug)]
pub(crate) struct CommandQueue<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
}

impl<T> CommandQueue<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        CommandQueue { inner: Mutex::new(Inner { items: Vec::new(), closed: false }), capacity: capacity.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Nothing panics while holding the lock short of an allocation failure, which leaves the
        // vector intact: stay usable if the lock was ever poisoned.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `item`, or give it back when `capacity` items are waiting or the queue is closed.
    pub fn push(&self, item: T) -> Result<(), (T, PushError)> {
        let mut q = self.lock();
        if q.closed {
            return Err((item, PushError::Closed));
        }
        if q.items.len() >= self.capacity {
            return Err((item, PushError::Full));
        }
        q.items.push(item);
        Ok(())
    }

    /// Queue `item` even past the capacity: for the loop's own helpers (a name resolution
    /// result), one per connection, whose loss would leave a connection hanging. Fails only when
    /// the queue is closed.
    pub fn push_internal(&self, item: T) -> Result<(), T> {
        let mut q = self.lock();
        if q.closed {
            return Err(item);
        }
        q.items.push(item);
        Ok(())
    }

    /// Move every waiting item into `out` (which must be empty): one lock, no copy.
    pub fn take_all(&self, out: &mut Vec<T>) {
        debug_assert!(out.is_empty());
        let mut q = self.lock();
        if !q.items.is_empty() {
            std::mem::swap(&mut q.items, out);
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Refuse further pushes and drop what is waiting (the loop is finished).
    pub fn close(&self) {
        let rest = {
            let mut q = self.lock();
            q.closed = true;
            std::mem::take(&mut q.items)
        };
        // Dropped after the lock is released.
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
    fn nothing_slips_in_after_a_close() {
        // Producers racing a close: every push either happened before it (and was dropped by
        // it) or failed with Closed; none is left waiting in a queue nobody will empty.
        let q = Arc::new(CommandQueue::new(usize::MAX));
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        let _ = q.push(i);
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        q.close();
        for p in producers {
            p.join().unwrap();
        }
        assert!(q.is_empty(), "a push landed after the close");
        assert_eq!(q.push(1), Err((1, PushError::Closed)));
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
