//! Where a reservation baseline puts a reservation: contiguous ranges of
//! token slots placed first-fit or by the buddy system, or anywhere.
//!
//! A contiguous-tensor server needs each sequence's KV in one range, so a
//! reservation waits when the free slots add up to enough but no free range
//! is large enough: external fragmentation, which the PagedAttention paper's
//! Figure 2 counts against the reservation systems.
//!
//! Invariants (checked by `check` in tests): free ranges are disjoint, inside
//! the memory, never adjacent (first fit merges neighbours), and the free
//! slots plus the reserved ones are the whole memory.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::sim::policy::Placement;

/// The token slots of a reservation baseline's KV memory.
#[derive(Clone, Debug)]
pub(crate) struct Slots {
    total: u64,
    free: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Anywhere,
    /// Free ranges, start → length.
    FirstFit(BTreeMap<u64, u64>),
    /// Free blocks of 2^k slots by k, by start address.
    Buddy(Vec<BTreeSet<u64>>),
}

fn order_of(size: u64) -> usize {
    size.next_power_of_two().trailing_zeros() as usize
}

impl Slots {
    /// `total` free slots placed as `placement` says.
    pub(crate) fn new(total: u64, placement: Placement) -> Self {
        let kind = match placement {
            Placement::Anywhere => Kind::Anywhere,
            Placement::FirstFit => Kind::FirstFit(if total > 0 {
                BTreeMap::from([(0, total)])
            } else {
                BTreeMap::new()
            }),
            Placement::Buddy => {
                // The memory as the largest aligned power-of-two blocks that fit,
                // from address 0 (a buddy block never crosses the end).
                let mut lists = vec![BTreeSet::new(); 64];
                let mut at = 0u64;
                while at < total {
                    let align = if at == 0 { 63 } else { at.trailing_zeros() };
                    let fit = 63 - (total - at).leading_zeros();
                    let k = align.min(fit);
                    lists[k as usize].insert(at);
                    at += 1 << k;
                }
                Kind::Buddy(lists)
            }
        };
        Slots {
            total,
            free: total,
            kind,
        }
    }

    /// Free slots.
    pub(crate) fn free(&self) -> u64 {
        self.free
    }

    /// Slots a reservation of `size` takes: `size`, or the power of two above
    /// it under the buddy system.
    pub(crate) fn rounded(&self, size: u64) -> u64 {
        match self.kind {
            Kind::Buddy(_) => size.next_power_of_two(),
            _ => size,
        }
    }

    /// Whether `n` reservations of `size` slots each could be placed in the empty memory.
    pub(crate) fn could_ever_place(&self, n: u64, size: u64) -> bool {
        let size = self.rounded(size);
        match &self.kind {
            Kind::Anywhere | Kind::FirstFit(_) => n.saturating_mul(size) <= self.total,
            Kind::Buddy(_) => {
                // The empty memory's blocks each hold block / size of them.
                let fresh = Slots::new(self.total, Placement::Buddy);
                let Kind::Buddy(lists) = fresh.kind else {
                    unreachable!()
                };
                let k = order_of(size);
                let fit: u64 = (k..64).map(|j| lists[j].len() as u64 * (1u64 << (j - k))).sum();
                fit >= n
            }
        }
    }

    /// Reserves `size` slots (rounded as [`Self::rounded`] says); `None` when
    /// no free range is large enough.
    pub(crate) fn reserve(&mut self, size: u64) -> Option<Range<u64>> {
        let size = self.rounded(size);
        if size > self.free {
            return None;
        }
        let range = match &mut self.kind {
            Kind::Anywhere => 0..size,
            Kind::FirstFit(ranges) => {
                let (&start, &len) = ranges.iter().find(|(_, &len)| len >= size)?;
                ranges.remove(&start);
                if len > size {
                    ranges.insert(start + size, len - size);
                }
                start..start + size
            }
            Kind::Buddy(lists) => {
                let k = order_of(size);
                let j = (k..lists.len()).find(|&j| !lists[j].is_empty())?;
                let start = lists[j].pop_first().expect("non-empty");
                // Split down to order k, freeing the upper halves.
                for i in (k..j).rev() {
                    lists[i].insert(start + (1 << i));
                }
                start..start + size
            }
        };
        self.free -= size;
        Some(range)
    }

    /// Returns a range from [`Self::reserve`].
    pub(crate) fn release(&mut self, range: Range<u64>) {
        let size = range.end - range.start;
        self.free += size;
        match &mut self.kind {
            Kind::Anywhere => {}
            Kind::FirstFit(ranges) => {
                let (mut start, mut len) = (range.start, size);
                if let Some((&s, &l)) = ranges.range(..start).next_back() {
                    if s + l == start {
                        ranges.remove(&s);
                        start = s;
                        len += l;
                    }
                }
                if let Some(l) = ranges.remove(&(start + len)) {
                    len += l;
                }
                ranges.insert(start, len);
            }
            Kind::Buddy(lists) => {
                let (mut start, mut k) = (range.start, order_of(size));
                // Merge with the buddy while it is free (then the parent is inside the memory).
                while k + 1 < lists.len() && lists[k].remove(&(start ^ (1 << k))) {
                    start &= !(1 << k);
                    k += 1;
                }
                lists[k].insert(start);
            }
        }
    }

    /// Checks the invariants (module docs).
    #[cfg(test)]
    fn check(&self) {
        let ranges: Vec<(u64, u64)> = match &self.kind {
            Kind::Anywhere => return,
            Kind::FirstFit(r) => r.iter().map(|(&s, &l)| (s, l)).collect(),
            Kind::Buddy(lists) => {
                let mut v: Vec<(u64, u64)> = lists
                    .iter()
                    .enumerate()
                    .flat_map(|(k, l)| l.iter().map(move |&s| (s, 1u64 << k)))
                    .collect();
                v.sort_unstable();
                for &(s, l) in &v {
                    assert_eq!(s % l, 0, "buddy block {s}+{l} is aligned");
                }
                v
            }
        };
        let mut sum = 0;
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "free ranges overlap: {w:?}");
            if matches!(self.kind, Kind::FirstFit(_)) {
                assert!(w[0].0 + w[0].1 < w[1].0, "adjacent free ranges: {w:?}");
            }
        }
        for &(s, l) in &ranges {
            assert!(l > 0 && s + l <= self.total);
            sum += l;
        }
        assert_eq!(sum, self.free, "free slots");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::SplitMix64;

    #[test]
    fn first_fit_takes_the_lowest_range_and_merges_on_release() {
        let mut s = Slots::new(100, Placement::FirstFit);
        let a = s.reserve(30).unwrap();
        let b = s.reserve(30).unwrap();
        let c = s.reserve(30).unwrap();
        assert_eq!((a.start, b.start, c.start), (0, 30, 60));
        s.release(a);
        s.release(c);
        // 70 slots free, but in ranges of 30 and 40: 50 does not fit.
        assert_eq!(s.free(), 70);
        assert!(s.reserve(50).is_none());
        assert_eq!(s.reserve(35).unwrap(), 60..95, "the first range large enough");
        s.release(b);
        assert_eq!(s.reserve(60).unwrap(), 0..60, "released neighbours merged");
        s.check();
    }

    #[test]
    fn buddy_rounds_up_splits_and_merges() {
        // 100 slots: blocks of 64, 32 and 4.
        let mut s = Slots::new(100, Placement::Buddy);
        s.check();
        assert!(s.could_ever_place(1, 64) && !s.could_ever_place(1, 65));
        assert!(s.could_ever_place(3, 32) && !s.could_ever_place(4, 32));
        let a = s.reserve(20).unwrap();
        assert_eq!(a, 64..96, "20 slots take the free block of 32");
        let b = s.reserve(32).unwrap();
        assert_eq!(b, 0..32, "then the 64 is split");
        let c = s.reserve(3).unwrap();
        assert_eq!(c, 96..100);
        assert!(s.reserve(64).is_none());
        s.release(a);
        s.release(b);
        s.check();
        assert_eq!(s.reserve(64).unwrap(), 0..64, "buddies merged back");
        s.check();
    }

    #[test]
    fn random_reserve_and_release_keep_the_invariants() {
        for placement in [Placement::FirstFit, Placement::Buddy, Placement::Anywhere] {
            let mut rng = SplitMix64::new(5);
            let mut s = Slots::new(1000, placement);
            let mut held: Vec<Range<u64>> = Vec::new();
            for _ in 0..5000 {
                if held.is_empty() || rng.next_f64() < 0.5 {
                    let size = rng.uniform_u32(1, 200) as u64;
                    if let Some(r) = s.reserve(size) {
                        assert!(r.end - r.start >= size);
                        if placement != Placement::Anywhere {
                            assert!(held.iter().all(|h| h.end <= r.start || r.end <= h.start));
                        }
                        held.push(r);
                    }
                } else {
                    let i = rng.uniform_u32(0, held.len() as u32 - 1) as usize;
                    s.release(held.swap_remove(i));
                }
                s.check();
                let used: u64 = held.iter().map(|r| r.end - r.start).sum();
                assert_eq!(s.free() + used, 1000);
            }
            for r in held.drain(..) {
                s.release(r);
            }
            assert_eq!(s.reserve(1000).is_some(), placement != Placement::Buddy);
        }
    }
}
