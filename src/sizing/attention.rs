//! Attention kinds: which earlier tokens a layer's attention reads, and so
//! which of a sequence's KV blocks a layer of that kind must keep.
//!
//! A hybrid model mixes kinds (Gemma 2/3 and gpt-oss alternate sliding-window
//! and full layers, Llama 4 mixes chunked local and full layers). Layers of one
//! kind form a KV cache group; the manager keeps one block table per group and
//! releases the blocks a group's kind will never read again. The arithmetic
//! here is shared by the manager (releasing blocks, prefix hits, admission) and
//! the planner (sizing a pool that every group draws from).

use std::fmt;

use crate::error::PlanError;

use super::blocks_for;

/// Which earlier tokens a layer's attention reads.
///
/// ```
/// use pagedkv::AttentionKind;
/// let swa = AttentionKind::SlidingWindow { window: 8 };
/// // The query at position 20 reads positions 13..=20: blocks of 4 from block 3 on.
/// assert_eq!(swa.first_needed_block(20, 4), 3);
/// assert_eq!(AttentionKind::Full.first_needed_block(20, 4), 0);
/// // Llama 4's local layers: position 20 reads its own chunk of 16, 16..=20.
/// assert_eq!(AttentionKind::ChunkedLocal { chunk: 16 }.first_needed_block(20, 4), 4);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttentionKind {
    /// Every earlier token (full causal attention; also MLA, which stores one
    /// latent per token but reads all of them).
    #[default]
    Full,
    /// The last `window` tokens: position `p` reads positions
    /// `p + 1 - window ..= p` (Mistral-7B, Gemma 2/3, gpt-oss local layers).
    SlidingWindow {
        /// Tokens a query attends to, itself included (≥ 1).
        window: u32,
    },
    /// Fixed chunks of `chunk` tokens: position `p` reads only the tokens of its
    /// own chunk, `p - p % chunk ..= p` (Llama 4's local attention layers).
    ChunkedLocal {
        /// Tokens per attention chunk (≥ 1).
        chunk: u32,
    },
}

impl AttentionKind {
    /// Whether blocks before the window are never read again (sliding or chunked).
    #[inline]
    pub const fn releases_blocks(self) -> bool {
        !matches!(self, AttentionKind::Full)
    }

    /// The first position a query at position `pos` (or any later one) reads.
    #[inline]
    pub const fn first_needed_pos(self, pos: u64) -> u64 {
        match self {
            AttentionKind::Full => 0,
            // (A zero window or chunk is refused by `validate`; it reads like 1 here.)
            AttentionKind::SlidingWindow { window } => pos.saturating_sub((window as u64).saturating_sub(1)),
            AttentionKind::ChunkedLocal { chunk: 0 } => pos,
            AttentionKind::ChunkedLocal { chunk } => pos - pos % chunk as u64,
        }
    }

    /// The first block a query at position `pos` (or any later one) reads:
    /// every block before it can be released once `pos` is the next position
    /// to compute.
    #[inline]
    pub const fn first_needed_block(self, pos: u64, block_size: u32) -> u64 {
        match self.first_needed_pos(pos).checked_div(block_size as u64) {
            Some(block) => block,
            None => 0, // (block size 0, refused by validation: nothing is released)
        }
    }

    /// The shortest sequence length `len` at which a query at position `len`
    /// (the next token to compute) no longer reads any block before `block`:
    /// the smallest `len` with `first_needed_block(len) >= block`. A table
    /// that released its first `block` blocks can be truncated to no fewer
    /// tokens; it releases block `block` when it grows past
    /// `first_len_reading_from(block + 1)`. `u64::MAX` for full attention (it
    /// never stops reading a block), 0 for `block == 0`.
    ///
    /// ```
    /// use pagedkv::AttentionKind;
    /// let swa = AttentionKind::SlidingWindow { window: 8 };
    /// assert_eq!(swa.first_len_reading_from(2, 4), 15); // position 15 reads 8..=15
    /// assert_eq!(swa.first_needed_block(15, 4), 2);
    /// assert_eq!(swa.first_needed_block(14, 4), 1);
    /// let local = AttentionKind::ChunkedLocal { chunk: 16 };
    /// assert_eq!(local.first_len_reading_from(1, 4), 16);
    /// ```
    pub const fn first_len_reading_from(self, block: u64, block_size: u32) -> u64 {
        if block == 0 {
            return 0;
        }
        let start = block.saturating_mul(block_size as u64);
        match self {
            AttentionKind::Full => u64::MAX,
            AttentionKind::SlidingWindow { window } => {
                start.saturating_add((window as u64).saturating_sub(1))
            }
            AttentionKind::ChunkedLocal { chunk: 0 } => start,
            AttentionKind::ChunkedLocal { chunk } => {
                let c = chunk as u64;
                start.div_ceil(c).saturating_mul(c)
            }
        }
    }

    /// The most blocks one sequence of this kind ever holds at once, when it
    /// grows to `max_len` tokens computing at most `max_step_tokens` tokens per
    /// step (its prefill chunk, or 1 for decodes; blocks are released before
    /// each step's tokens are added). Full attention: all of `max_len`.
    ///
    /// ```
    /// use pagedkv::AttentionKind;
    /// // gpt-oss's 128-token windows, blocks of 16, prefill chunks of 2048 tokens:
    /// let swa = AttentionKind::SlidingWindow { window: 128 };
    /// assert_eq!(swa.max_blocks_per_seq(100_000, 2048, 16), (127 + 2048 + 15_u64).div_ceil(16));
    /// assert_eq!(swa.max_blocks_per_seq(40, 2048, 16), 3); // never more than the sequence itself
    /// assert_eq!(AttentionKind::Full.max_blocks_per_seq(100_000, 2048, 16), 6250);
    /// ```
    pub const fn max_blocks_per_seq(self, max_len: u64, max_step_tokens: u64, block_size: u32) -> u64 {
        let bs = block_size as u64;
        let all = blocks_for(max_len, bs);
        let window = match self {
            AttentionKind::Full => return all,
            AttentionKind::SlidingWindow { window } => window as u64,
            AttentionKind::ChunkedLocal { chunk } => chunk as u64,
        };
        // A step computing positions a..b keeps positions from
        // first_needed_pos(a) >= a - (window - 1) to b - 1: a span of at most
        // window - 1 + (b - a) tokens, which covers the most blocks when it
        // starts at the last slot of a block (bs - 1 more), unless it always
        // starts on a block boundary (chunks that are whole blocks).
        let span = window.saturating_sub(1).saturating_add(max_step_tokens);
        let aligned = matches!(self, AttentionKind::ChunkedLocal { chunk }
            if chunk != 0 && bs != 0 && chunk as u64 % bs == 0);
        let steady = if aligned {
            blocks_for(span, bs)
        } else {
            blocks_for(span.saturating_add(bs.saturating_sub(1)), bs)
        };
        if steady < all {
            steady
        } else {
            all
        }
    }

    /// The blocks vLLM 0.33.0 reserves per request for one layer of this kind
    /// (`max_admission_blocks_per_request` of its KV cache specs), which both
    /// sizes the pool at start-up and gates admission:
    ///
    /// - full: `ceil(max_model_len / block_size)`;
    /// - sliding window `W`: `ceil(min(W - 1 + in_flight, max_model_len) / block_size) + 1`
    ///   (the window need not start on a block boundary);
    /// - chunked local `C`: `ceil(min(C + in_flight, max_model_len) / block_size)`,
    ///
    /// where `in_flight` is `max_in_flight_tokens`: tokens scheduled but not yet
    /// processed, `max_num_batched_tokens` × the batches in flight (2 under
    /// vLLM's default async scheduling). Unlike [`max_blocks_per_seq`](Self::max_blocks_per_seq)
    /// this is vLLM's formula, including its `+ 1` when the window covers the
    /// whole sequence.
    ///
    /// ```
    /// use pagedkv::AttentionKind;
    /// // gpt-oss's 128-token windows, 2 × 2048 tokens in flight, blocks of 16:
    /// let swa = AttentionKind::SlidingWindow { window: 128 };
    /// assert_eq!(swa.vllm_max_blocks_per_seq(131_072, 4096, 16), (127 + 4096_u64).div_ceil(16) + 1);
    /// assert_eq!(swa.vllm_max_blocks_per_seq(100, 4096, 16), 7 + 1);
    /// let chunked = AttentionKind::ChunkedLocal { chunk: 8192 };
    /// assert_eq!(chunked.vllm_max_blocks_per_seq(10_485_760, 4096, 16), 768);
    /// assert_eq!(AttentionKind::Full.vllm_max_blocks_per_seq(128_000, 4096, 16), 8000);
    /// ```
    pub const fn vllm_max_blocks_per_seq(
        self,
        max_model_len: u64,
        max_in_flight_tokens: u64,
        block_size: u32,
    ) -> u64 {
        let bs = block_size as u64;
        let (held, extra) = match self {
            AttentionKind::Full => return blocks_for(max_model_len, bs),
            AttentionKind::SlidingWindow { window } => (
                (window as u64)
                    .saturating_sub(1)
                    .saturating_add(max_in_flight_tokens),
                1,
            ),
            AttentionKind::ChunkedLocal { chunk } => ((chunk as u64).saturating_add(max_in_flight_tokens), 0),
        };
        let tokens = if held < max_model_len { held } else { max_model_len };
        blocks_for(tokens, bs).saturating_add(extra)
    }

    /// Checks the window or chunk size; the error names the field.
    pub fn validate(self) -> Result<(), PlanError> {
        match self {
            AttentionKind::SlidingWindow { window: 0 } => Err(PlanError::InvalidConfig {
                field: "sliding_window",
                reason: "a sliding window of 0 tokens reads nothing; use the model's window (e.g. 4096), \
                         or full attention"
                    .into(),
            }),
            AttentionKind::ChunkedLocal { chunk: 0 } => Err(PlanError::InvalidConfig {
                field: "attention_chunk_size",
                reason:
                    "an attention chunk of 0 tokens reads nothing; use the model's chunk size (e.g. 8192)"
                        .into(),
            }),
            _ => Ok(()),
        }
    }

    /// A short name for reports and errors: `full`, `sliding_window(4096)`, `chunked_local(8192)`.
    pub fn label(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AttentionKind::Full => f.write_str("full"),
            AttentionKind::SlidingWindow { window } => write!(f, "sliding_window({window})"),
            AttentionKind::ChunkedLocal { chunk } => write!(f, "chunked_local({chunk})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brute-force peak: replay a sequence growing to `len` in steps of
    /// `step` tokens, releasing before each step, and track the blocks held.
    fn brute_peak(kind: AttentionKind, len: u64, step: u64, bs: u32) -> u64 {
        let mut peak = 0;
        let mut a = 0;
        while a < len {
            let b = (a + step).min(len);
            let held = blocks_for(b, bs as u64) - kind.first_needed_block(a, bs);
            peak = peak.max(held);
            a = b;
        }
        peak
    }

    #[test]
    fn max_blocks_bounds_every_replay() {
        for bs in [1u32, 3, 4, 16] {
            for w in [1u32, 2, 5, 8, 16, 33] {
                for step in [1u64, 2, 7, 16, 40] {
                    for len in [1u64, 5, 16, 17, 100, 333] {
                        for kind in [
                            AttentionKind::SlidingWindow { window: w },
                            AttentionKind::ChunkedLocal { chunk: w },
                            AttentionKind::Full,
                        ] {
                            let bound = kind.max_blocks_per_seq(len, step, bs);
                            let peak = brute_peak(kind, len, step, bs);
                            assert!(
                                peak <= bound,
                                "{kind} len {len} step {step} bs {bs}: {peak} > {bound}"
                            );
                            assert!(bound <= blocks_for(len, bs as u64));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn first_len_reading_from_inverts_first_needed_block() {
        for bs in [1u32, 3, 4, 16] {
            for w in [1u32, 2, 5, 8, 16, 33] {
                for kind in [
                    AttentionKind::SlidingWindow { window: w },
                    AttentionKind::ChunkedLocal { chunk: w },
                ] {
                    for block in 0..20u64 {
                        let len = kind.first_len_reading_from(block, bs);
                        assert!(kind.first_needed_block(len, bs) >= block, "{kind} {block} {bs}");
                        if len > 0 {
                            assert!(
                                kind.first_needed_block(len - 1, bs) < block,
                                "{kind} {block} {bs}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(AttentionKind::Full.first_len_reading_from(1, 16), u64::MAX);
    }

    #[test]
    fn zero_windows_are_refused() {
        assert!(AttentionKind::SlidingWindow { window: 0 }.validate().is_err());
        assert!(AttentionKind::ChunkedLocal { chunk: 0 }.validate().is_err());
        assert!(AttentionKind::SlidingWindow { window: 1 }.validate().is_ok());
    }

    #[test]
    fn window_of_one_needs_only_the_current_position() {
        let k = AttentionKind::SlidingWindow { window: 1 };
        assert_eq!(k.first_needed_pos(9), 9);
        assert_eq!(k.max_blocks_per_seq(1000, 1, 4), 1);
        assert_eq!(k.max_blocks_per_seq(1000, 2, 4), 2);
    }

    #[test]
    fn max_blocks_is_reached_by_some_length() {
        // The bound is tight for decodes: some sequence length reaches it.
        for bs in [1u32, 3, 4, 16] {
            for w in [1u32, 2, 5, 8, 16, 33] {
                let kind = AttentionKind::SlidingWindow { window: w };
                let bound = kind.max_blocks_per_seq(10_000, 1, bs);
                let reached = (0..200)
                    .map(|len| brute_peak(kind, 2000 + len, 1, bs))
                    .max()
                    .unwrap();
                assert_eq!(reached, bound, "window {w} block size {bs}");
            }
        }
    }
}
