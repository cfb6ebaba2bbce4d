//! Admission control: whether a request can start now, later, or never, and
//! why never (the refusal carries the numbers and what to change).
//!
//! The rules, shared with `allocate` and `swap_in` so that what admission
//! promises they keep:
//! - **never**: an empty prompt, prompt + max new tokens longer than
//!   `max_model_len`, or more blocks at the sequence's peak than the whole
//!   pool has. The peak counts the tokens whose KV is ever stored (the prompt
//!   and every generated token but the last: the last sampled token is
//!   returned, never fed back) in every KV cache group, where a
//!   sliding-window or chunked local group holds at most its window plus one
//!   prefill chunk ([`crate::AttentionKind::max_blocks_per_seq`]);
//! - **now**: the blocks the prompt's prefill takes at its peak (less those of
//!   its cached prefix that running sequences hold already) are free, keeping
//!   the watermark free for the running sequences to grow. With nothing on the
//!   device the watermark is not kept: nobody needs it, and a prompt that fits
//!   the pool must be able to start;
//! - **later** otherwise.
//!
//! Prompts are assumed to be prefilled in chunks of
//! `KvCacheConfig::prefill_chunk_tokens` (whole, by default); the reference
//! scheduler passes its own token budget.

use super::caching::{full_vouches, hit_from, CachedPrefix};
use super::{Admission, AdmissionRefusal, KvCacheManager};
use crate::error::KvError;
use crate::ids::TokenId;
use crate::prefix::PrefixKeys;

impl KvCacheManager {
    /// Whether a request with this prompt (under these prefix keys) that may
    /// generate `max_new_tokens` more can start now, later, or never (see the
    /// rules in the module docs). With prefix caching on, blocks of the
    /// prompt's cached prefix that running sequences hold take no free block,
    /// so a prompt whose prefix is cached may start now where a cold one would
    /// wait. Pure: it changes nothing.
    ///
    /// ```
    /// use pagedkv::{Admission, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 4, block_size: 4, watermark: 0.0, enable_prefix_caching: true, ..Default::default()
    /// }).unwrap();
    /// let system: Vec<u32> = (0..12).collect();
    /// kv.allocate(SeqId(1), &system).unwrap();                 // 3 of 4 blocks
    /// kv.drain_ops(&mut Default::default());                   // its step runs: the blocks are cached
    /// let mut prompt = system.clone();
    /// prompt.extend([100, 101]);                               // 14 tokens: 4 blocks cold
    /// let keys = PrefixKeys::default();
    /// assert_eq!(kv.check_admission(&prompt, &keys, 0), Admission::Now); // 3 blocks shared
    /// let cold: Vec<u32> = (50..64).collect();
    /// assert_eq!(kv.check_admission(&cold, &keys, 0), Admission::Later);
    /// ```
    pub fn check_admission(&self, prompt: &[TokenId], keys: &PrefixKeys, max_new_tokens: u64) -> Admission {
        self.check_admission_chunked(prompt, keys, max_new_tokens, self.config_chunk())
    }

    /// [`Self::check_admission`] for a prefill in chunks of `chunk` tokens.
    pub(crate) fn check_admission_chunked(
        &self,
        prompt: &[TokenId],
        keys: &PrefixKeys,
        max_new_tokens: u64,
        chunk: u64,
    ) -> Admission {
        let hit = self.cached_prefix(prompt, keys, true);
        self.admission(prompt.len() as u64, max_new_tokens, &hit, chunk)
    }

    /// The prefill chunk admission assumes: `prefill_chunk_tokens`, or whole prompts.
    fn config_chunk(&self) -> u64 {
        self.config.prefill_chunk_tokens.map_or(u64::MAX, u64::from)
    }

    /// [`Self::check_admission`] from the prompt's length alone, for a manager
    /// without prefix caching (where the tokens do not matter).
    ///
    /// Errors: [`KvError::AdmissionNeedsPrompt`] when prefix caching is on: the
    /// answer then depends on which of the prompt's blocks are cached, so a
    /// length-only answer could keep waiting a request that fits now.
    ///
    /// ```
    /// use pagedkv::{Admission, KvCacheConfig, KvCacheManager};
    /// let kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
    /// assert_eq!(kv.check_admission_len(20, 8), Ok(Admission::Now));
    /// ```
    pub fn check_admission_len(&self, prompt_len: u64, max_new_tokens: u64) -> Result<Admission, KvError> {
        if self.prefix.is_some() {
            return Err(KvError::AdmissionNeedsPrompt);
        }
        Ok(self.admission(
            prompt_len,
            max_new_tokens,
            &CachedPrefix::default(),
            self.config_chunk(),
        ))
    }

    /// Whether a request of these lengths can ever run to completion in this
    /// cache, whatever is cached or running: `Err` with the reason when it
    /// cannot (the `Never` of [`Self::check_admission`]). Pure, and valid with
    /// prefix caching on (a scheduler checks it when a request arrives).
    ///
    /// ```
    /// use pagedkv::{AdmissionRefusal, KvCacheConfig, KvCacheManager};
    /// let kv = KvCacheManager::new(KvCacheConfig { num_blocks: 4, block_size: 4, ..Default::default() }).unwrap();
    /// // 8 prompt tokens + 9 new ones store at most 16 tokens (the last sampled token is never stored).
    /// assert_eq!(kv.check_runnable(8, 9), Ok(()));
    /// assert!(matches!(kv.check_runnable(8, 10), Err(AdmissionRefusal::ExceedsPool { .. })));
    /// ```
    pub fn check_runnable(&self, prompt_len: u64, max_new_tokens: u64) -> Result<(), AdmissionRefusal> {
        self.check_runnable_chunked(prompt_len, max_new_tokens, self.config_chunk())
    }

    /// [`Self::check_runnable`] for a prefill in chunks of `chunk` tokens.
    pub(crate) fn check_runnable_chunked(
        &self,
        prompt_len: u64,
        max_new_tokens: u64,
        chunk: u64,
    ) -> Result<(), AdmissionRefusal> {
        if prompt_len == 0 {
            return Err(AdmissionRefusal::EmptyPrompt);
        }
        let total = prompt_len.saturating_add(max_new_tokens);
        if total > self.config.max_model_len as u64 {
            return Err(AdmissionRefusal::ExceedsMaxModelLen {
                tokens: total,
                max_model_len: self.config.max_model_len,
            });
        }
        let stored = prompt_len + max_new_tokens.saturating_sub(1);
        let num_blocks = self.pool.num_blocks() as u64;
        // A sequence preempted by recompute prefills its whole context again:
        // up to `stored` tokens in flight, in chunks of at most `chunk`.
        let step = chunk.clamp(1, stored);
        let bs = self.config.block_size;
        let peak: u64 = self
            .config
            .groups
            .iter()
            .map(|k| k.max_blocks_per_seq(stored, step, bs))
            .sum();
        if peak > num_blocks {
            return Err(AdmissionRefusal::ExceedsPool {
                tokens: stored,
                blocks_needed: peak,
                num_blocks,
                block_size: self.config.block_size,
            });
        }
        Ok(())
    }

    /// Free blocks a new sequence must leave free: the watermark while other
    /// sequences are on the device, none when nothing is.
    #[inline]
    pub(super) fn reserve_for_growth(&self) -> u64 {
        if self.seqs.is_empty() {
            0
        } else {
            self.watermark_blocks as u64
        }
    }

    /// Admission of a prompt whose cached prefix is `hit`, prefilled in
    /// chunks of `chunk` tokens.
    pub(super) fn admission(
        &self,
        prompt_len: u64,
        max_new_tokens: u64,
        hit: &CachedPrefix,
        chunk: u64,
    ) -> Admission {
        if let Err(why) = self.check_runnable_chunked(prompt_len, max_new_tokens, chunk) {
            return Admission::Never(why);
        }
        let bs = self.config.block_size;
        let step = chunk.clamp(1, prompt_len);
        let prompt_blocks = self.blocks_for(prompt_len);
        let vouched = full_vouches(&self.config.groups);
        let mut needed = 0;
        // The first chunk: from the hit to a chunk past it.
        let first_end = (hit.hit_blocks * bs as u64).saturating_add(step).min(prompt_len);
        for (g, kind) in self.config.groups.iter().enumerate() {
            // Blocks the group holds from the hit on: its window at the hit
            // point and the prefill's blocks, at most a window and a chunk.
            let from = hit_from(*kind, hit.hit_blocks as usize, bs, vouched) as u64;
            let from_hit = prompt_blocks - from;
            let peak = kind.max_blocks_per_seq(prompt_len, step, bs);
            // Held hit blocks take no free block, unless the window slides
            // past them during the prefill (then its peak may be all new
            // blocks). The first chunk holds every block from the hit's
            // first on, which may be one more than a window and a chunk: the
            // block before the hit point that vouches for the hit (a window
            // group beside no full-attention group).
            let held = hit.held_blocks.get(g).copied().unwrap_or(0);
            let first = (self.blocks_for(first_end) - from).saturating_sub(held);
            needed += if from_hit <= peak {
                from_hit - held
            } else {
                peak.max(first)
            };
        }
        if needed + self.reserve_for_growth() <= self.pool.num_free() as u64 {
            Admission::Now
        } else {
            Admission::Later
        }
    }
}
