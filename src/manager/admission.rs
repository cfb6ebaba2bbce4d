//! Admission control: whether a request can start now, later, or never, and
//! why never (the refusal carries the numbers and what to change).
//!
//! The rules, shared with `allocate` and `swap_in` so that what admission
//! promises they keep:
//! - **never**: an empty prompt, prompt + max new tokens longer than
//!   `max_model_len`, or more blocks at the sequence's peak than the whole
//!   pool has. The peak counts the tokens whose KV is ever stored: the prompt
//!   and every generated token but the last (the last sampled token is
//!   returned, never fed back).
//! - **now**: the prompt's blocks (less those of its cached prefix that running
//!   sequences hold already) are free, keeping the watermark free for the
//!   running sequences to grow. With nothing on the device the watermark is
//!   not kept: nobody needs it, and a prompt that fits the pool must be able
//!   to start.
//! - **later** otherwise.

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
        let held = self.cached_prefix(prompt, keys, true).held_blocks;
        self.admission(prompt.len() as u64, max_new_tokens, held)
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
        Ok(self.admission(prompt_len, max_new_tokens, 0))
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
        let peak = self.blocks_for(stored);
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

    /// Admission with `held` leading prompt blocks already held by running
    /// sequences (shared, so they take no free block).
    pub(super) fn admission(&self, prompt_len: u64, max_new_tokens: u64, held: u64) -> Admission {
        if let Err(why) = self.check_runnable(prompt_len, max_new_tokens) {
            return Admission::Never(why);
        }
        let prompt_blocks = self.blocks_for(prompt_len);
        if prompt_blocks - held + self.reserve_for_growth() <= self.pool.num_free() as u64 {
            Admission::Now
        } else {
            Admission::Later
        }
    }
}
