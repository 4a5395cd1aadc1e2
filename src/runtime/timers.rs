//! Timers of one event loop: a binary heap of deadlines with millisecond resolution.
//!
//! Connection timers (open and close handshake, keep-alive, idle) and user timers share the heap.
//! Entries are never removed early: a timer that no longer applies (its connection gone, its slot
//! reused, its user timer cancelled, its deadline moved) is recognised when it fires and ignored,
//! so scheduling and cancelling cost O(log n) and O(1).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::{Duration, Instant};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    seq: u64,
    conn: ConnId,
    kind: TimerKind,
}

/// The loop's timer heap.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    live_user: HashSet<u64>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, conn: ConnId, kind: TimerKind) {
        self.seq += 1;
        if let TimerKind::User(_, h) = kind {
            self.live_user.insert(h);
        }
        self.heap.push(Reverse(Entry { at, seq: self.seq, conn, kind }));
    }

    pub fn schedule_user(&mut self, now: Instant, delay: Duration, conn: ConnId, token: Token, handle: TimeoutHandle) {
        self.schedule(now + delay, conn, TimerKind::User(token, handle.0));
    }

    pub fn cancel_user(&mut self, handle: TimeoutHandle) {
        self.live_user.remove(&handle.0);
    }

    /// Time until the next deadline (rounded up to a whole millisecond, so the loop does not
    /// spin on a sub-millisecond poll timeout), `None` when there is none.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse(e)| {
            let d = e.at.saturating_duration_since(now);
            let ms = d.as_nanos().div_ceil(1_000_000) as u64;
            Duration::from_millis(ms)
        })
    }

    /// Pop the next timer due at `now`, skipping cancelled user timers.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ConnId, TimerKind)> {
        while let Some(Reverse(e)) = self.heap.peek() {
            if e.at > now {
                return None;
            }
            let e = self.heap.pop().expect("peeked").0;
            if let TimerKind::User(_, h) = e.kind {
                if !self.live_user.remove(&h) {
                    continue;
                }
            }
            return Some((e.conn, e.kind));
        }
        None
    }

    /// Number of scheduled entries (including ones that will be ignored when they fire).
    pub fn len(&self) -> usize {
        self.heap.len()
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
    fn cancelled_user_timers_do_not_fire() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule_user(now, Duration::from_millis(5), C, Token(1), TimeoutHandle(1));
        t.schedule_user(now, Duration::from_millis(5), C, Token(2), TimeoutHandle(2));
        t.cancel_user(TimeoutHandle(1));
        let later = now + Duration::from_millis(6);
        assert_eq!(t.pop_due(later), Some((C, TimerKind::User(Token(2), 2))));
        assert_eq!(t.pop_due(later), None);
        assert!(t.live_user.is_empty(), "fired and cancelled timers leave nothing behind");
    }

    #[test]
    fn timeout_rounds_up_to_a_millisecond() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_micros(10), C, TimerKind::KeepAlive);
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(1)));
    }
}
