//! Bounds on the prefix-cache hit rate of a workload, computed from the trace
//! alone: what an infinite cache would hit, and what the offline optimum
//! (Belady's MIN: on a miss with the cache full, evict the block whose next
//! use is farthest, or do not cache the new one if its own is) hits with a
//! cache of C blocks. A run's hit rate at C blocks is at most the optimum's,
//! which is at most the infinite cache's.
//!
//! The model: requests in arrival order; each looks up the full blocks of
//! its prompt before its last token (a run always computes the last prompt
//! token), then stores every full block of its prompt and of its output but
//! the last token (whose KV is never stored). Block identity is content:
//! blocks with equal tokens after equal prefixes are the same block (the
//! chained hashes of prefix caching). Hit rate = hit prompt tokens / prompt
//! tokens, over requests whose prompt is shorter than `max_model_len`
//! (outputs capped at `max_model_len`). The optimum counts every cached
//! block it finds, even past a missing one, so it bounds any policy from
//! above; a real cache must also hold the running sequences' blocks.
//!
//! A closed-loop follow-up's arrival depends on the run; here it arrives its
//! think time after the turn it follows arrived (as if replies took no time),
//! so for closed-loop chats the bounds are for that order, an estimate of the
//! run's (exact for open-loop traces, whose order is the run's admission
//! order when nothing is preempted).

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::sim::error::SimError;
use crate::sim::rng::mix64;
use crate::sim::workload::{Segment, Workload};

/// A hasher for ids that are already well mixed.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 ids are hashed")
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type Ids = BuildHasherDefault<IdHasher>;

/// One block access: the block's id and whether it is a lookup (counted).
#[derive(Clone, Copy, Debug)]
struct Access {
    block: u64,
    lookup: bool,
}

/// The block accesses of a workload at one block size.
#[derive(Debug)]
pub struct BlockTrace {
    block_size: u32,
    accesses: Vec<Access>,
    /// Prompt tokens of the requests counted (the hit rate's denominator).
    prompt_tokens: u64,
}

impl BlockTrace {
    /// The accesses of `workload` in blocks of `block_size` tokens.
    ///
    /// ```
    /// use pagedkv::sim::prefix_bounds::BlockTrace;
    /// use pagedkv::sim::synthetic::{LengthDist, SyntheticSpec};
    /// let w = SyntheticSpec { num_requests: 50, system_prompt_len: 64,
    ///     prompt_len: LengthDist::Fixed(16), output_len: LengthDist::Fixed(8), ..Default::default() }
    ///     .generate().unwrap();
    /// let t = BlockTrace::new(&w, 16, 2048).unwrap();
    /// // 49 of 50 requests find the 64-token system prompt: 49 × 64 of 50 × 80 tokens.
    /// assert!((t.infinite_hit_rate() - 49.0 * 64.0 / 4000.0).abs() < 1e-9);
    /// assert_eq!(t.optimal_hit_rate(1_000), t.infinite_hit_rate());
    /// assert!(t.optimal_hit_rate(2) < t.infinite_hit_rate());
    /// ```
    pub fn new(workload: &Workload, block_size: u32, max_model_len: u32) -> Result<Self, SimError> {
        if block_size == 0 {
            return Err(SimError::InvalidConfig {
                field: "block_size",
                reason: "must be at least 1 token".into(),
            });
        }
        let bs = block_size as u64;
        let mut accesses = Vec::new();
        let mut prompt_tokens = 0;
        let mut pieces: Vec<Segment> = Vec::new();
        // Arrival order, a follow-up its think time after the turn it follows.
        let mut at: Vec<f64> = Vec::with_capacity(workload.requests.len());
        for r in &workload.requests {
            at.push(match r.after {
                Some(f) => at[f.prev as usize] + f.think_s,
                None => r.arrival,
            });
        }
        let mut order: Vec<usize> = (0..workload.requests.len()).collect();
        order.sort_by(|&a, &b| at[a].total_cmp(&at[b]));
        for r in order.iter().map(|&i| &workload.requests[i]) {
            let prompt = r.prompt.len() as u64;
            if prompt == 0 || prompt >= max_model_len as u64 {
                continue;
            }
            prompt_tokens += prompt;
            let output = (r.output_len as u64).min(max_model_len as u64 - prompt);
            let lookups = (prompt - 1) / bs;
            let stored = (prompt + output.saturating_sub(1)) / bs;
            pieces.clear();
            pieces.extend_from_slice(r.prompt.segments());
            pieces.push(Segment {
                key: r.output_key,
                len: output.saturating_sub(1) as u32,
            });
            // Walk the pieces block by block: a block's id chains its parent's
            // with each (segment key, offset, length) piece it covers.
            let (mut seg, mut off, mut parent) = (0usize, 0u64, 0x243F_6A88_85A3_08D3u64);
            for b in 0..stored {
                let mut need = bs;
                let mut h = mix64(parent);
                while need > 0 {
                    let s = pieces[seg];
                    let take = need.min(s.len as u64 - off);
                    h = mix64(h ^ mix64(s.key ^ mix64(off << 32 | take)));
                    need -= take;
                    off += take;
                    if off == s.len as u64 {
                        seg += 1;
                        off = 0;
                    }
                }
                parent = h;
                accesses.push(Access {
                    block: h,
                    lookup: b < lookups,
                });
            }
        }
        Ok(BlockTrace {
            block_size,
            accesses,
            prompt_tokens,
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Prompt tokens of the requests counted.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    fn rate(&self, hit_blocks: u64) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            (hit_blocks * self.block_size as u64) as f64 / self.prompt_tokens as f64
        }
    }

    /// The hit rate of a cache that never evicts.
    pub fn infinite_hit_rate(&self) -> f64 {
        let mut seen: HashSet<u64, Ids> = HashSet::default();
        let mut hits = 0;
        for a in &self.accesses {
            let new = seen.insert(a.block);
            hits += (a.lookup && !new) as u64;
        }
        self.rate(hits)
    }

    /// The offline optimum's hit rate with a cache of `capacity` blocks.
    pub fn optimal_hit_rate(&self, capacity: u64) -> f64 {
        let n = self.accesses.len();
        // next[i]: the index of the next access to the same block (n: never).
        let mut next = vec![n; n];
        let mut last: HashMap<u64, usize, Ids> = HashMap::default();
        for i in (0..n).rev() {
            if let Some(j) = last.insert(self.accesses[i].block, i) {
                next[i] = j;
            }
        }
        drop(last);
        // Cached blocks with the index of their next use; the heap holds
        // (next use, block) entries, stale ones skipped when popped.
        let mut cached: HashMap<u64, usize, Ids> = HashMap::default();
        let mut heap: BinaryHeap<(usize, u64)> = BinaryHeap::new();
        let mut hits = 0u64;
        for (i, a) in self.accesses.iter().enumerate() {
            if let Some(nu) = cached.get_mut(&a.block) {
                hits += a.lookup as u64;
                *nu = next[i];
                heap.push((next[i], a.block));
                continue;
            }
            if capacity == 0 || next[i] == n {
                continue; // never used again: not worth a slot
            }
            if cached.len() as u64 >= capacity {
                // The farthest next use among the cached blocks.
                let (far, victim) = loop {
                    let (nu, b) = heap.pop().expect("a full cache has entries");
                    if cached.get(&b) == Some(&nu) {
                        break (nu, b);
                    }
                };
                if far <= next[i] {
                    heap.push((far, victim)); // keep it; bypass the new block
                    continue;
                }
                cached.remove(&victim);
            }
            cached.insert(a.block, next[i]);
            heap.push((next[i], a.block));
            // Keep the heap from growing without bound with stale entries.
            if heap.len() > 4 * cached.len() + 1024 {
                heap = cached.iter().map(|(&b, &nu)| (nu, b)).collect();
            }
        }
        self.rate(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::synthetic::{LengthDist, SyntheticSpec};

    /// Belady's MIN by brute force: evict the block whose next use is farthest.
    fn brute_force(t: &BlockTrace, capacity: usize) -> u64 {
        let a = &t.accesses;
        let next_use = |from: usize, b: u64| (from..a.len()).find(|&j| a[j].block == b).unwrap_or(usize::MAX);
        let mut cache: Vec<u64> = Vec::new();
        let mut hits = 0;
        for (i, x) in a.iter().enumerate() {
            if cache.contains(&x.block) {
                hits += x.lookup as u64;
                continue;
            }
            let mine = next_use(i + 1, x.block);
            if mine == usize::MAX || capacity == 0 {
                continue;
            }
            if cache.len() == capacity {
                let (k, far) = cache
                    .iter()
                    .enumerate()
                    .map(|(k, &b)| (k, next_use(i + 1, b)))
                    .max_by_key(|&(_, f)| f)
                    .unwrap();
                if far <= mine {
                    continue;
                }
                cache.swap_remove(k);
            }
            cache.push(x.block);
        }
        hits
    }

    #[test]
    fn the_optimum_matches_brute_force_and_orders_the_bounds() {
        let w = SyntheticSpec {
            num_requests: 60,
            turns: 3,
            system_prompt_len: 40,
            system_prompt_fraction: 0.5,
            prompt_len: LengthDist::Uniform { min: 1, max: 40 },
            output_len: LengthDist::Uniform { min: 1, max: 20 },
            ..Default::default()
        }
        .generate()
        .unwrap();
        let t = BlockTrace::new(&w, 8, 2048).unwrap();
        let infinite = t.infinite_hit_rate();
        let mut prev = 0.0;
        for c in [0, 1, 3, 8, 20, 50, 200] {
            let opt = t.optimal_hit_rate(c);
            assert_eq!(opt, t.rate(brute_force(&t, c as usize)), "capacity {c}");
            assert!(prev <= opt && opt <= infinite, "{prev} <= {opt} <= {infinite}");
            prev = opt;
        }
        assert!(infinite > 0.3, "history and system prompts repeat: {infinite}");
        assert_eq!(t.optimal_hit_rate(100_000), infinite);
    }
}
