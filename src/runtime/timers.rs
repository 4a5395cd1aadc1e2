//! Timers of one event loop: an indexed binary heap of deadlines with millisecond resolution.
//!
//! Connection timers (open and close handshake, keep-alive, idle) and user timers share the heap.
//! Every timer has a [`TimerKey`], and the heap records where each one sits, so a timer is
//! removed the moment it stops applying: a connection cancels its open-handshake timer when the
//! handshake completes and all its timers when it goes away, and a user timer leaves when it is
//! cancelled. The heap then holds only live timers, so its size (and the loop's memory) follows
//! the open connections, not the connection *rate* times the timeout: before this, a server
//! taking 20,000 connections a second kept ~100,000 spent open-handshake entries (5 s each) and
//! paid for them in every pop. Scheduling, cancelling and popping cost O(log n).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::sender::{ConnId, TimeoutHandle, Token};

/// Why a timer was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// The opening handshake must be complete by now.
    OpenHandshake,
    /// The closing handshake must be complete by now.
    CloseHandshake,
    /// Check keep-alive and idle deadlines.
    KeepAlive,
    /// A user timer.
    User(Token, u64),
}

/// A scheduled timer, for [`Timers::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey(usize);

/// A heap slot: the deadline (with a sequence number, so equal deadlines fire in the order they
/// were set) and the timer it belongs to.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: Instant,
    seq: u64,
    key: usize,
}

impl Slot {
    fn before(&self, other: &Slot) -> bool {
        (self.at, self.seq) < (other.at, other.seq)
    }
}

#[derive(Debug)]
struct Timer {
    conn: ConnId,
    kind: TimerKind,
    /// Index of this timer's slot in the heap.
    pos: usize,
}

/// The loop's timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: Vec<Slot>,
    timers: Slab<Timer>,
    seq: u64,
    /// Live user timers by handle.
    user: HashMap<u64, usize>,
}

impl Timers {
    /// Schedule a timer for connection `conn` at `at`.
    pub fn schedule(&mut self, at: Instant, conn: ConnId, kind: TimerKind) -> TimerKey {
        self.seq += 1;
        let pos = self.heap.len();
        let key = self.timers.insert(Timer { conn, kind, pos });
        if let TimerKind::User(_, h) = kind {
            self.user.insert(h, key);
        }
        self.heap.push(Slot { at, seq: self.seq, key });
        self.sift_up(pos);
        TimerKey(key)
    }

    pub fn schedule_user(&mut self, now: Instant, delay: Duration, conn: ConnId, token: Token, handle: TimeoutHandle) {
        self.schedule(now + delay, conn, TimerKind::User(token, handle.0));
    }

    /// Remove the timer `key` if it is still scheduled for `conn` and `kind` (a key whose timer
    /// fired may since have been given to another timer: that one is left alone).
    pub fn cancel(&mut self, key: TimerKey, conn: ConnId, kind: TimerKind) {
        let pos = match self.timers.get(key.0) {
            Some(t) if t.conn == conn && t.kind == kind => t.pos,
            _ => return,
        };
        self.remove_at(pos);
    }

    pub fn cancel_user(&mut self, handle: TimeoutHandle) {
        if let Some(key) = self.user.remove(&handle.0) {
            let pos = self.timers[key].pos;
            self.remove_at(pos);
        }
    }

    /// Time until the next deadline (rounded up to a whole millisecond, so the loop does not
    /// spin on a sub-millisecond poll timeout), `None` when there is none.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.first().map(|s| {
            let d = s.at.saturating_duration_since(now);
            let ms = d.as_nanos().div_ceil(1_000_000) as u64;
            Duration::from_millis(ms)
        })
    }

    /// Remove and return the next timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ConnId, TimerKind)> {
        if self.heap.first()?.at > now {
            return None;
        }
        let t = self.remove_at(0);
        if let TimerKind::User(_, h) = t.kind {
            self.user.remove(&h);
        }
        Some((t.conn, t.kind))
    }

    /// Number of scheduled timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, pos: usize) -> Timer {
        let removed = self.heap.swap_remove(pos);
        if pos < self.heap.len() {
            self.timers[self.heap[pos].key].pos = pos;
            // The slot moved in from the end may belong above or below `pos`.
            let pos = self.sift_up(pos);
            self.sift_down(pos);
        }
        self.timers.remove(removed.key)
    }

    fn sift_up(&mut self, mut pos: usize) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.heap[pos].before(&self.heap[parent]) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
        pos
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let left = 2 * pos + 1;
            if left >= self.heap.len() {
                return;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.heap[right].before(&self.heap[left]) { right } else { left };
            if !self.heap[child].before(&self.heap[pos]) {
                return;
            }
            self.swap(pos, child);
            pos = child;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.timers[self.heap[a].key].pos = a;
        self.timers[self.heap[b].key].pos = b;
    }

    /// Check the heap property and the position index (tests).
    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.heap.len(), self.timers.len());
        for (i, s) in self.heap.iter().enumerate() {
            assert_eq!(self.timers[s.key].pos, i, "position index");
            if i > 0 {
                assert!(!s.before(&self.heap[(i - 1) / 2]), "heap order at {i}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ConnId = ConnId { slot: 1, generation: 1 };

    #[test]
    fn fires_in_deadline_order() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_millis(30), C, TimerKind::KeepAlive);
        t.schedule(now + Duration::from_millis(10), C, TimerKind::OpenHandshake);
        t.schedule(now + Duration::from_millis(20), C, TimerKind::CloseHandshake);
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(10)));
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_due(later), Some((C, TimerKind::OpenHandshake)));
        assert_eq!(t.pop_due(later), Some((C, TimerKind::CloseHandshake)));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancelled_user_timers_do_not_fire_and_leave_nothing_behind() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule_user(now, Duration::from_millis(5), C, Token(1), TimeoutHandle(1));
        t.schedule_user(now, Duration::from_millis(5), C, Token(2), TimeoutHandle(2));
        t.cancel_user(TimeoutHandle(1));
        assert_eq!(t.len(), 1, "a cancelled timer leaves the heap at once");
        let later = now + Duration::from_millis(6);
        assert_eq!(t.pop_due(later), Some((C, TimerKind::User(Token(2), 2))));
        assert_eq!(t.pop_due(later), None);
        t.cancel_user(TimeoutHandle(2)); // already fired: nothing to do
        assert!(t.user.is_empty() && t.timers.is_empty() && t.heap.is_empty());
    }

    #[test]
    fn cancel_removes_only_the_timer_it_names() {
        let now = Instant::now();
        let mut t = Timers::default();
        let open = t.schedule(now + Duration::from_millis(5), C, TimerKind::OpenHandshake);
        assert_eq!(t.pop_due(now + Duration::from_millis(5)), Some((C, TimerKind::OpenHandshake)));
        // The fired timer's key is reused by the next one; cancelling the stale key spares it.
        let keep = t.schedule(now + Duration::from_millis(9), C, TimerKind::KeepAlive);
        assert_eq!(keep, open);
        t.cancel(open, C, TimerKind::OpenHandshake);
        let other = ConnId { slot: 2, generation: 1 };
        t.cancel(keep, other, TimerKind::KeepAlive);
        assert_eq!(t.len(), 1);
        t.cancel(keep, C, TimerKind::KeepAlive);
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_timeout(now), None);
    }

    #[test]
    fn random_schedules_and_cancels_keep_order_and_index() {
        // A deterministic pseudo-random mix of schedules, cancels from anywhere in the heap and
        // pops, checked against a sorted list after every step.
        let base = Instant::now();
        let mut t = Timers::default();
        let mut model: Vec<(u64, u64, TimerKey, u32)> = Vec::new(); // (ms, seq, key, conn slot)
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut seq = 0;
        let mut now_ms = 0;
        for _ in 0..5_000 {
            match rnd(10) {
                0..=4 => {
                    let ms = now_ms + rnd(200);
                    let conn = ConnId { slot: rnd(1000) as u32, generation: 1 };
                    seq += 1;
                    let key = t.schedule(base + Duration::from_millis(ms), conn, TimerKind::KeepAlive);
                    model.push((ms, seq, key, conn.slot));
                }
                5..=6 if !model.is_empty() => {
                    let i = rnd(model.len() as u64) as usize;
                    let (_, _, key, slot) = model.remove(i);
                    t.cancel(key, ConnId { slot, generation: 1 }, TimerKind::KeepAlive);
                }
                _ => {
                    now_ms += rnd(20);
                    model.sort_by_key(|m| (m.0, m.1));
                    while let Some((conn, _)) = t.pop_due(base + Duration::from_millis(now_ms)) {
                        let (ms, _, _, slot) = model.remove(0);
                        assert!(ms <= now_ms);
                        assert_eq!(conn.slot, slot, "earliest deadline first, ties in schedule order");
                    }
                    assert!(model.iter().all(|m| m.0 > now_ms), "everything due was popped");
                }
            }
            t.check();
            assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn timeout_rounds_up_to_a_millisecond() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_micros(10), C, TimerKind::KeepAlive);
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(1)));
    }
}
