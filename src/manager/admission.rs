//! Admission control: whether a request can start now, later, or never, and
//! why never (the refusal carries the numbers and what to change).

use super::{Admission, AdmissionRefusal, KvCacheManager};
use crate::ids::TokenId;
use crate::prefix::PrefixKeys;

impl KvCacheManager {
    /// Whether a request with `prompt_len` prompt tokens that may generate
    /// `max_new_tokens` more can start now, later, or never.
    ///
    /// - `Never` when it can never run to completion: longer than
    ///   `max_model_len`, more blocks than the whole pool, or a prompt that even
    ///   an empty pool could not take while keeping the watermark.
    /// - `Now` when the prompt's blocks are free with the watermark to spare
    ///   (generated tokens take blocks one at a time, as paged attention intends).
    /// - `Later` otherwise: it fits once running sequences finish.
    ///
    /// Pure: it changes nothing. With prefix caching on, use
    /// [`Self::check_admission_for`], which counts cached blocks.
    pub fn check_admission(&self, prompt_len: u64, max_new_tokens: u64) -> Admission {
        self.admission(prompt_len, max_new_tokens, 0)
    }

    /// [`Self::check_admission`] for a concrete prompt: blocks of its cached
    /// prefix that running sequences hold need no free block, so a prompt
    /// whose prefix is cached may start now where a cold one would wait.
    ///
    /// ```
    /// use pagedkv::{Admission, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 4, block_size: 4, watermark: 0.0, enable_prefix_caching: true, ..Default::default()
    /// }).unwrap();
    /// let system: Vec<u32> = (0..12).collect();
    /// kv.allocate(SeqId(1), &system).unwrap();                 // 3 of 4 blocks
    /// let mut prompt = system.clone();
    /// prompt.extend([100, 101]);                               // 14 tokens: 4 blocks cold
    /// let keys = PrefixKeys::default();
    /// assert_eq!(kv.check_admission(14, 0), Admission::Later);
    /// assert_eq!(kv.check_admission_for(&prompt, &keys, 0), Admission::Now); // 3 blocks shared
    /// ```
    pub fn check_admission_for(
        &self,
        prompt: &[TokenId],
        keys: &PrefixKeys,
        max_new_tokens: u64,
    ) -> Admission {
        let held = self.cached_prefix(prompt, keys, true).held_blocks;
        self.admission(prompt.len() as u64, max_new_tokens, held)
    }

    /// Admission with `held` leading prompt blocks already held by running
    /// sequences (shared, so they take no free block).
    pub(super) fn admission(&self, prompt_len: u64, max_new_tokens: u64, held: u64) -> Admission {
        let total = prompt_len.saturating_add(max_new_tokens);
        if prompt_len == 0 {
            return Admission::Never(AdmissionRefusal::EmptyPrompt);
        }
        if total > self.config.max_model_len as u64 {
            return Admission::Never(AdmissionRefusal::ExceedsMaxModelLen {
                tokens: total,
                max_model_len: self.config.max_model_len,
            });
        }
        let num_blocks = self.pool.num_blocks() as u64;
        let total_blocks = self.blocks_for(total);
        if total_blocks > num_blocks {
            return Admission::Never(AdmissionRefusal::ExceedsPool {
                tokens: total,
                blocks_needed: total_blocks,
                num_blocks,
                block_size: self.config.block_size,
            });
        }
        let prompt_blocks = self.blocks_for(prompt_len);
        let watermark = self.watermark_blocks as u64;
        if prompt_blocks + watermark > num_blocks {
            return Admission::Never(AdmissionRefusal::PromptAboveWatermark {
                prompt_tokens: prompt_len,
                blocks_needed: prompt_blocks,
                num_blocks,
                watermark_blocks: self.watermark_blocks,
            });
        }
        if prompt_blocks - held + watermark <= self.pool.num_free() as u64 {
            Admission::Now
        } else {
            Admission::Later
        }
    }
}
