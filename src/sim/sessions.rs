//! When requests arrive during a run: open-loop requests at their `arrival`,
//! closed-loop follow-ups when the turn before them is done (finished or
//! rejected) plus their think time. Both runners draw arrivals from here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::sim::workload::SimRequest;

/// The requests still to arrive.
#[derive(Debug)]
pub(crate) struct ArrivalQueue<'a> {
    reqs: &'a [SimRequest],
    /// Next open-loop request to look at, in workload (arrival) order.
    next: usize,
    /// Released follow-ups: (arrival time as ordered bits, index).
    released: BinaryHeap<Reverse<(u64, usize)>>,
    /// Per request, the index + 1 of the turn that follows it (0: none).
    follower: Vec<u32>,
    /// Requests not arrived yet.
    left: usize,
}

/// A non-negative time as bits that order like the time.
fn key(t: f64) -> u64 {
    debug_assert!(t >= 0.0);
    t.max(0.0).to_bits()
}

impl<'a> ArrivalQueue<'a> {
    pub(crate) fn new(reqs: &'a [SimRequest]) -> Self {
        let mut follower = vec![0u32; reqs.len()];
        for (i, r) in reqs.iter().enumerate() {
            if let Some(f) = r.after {
                follower[f.prev as usize] = i as u32 + 1;
            }
        }
        let mut q = ArrivalQueue {
            reqs,
            next: 0,
            released: BinaryHeap::new(),
            follower,
            left: reqs.len(),
        };
        q.skip_follow_ups();
        q
    }

    fn skip_follow_ups(&mut self) {
        while self.next < self.reqs.len() && self.reqs[self.next].after.is_some() {
            self.next += 1;
        }
    }

    /// Whether every request has arrived.
    pub(crate) fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The earliest known arrival still to come (`None`: nothing known, though
    /// follow-ups of running requests may still be released).
    pub(crate) fn next_time(&self) -> Option<f64> {
        let open = self.reqs.get(self.next).map(|r| r.arrival);
        let released = self.released.peek().map(|Reverse((t, _))| f64::from_bits(*t));
        match (open, released) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next request arrived by `now` and its arrival time, earliest first
    /// (an open-loop request before a follow-up arriving at the same time).
    pub(crate) fn pop(&mut self, now: f64) -> Option<(usize, f64)> {
        let open = self
            .reqs
            .get(self.next)
            .filter(|r| r.arrival <= now)
            .map(|r| r.arrival);
        let released = self
            .released
            .peek()
            .map(|Reverse((t, _))| f64::from_bits(*t))
            .filter(|&t| t <= now);
        let take_open = match (open, released) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        self.left -= 1;
        if take_open {
            let i = self.next;
            self.next += 1;
            self.skip_follow_ups();
            Some((i, self.reqs[i].arrival))
        } else {
            let Reverse((t, i)) = self.released.pop().expect("peeked");
            Some((i, f64::from_bits(t)))
        }
    }

    /// Request `r` is done (finished or rejected) at `t`: the turn after it,
    /// if any, arrives after its think time.
    pub(crate) fn done(&mut self, r: usize, t: f64) {
        if let Some(f) = self.follower[r].checked_sub(1) {
            let f = f as usize;
            let think = self.reqs[f].after.map_or(0.0, |a| a.think_s);
            self.released.push(Reverse((key(t + think), f)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::synthetic::{LengthDist, SyntheticSpec};
    use crate::sim::workload::ThinkTime;

    #[test]
    fn follow_ups_arrive_after_the_previous_turn_is_done() {
        let w = SyntheticSpec {
            num_requests: 4,
            turns: 2,
            prompt_len: LengthDist::Fixed(4),
            think_time: ThinkTime::Fixed(1.5),
            ..Default::default()
        }
        .generate()
        .unwrap();
        let mut q = ArrivalQueue::new(&w.requests);
        // Two conversations start at 0; their second turns wait.
        assert_eq!(q.pop(0.0), Some((0, 0.0)));
        assert_eq!(q.pop(0.0), Some((2, 0.0)));
        assert_eq!((q.pop(100.0), q.next_time(), q.is_empty()), (None, None, false));
        q.done(2, 3.0);
        q.done(0, 4.0);
        assert_eq!(q.next_time(), Some(4.5));
        assert_eq!(q.pop(4.0), None);
        assert_eq!(q.pop(10.0), Some((3, 4.5)));
        assert_eq!(q.pop(10.0), Some((1, 5.5)));
        assert!(q.is_empty());
    }
}
