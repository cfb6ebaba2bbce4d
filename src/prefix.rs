//! Automatic prefix caching: chained block hashes, the hash → block index, and
//! the KV events a cache-aware router consumes.
//!
//! A block is hashed once, when it fills: `hash(parent block's hash, the
//! block's token ids, extra keys)`. Chaining makes a block's hash stand for the
//! whole prefix up to its end, so one lookup per block finds the longest cached
//! prefix. Extra keys keep caches apart where the tokens alone would not: a
//! tenant's `cache_salt` and a LoRA adapter id (mixed into the first block,
//! hence into every hash after it), and the content hash of each multimodal
//! span (image, audio) overlapping the block.
//!
//! A block's hash becomes hittable in two stages: when the block fills it is
//! *pending* (it carries its hash, but no lookup finds it), and it is
//! *committed* (entered in the hash → block map) once the step that computes
//! it has been handed to the engine (`drain_ops`): a prompt can never hit KV
//! that nobody wrote.
//!
//! Invariants (checked by [`PrefixIndex::check_invariants`]):
//! - a committed block carries a hash exactly when the index maps that hash
//!   to it, so the map and the committed per-block hashes are two views of
//!   one bijection; a pending block is in no map entry;
//! - only blocks whose content is final carry a hash (the manager strips the
//!   hash of a block before any in-place write: see `manager::caching`).
//!
//! Start reading at [`hash_block`].

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU128;

use crate::error::InvariantViolation;
use crate::ids::{BlockId, TokenId};

/// The chained hash of one full block (128 bits, never zero).
///
/// 128 bits keep accidental collisions negligible at any realistic scale: a
/// cache that hashes 10^12 blocks over its lifetime collides with probability
/// about 10^-15. (64 bits would give even odds near 5·10^9 blocks.)
///
/// ```
/// use pagedkv::{hash_block, HashAlgorithm, PrefixKeys};
/// let keys = PrefixKeys::default();
/// let a = hash_block(HashAlgorithm::default(), None, &[1, 2, 3, 4], 0, 4, &keys);
/// let b = hash_block(HashAlgorithm::default(), Some(a), &[5, 6, 7, 8], 1, 4, &keys);
/// assert_ne!(a, b);
/// assert_eq!(a, hash_block(HashAlgorithm::default(), None, &[1, 2, 3, 4], 0, 4, &keys));
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHash(NonZeroU128);

impl BlockHash {
    /// A hash from its 128-bit value (0, reserved for "no hash", becomes 1).
    pub const fn from_u128(v: u128) -> Self {
        match NonZeroU128::new(v) {
            Some(v) => BlockHash(v),
            None => BlockHash(NonZeroU128::MIN),
        }
    }

    /// The 128-bit value.
    pub const fn get(self) -> u128 {
        self.0.get()
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:032x}", self.get())
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.get())
    }
}

/// The function behind [`BlockHash`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// XXH3-128: fast and non-cryptographic; accidental collisions are
    /// negligible, crafted ones are not prevented (the default).
    #[default]
    Xxh3_128,
    /// SHA-256 truncated to 128 bits (cargo feature `sha256`), for deployments
    /// where clients could craft token sequences to collide with another
    /// tenant's cache entries: finding a collision takes about 2^64 work.
    #[cfg(feature = "sha256")]
    Sha256,
}

/// A multimodal input (image, audio ...) occupying prompt positions
/// `offset .. offset + len`, identified by a hash of its content. Every block
/// that overlaps the span mixes `hash` and `offset` into its block hash, so
/// two prompts with the same placeholder tokens but different images never
/// share blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmSpan {
    /// First prompt position of the span.
    pub offset: u32,
    /// Positions it covers.
    pub len: u32,
    /// Hash of the content (e.g. of the image bytes), computed by the engine.
    pub hash: u128,
}

impl MmSpan {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        let s = self.offset as u64;
        self.len > 0 && s < end && start < s + self.len as u64
    }
}

/// Keys beside the token ids that decide whether two prompts may share cached
/// blocks. The default (no salt, no adapter, no multimodal span) shares with
/// every other default prompt.
///
/// ```
/// use pagedkv::PrefixKeys;
/// let tenant_a = PrefixKeys::salted("tenant-a");
/// let with_lora = PrefixKeys { adapter: Some(7), ..PrefixKeys::default() };
/// assert_ne!(tenant_a, with_lora);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKeys {
    /// Per-tenant salt (vLLM's `cache_salt`): prompts with different salts
    /// never share a block; the same salt does.
    pub cache_salt: Option<String>,
    /// LoRA adapter id: KV computed under one adapter is not reused under another.
    pub adapter: Option<u64>,
    /// Multimodal spans of the prompt.
    pub mm_spans: Vec<MmSpan>,
}

impl PrefixKeys {
    /// Keys with only a tenant salt.
    pub fn salted(salt: impl Into<String>) -> Self {
        PrefixKeys {
            cache_salt: Some(salt.into()),
            ..Default::default()
        }
    }

    /// Whether these are the default keys (nothing beside the tokens).
    pub fn is_empty(&self) -> bool {
        self.cache_salt.is_none() && self.adapter.is_none() && self.mm_spans.is_empty()
    }

    /// The extra keys block `block_index` (covering positions `start..end`)
    /// mixes into its hash, in hashing order.
    pub fn extra_keys_for(&self, block_index: u32, start: u64, end: u64) -> Vec<ExtraKey> {
        let mut out = Vec::new();
        if block_index == 0 {
            if let Some(s) = &self.cache_salt {
                out.push(ExtraKey::CacheSalt(s.clone()));
            }
            if let Some(a) = self.adapter {
                out.push(ExtraKey::Adapter(a));
            }
        }
        for m in self.mm_spans.iter().filter(|m| m.overlaps(start, end)) {
            out.push(ExtraKey::Multimodal {
                hash: m.hash,
                offset: m.offset,
            });
        }
        out
    }
}

/// One extra key of a block, as published in [`KvEvent::BlockStored`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtraKey {
    /// The tenant salt (first block only; chaining carries it to the rest).
    CacheSalt(String),
    /// The LoRA adapter id (first block only).
    Adapter(u64),
    /// A multimodal span overlapping the block.
    Multimodal {
        /// Content hash of the span.
        hash: u128,
        /// First prompt position of the span.
        offset: u32,
    },
}

/// The seed standing in for the parent hash of a sequence's first block.
const ROOT_SEED: [u8; 16] = *b"pagedkv-root-v1\0";

/// Encoding tags of the extra keys (part of the hash input format).
const TAG_SALT: u8 = 1;
const TAG_ADAPTER: u8 = 2;
const TAG_MM: u8 = 3;

/// The chained hash of block `block_index` of a sequence: `parent` is the hash
/// of the block before it (`None` for the first block), `tokens` the block's
/// `block_size` token ids. Deterministic across runs and machines.
///
/// The block's own input is its token ids as little-endian u32, then the
/// extra keys of [`PrefixKeys::extra_keys_for`], each tagged. With XXH3-128
/// the parent is folded in after hashing that input:
/// `xxh3_128(input) ^ mix(parent)`, where `mix` is a bijection of 128-bit
/// values (so different parents never give equal hashes for the same block,
/// and a 16-token block hashes 64 bytes instead of 80). With SHA-256 the
/// parent's 16 bytes are hashed first, as part of the input, so a crafted
/// collision stays as hard as SHA-256 allows. See [`BlockHash`] for the example.
pub fn hash_block(
    algo: HashAlgorithm,
    parent: Option<BlockHash>,
    tokens: &[TokenId],
    block_index: u32,
    block_size: u32,
    keys: &PrefixKeys,
) -> BlockHash {
    let parent = match parent {
        Some(p) => p.get(),
        None => u128::from_le_bytes(ROOT_SEED),
    };
    // The common case (no extra keys) hashes the token ids in place: on a
    // little-endian machine their bytes are the input already. Elsewhere,
    // blocks of up to 64 tokens are copied into a stack buffer sized to the block.
    if keys.is_empty() {
        #[cfg(target_endian = "little")]
        return chained(algo, parent, bytemuck::cast_slice(tokens));
        #[cfg(not(target_endian = "little"))]
        {
            if tokens.len() <= 16 {
                return hash_on_stack::<{ 4 * 16 }>(algo, parent, tokens);
            }
            if tokens.len() <= 64 {
                return hash_on_stack::<{ 4 * 64 }>(algo, parent, tokens);
            }
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4 * tokens.len() + 64);
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    if block_index == 0 {
        if let Some(s) = &keys.cache_salt {
            buf.push(TAG_SALT);
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        if let Some(a) = keys.adapter {
            buf.push(TAG_ADAPTER);
            buf.extend_from_slice(&a.to_le_bytes());
        }
    }
    let start = block_index as u64 * block_size as u64;
    let end = start + block_size as u64;
    for m in keys.mm_spans.iter().filter(|m| m.overlaps(start, end)) {
        buf.push(TAG_MM);
        buf.extend_from_slice(&m.hash.to_le_bytes());
        buf.extend_from_slice(&m.offset.to_le_bytes());
    }
    chained(algo, parent, &buf)
}

/// `hash_block` of a block without extra keys whose input fits in `N` bytes
/// (big-endian targets, where the token ids' bytes are not the input).
#[cfg(not(target_endian = "little"))]
#[inline]
fn hash_on_stack<const N: usize>(algo: HashAlgorithm, parent: u128, tokens: &[TokenId]) -> BlockHash {
    let mut buf = [0u8; N];
    for (dst, t) in buf.chunks_exact_mut(4).zip(tokens) {
        dst.copy_from_slice(&t.to_le_bytes());
    }
    chained(algo, parent, &buf[..4 * tokens.len()])
}

/// The hash of a block's own input, chained to its parent's hash.
#[inline]
fn chained(algo: HashAlgorithm, parent: u128, input: &[u8]) -> BlockHash {
    match algo {
        HashAlgorithm::Xxh3_128 => BlockHash::from_u128(xxhash_rust::xxh3::xxh3_128(input) ^ mix(parent)),
        #[cfg(feature = "sha256")]
        HashAlgorithm::Sha256 => {
            use sha2::Digest;
            let d = sha2::Sha256::new()
                .chain_update(parent.to_le_bytes())
                .chain_update(input)
                .finalize();
            let mut first = [0u8; 16];
            first.copy_from_slice(&d[..16]);
            BlockHash::from_u128(u128::from_le_bytes(first))
        }
    }
}

/// A bijection of 128-bit values that spreads every bit (an xorshift, then a
/// multiplication by an odd constant, both invertible).
#[inline]
const fn mix(x: u128) -> u128 {
    (x ^ (x >> 67)).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
}

/// What a cache-aware router needs to know of an engine's cache, drained with
/// [`crate::KvCacheManager::drain_events`] when `enable_kv_events` is on (the
/// information vLLM publishes as KV events). Each event names the KV cache
/// group its blocks belong to (0 unless the model mixes attention kinds).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvEvent {
    /// Consecutive blocks of one sequence became cached.
    BlockStored {
        /// Their hashes, in order.
        block_hashes: Vec<BlockHash>,
        /// The hash of the block before the first (`None` at the sequence start).
        parent_block_hash: Option<BlockHash>,
        /// The blocks' token ids, concatenated (`block_size` per block).
        token_ids: Vec<TokenId>,
        /// Tokens per block.
        block_size: u32,
        /// Each block's extra keys, in hashing order.
        extra_keys: Vec<Vec<ExtraKey>>,
        /// The KV cache group of the blocks.
        group: u32,
        /// The position of the first block in its sequence (its first token is
        /// token `first_block_index * block_size`): multimodal offsets are
        /// published relative to each block's start.
        first_block_index: u32,
        /// The sequence's LoRA adapter ([`PrefixKeys::adapter`]), which vLLM
        /// publishes with every stored block, not only the first.
        adapter: Option<u64>,
        /// The tier the blocks are now cached in (a block offloaded to the
        /// host tier is stored there; published as vLLM's `medium`).
        tier: CacheTier,
    },
    /// Blocks stopped being cached in a tier (evicted, reset, or about to be rewritten).
    BlockRemoved {
        /// Their hashes.
        block_hashes: Vec<BlockHash>,
        /// The KV cache group of the blocks.
        group: u32,
        /// The tier they left (the same hash may stay cached in the other).
        tier: CacheTier,
    },
    /// Every cached block was dropped.
    AllCleared,
}

/// Which memory a cached block lives in: the device pool, or the host tier
/// it was offloaded to (see `KvCacheConfig::prefix_offload`). KV events carry
/// it; the encoder publishes it as vLLM's `medium` (`"GPU"`, `"CPU"`).
///
/// ```
/// use pagedkv::CacheTier;
/// assert_eq!(CacheTier::default(), CacheTier::Device);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheTier {
    /// Device memory (the block pool).
    #[default]
    Device,
    /// The host tier (host memory).
    Host,
}

/// Block hashes are already uniformly mixed: the low 64 bits index the map.
#[derive(Default, Clone, Copy)]
pub(crate) struct BlockHashHasher(u64);

impl Hasher for BlockHashHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }

    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.0 ^= x as u64;
    }
}

/// The index key of `hash` in KV cache group `group`: the hash itself in
/// group 0, and in group `g` the hash xor a fixed per-group constant (a
/// bijection, so keys of one group never collide; across groups a collision
/// needs two random 128-bit hashes to differ by that constant).
#[inline]
fn key(hash: BlockHash, group: u32) -> BlockHash {
    if group == 0 {
        hash
    } else {
        BlockHash::from_u128(hash.get() ^ mix(group as u128))
    }
}

/// The prefix index: which block holds which hash in which KV cache group,
/// both ways, which blocks wait to be committed, and which blocks in use
/// duplicate a cached block.
///
/// A *duplicate* is a block in use whose final content is that of a hash
/// cached in another block of its group (the same content computed twice). It
/// carries the hash without being indexed, so that when the cached block is
/// freed the hash moves to the duplicate instead of being lost: every full
/// block a sequence holds stays findable, and a router that follows the KV
/// events never sees a block vanish under a live sequence.
#[derive(Clone, Debug)]
pub struct PrefixIndex {
    map: HashMap<BlockHash, BlockId, BuildHasherDefault<BlockHashHasher>>,
    /// The hash each block carries, committed, pending or duplicated.
    hashes: Vec<Option<BlockHash>>,
    /// The group of each block that carries a hash.
    groups: Vec<u8>,
    /// Whether the block's hash is pending (carried, not in `map`).
    pending: Vec<bool>,
    /// Whether the block is a duplicate (carried, not in `map`).
    duplicate: Vec<bool>,
    /// The duplicates of a cached block form a doubly linked list with the
    /// cached block as its head: `dup_next[cached]` is the first duplicate,
    /// `dup_next[d]` the one after `d` (or `NO_BLOCK`), `dup_prev[d]` the one
    /// before it (the cached block for the first). Flat arrays, so keeping
    /// duplicates never allocates.
    dup_next: Vec<u32>,
    dup_prev: Vec<u32>,
    /// Duplicates in use now.
    num_dups: usize,
}

/// The end of a duplicate list.
const NO_BLOCK: u32 = u32::MAX;

impl PrefixIndex {
    /// An empty index over `num_blocks` blocks.
    pub fn new(num_blocks: u32) -> Self {
        PrefixIndex {
            map: HashMap::default(),
            hashes: vec![None; num_blocks as usize],
            groups: vec![0; num_blocks as usize],
            pending: vec![false; num_blocks as usize],
            duplicate: vec![false; num_blocks as usize],
            dup_next: vec![NO_BLOCK; num_blocks as usize],
            dup_prev: vec![NO_BLOCK; num_blocks as usize],
            num_dups: 0,
        }
    }

    /// The block holding `hash` in `group`, if cached.
    #[inline]
    pub fn get(&self, group: u32, hash: BlockHash) -> Option<BlockId> {
        self.map.get(&key(hash, group)).copied()
    }

    /// The hash `block` carries, if it is cached (committed).
    #[inline]
    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.pending.get(block.index()) {
            Some(false) if !self.duplicate[block.index()] => self.hashes[block.index()],
            _ => None,
        }
    }

    /// The hash cached in another block whose content `block` duplicates, if
    /// it is a duplicate.
    #[inline]
    pub fn duplicate_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.duplicate.get(block.index()) {
            Some(true) => self.hashes[block.index()],
            _ => None,
        }
    }

    /// The hash `block` carries in any role: cached, pending or duplicate.
    #[inline]
    pub fn carried_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.hashes.get(block.index()).copied().flatten()
    }

    /// Duplicates in use now.
    pub fn num_duplicates(&self) -> usize {
        self.num_dups
    }

    /// Each duplicate with its group and the hash it duplicates.
    pub fn duplicates(&self) -> impl Iterator<Item = (u32, BlockHash, BlockId)> + '_ {
        (0..self.duplicate.len() as u32).map(BlockId).filter_map(|d| {
            let h = self.duplicate_hash_of(d)?;
            Some((self.groups[d.index()] as u32, h, d))
        })
    }

    /// Whether any block is a duplicate (cheap).
    #[inline]
    pub(crate) fn has_duplicates(&self) -> bool {
        self.num_dups > 0
    }

    /// The KV cache group of a block that carries a hash (committed or pending).
    #[inline]
    pub fn group_of(&self, block: BlockId) -> Option<u32> {
        let i = block.index();
        self.hashes.get(i)?.map(|_| self.groups[i] as u32)
    }

    /// The hash `block` carries while it waits to be committed.
    #[inline]
    pub fn pending_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.pending.get(block.index()) {
            Some(true) => self.hashes[block.index()],
            _ => None,
        }
    }

    /// Cached (committed) blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no block is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Marks `block` of `group` as holding content whose chained hash is
    /// `hash`, not yet hittable (its step has not been handed to the engine).
    pub(crate) fn insert_pending(&mut self, group: u32, hash: BlockHash, block: BlockId) {
        debug_assert!(
            self.hashes[block.index()].is_none(),
            "a block carries at most one hash"
        );
        self.hashes[block.index()] = Some(hash);
        self.groups[block.index()] = group as u8;
        self.pending[block.index()] = true;
    }

    /// Commits a pending block: its hash becomes hittable in its group.
    /// Returns the hash, or `None` (changing nothing) when the block is not
    /// pending any more (freed or rewritten since) or when its hash is already
    /// cached in another block of the group (the same content computed twice):
    /// that block keeps the entry and `block` stays uncached.
    pub(crate) fn commit(&mut self, block: BlockId) -> Option<BlockHash> {
        let h = self.pending_hash_of(block)?;
        self.pending[block.index()] = false;
        let k = key(h, self.groups[block.index()] as u32);
        if self.map.contains_key(&k) {
            self.hashes[block.index()] = None;
            return None;
        }
        self.map.insert(k, block);
        Some(h)
    }

    /// Commits a pending block whose hash is cached in the free block `from`
    /// of its group by moving the entry: `block` becomes the cached copy and
    /// `from` carries nothing (the hash stays cached throughout).
    pub(crate) fn commit_moving(&mut self, block: BlockId, from: BlockId) {
        let h = self.pending_hash_of(block).expect("the block is pending");
        let k = key(h, self.groups[block.index()] as u32);
        debug_assert_eq!(self.map.get(&k), Some(&from), "`from` is the cached copy");
        debug_assert_eq!(
            self.dup_next[from.index()],
            NO_BLOCK,
            "a free cached block has no duplicates"
        );
        self.pending[block.index()] = false;
        self.hashes[from.index()] = None;
        self.map.insert(k, block);
    }

    /// Commits a pending block whose hash is cached in a block of its group
    /// in use, as a duplicate of it.
    pub(crate) fn commit_duplicate(&mut self, block: BlockId) {
        let h = self.pending_hash_of(block).expect("the block is pending");
        let original = self.map[&key(h, self.groups[block.index()] as u32)];
        self.pending[block.index()] = false;
        self.duplicate[block.index()] = true;
        // Insert after the head (the cached block).
        let (b, o) = (block.index(), original.index());
        let next = self.dup_next[o];
        self.dup_next[b] = next;
        self.dup_prev[b] = original.0;
        if next != NO_BLOCK {
            self.dup_prev[next as usize] = block.0;
        }
        self.dup_next[o] = block.0;
        self.num_dups += 1;
    }

    /// Hands the entry of the cached block `block` (about to become free) to
    /// one of its duplicates, which becomes the cached copy; `block` then
    /// carries nothing. Returns the new cached copy, or `None` (changing
    /// nothing) when `block` is not cached or has no duplicate.
    #[inline]
    pub(crate) fn promote_duplicate(&mut self, block: BlockId) -> Option<BlockId> {
        if self.num_dups == 0 {
            return None;
        }
        let h = self.hash_of(block)?;
        let d = *self.dup_next.get(block.index())?;
        if d == NO_BLOCK {
            return None;
        }
        // `d` becomes the head: the rest of the list hangs from it already.
        self.dup_next[block.index()] = NO_BLOCK;
        self.dup_prev[d as usize] = NO_BLOCK;
        self.duplicate[d as usize] = false;
        self.num_dups -= 1;
        self.hashes[block.index()] = None;
        self.map
            .insert(key(h, self.groups[d as usize] as u32), BlockId(d));
        Some(BlockId(d))
    }

    /// Caches `block` under `hash` at once (committed). Returns false,
    /// changing nothing, when the hash is already cached in another block.
    pub(crate) fn insert(&mut self, group: u32, hash: BlockHash, block: BlockId) -> bool {
        self.insert_pending(group, hash, block);
        self.commit(block).is_some()
    }

    /// Uncaches `block`, returning the hash it carried and its group if it
    /// was committed (a pending hash, or a duplicate's, is dropped silently:
    /// the hash was not findable through this block).
    #[inline]
    pub(crate) fn remove_block(&mut self, block: BlockId) -> Option<(BlockHash, u32)> {
        let h = self.hashes.get_mut(block.index())?.take()?;
        if std::mem::replace(&mut self.pending[block.index()], false) {
            return None;
        }
        if std::mem::replace(&mut self.duplicate[block.index()], false) {
            let b = block.index();
            let (prev, next) = (self.dup_prev[b], self.dup_next[b]);
            self.dup_next[prev as usize] = next;
            if next != NO_BLOCK {
                self.dup_prev[next as usize] = prev;
            }
            self.dup_next[b] = NO_BLOCK;
            self.dup_prev[b] = NO_BLOCK;
            self.num_dups -= 1;
            return None;
        }
        debug_assert_eq!(
            self.dup_next[block.index()],
            NO_BLOCK,
            "a cached block with duplicates hands its hash over"
        );
        let group = self.groups[block.index()] as u32;
        self.map.remove(&key(h, group));
        Some((h, group))
    }

    /// Checks that the map and the committed per-block hashes describe the
    /// same bijection, and that pending flags go with carried hashes.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        for (&k, &b) in &self.map {
            let carried = self.hash_of(b).map(|h| key(h, self.groups[b.index()] as u32));
            if carried != Some(k) {
                return Err(InvariantViolation::new(format!(
                    "key {k:?} is indexed to block {b:?}, which carries {:?} in group {} (pending: {})",
                    self.hashes.get(b.index()).copied().flatten(),
                    self.groups.get(b.index()).copied().unwrap_or(0),
                    self.pending.get(b.index()).copied().unwrap_or(false)
                )));
            }
        }
        if let Some(b) = (0..self.hashes.len())
            .find(|&b| (self.pending[b] || self.duplicate[b]) && self.hashes[b].is_none())
        {
            return Err(InvariantViolation::new(format!(
                "block {b} is pending or a duplicate but carries no hash"
            )));
        }
        if let Some(b) = (0..self.hashes.len()).find(|&b| self.pending[b] && self.duplicate[b]) {
            return Err(InvariantViolation::new(format!(
                "block {b} is both pending and a duplicate"
            )));
        }
        // Walk each cached block's duplicate list: every listed block is a
        // duplicate of that key, linked both ways, and every duplicate is listed.
        let mut listed = 0;
        for (&k, &head) in &self.map {
            let (mut prev, mut d) = (head.0, self.dup_next[head.index()]);
            while d != NO_BLOCK {
                let block = BlockId(d);
                let dup_key = self
                    .duplicate_hash_of(block)
                    .map(|h| key(h, self.groups[d as usize] as u32));
                if dup_key != Some(k) || self.dup_prev[d as usize] != prev || listed > self.num_dups {
                    return Err(InvariantViolation::new(format!(
                        "block {block:?} is listed as a duplicate of {k:?} (cached in {head:?}) but carries {:?}",
                        self.carried_hash_of(block)
                    )));
                }
                listed += 1;
                (prev, d) = (d, self.dup_next[d as usize]);
            }
        }
        let flagged = self.duplicate.iter().filter(|&&d| d).count();
        if listed != flagged || flagged != self.num_dups {
            return Err(InvariantViolation::new(format!(
                "{flagged} blocks are duplicates, {listed} are listed, {} are counted",
                self.num_dups
            )));
        }
        let carried = (0..self.hashes.len())
            .filter(|&b| !self.pending[b] && !self.duplicate[b] && self.hashes[b].is_some())
            .count();
        if carried != self.map.len() {
            return Err(InvariantViolation::new(format!(
                "{carried} blocks carry a committed hash but the index holds {}",
                self.map.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HashAlgorithm = HashAlgorithm::Xxh3_128;

    #[test]
    fn chaining_and_extra_keys_change_the_hash() {
        let none = PrefixKeys::default();
        let h0 = hash_block(A, None, &[1, 2], 0, 2, &none);
        assert_ne!(
            h0,
            hash_block(A, Some(h0), &[1, 2], 0, 2, &none),
            "parent matters"
        );
        assert_ne!(h0, hash_block(A, None, &[2, 1], 0, 2, &none), "order matters");
        let salted = PrefixKeys::salted("t1");
        assert_ne!(h0, hash_block(A, None, &[1, 2], 0, 2, &salted));
        assert_ne!(
            hash_block(A, None, &[1, 2], 0, 2, &salted),
            hash_block(A, None, &[1, 2], 0, 2, &PrefixKeys::salted("t2"))
        );
        // Salt and adapter enter the first block only (the chain carries them).
        assert_eq!(
            hash_block(A, Some(h0), &[1, 2], 1, 2, &salted),
            hash_block(A, Some(h0), &[1, 2], 1, 2, &none)
        );
        let adapter = PrefixKeys {
            adapter: Some(3),
            ..Default::default()
        };
        assert_ne!(h0, hash_block(A, None, &[1, 2], 0, 2, &adapter));
    }

    #[test]
    fn multimodal_spans_touch_only_overlapping_blocks() {
        let img = PrefixKeys {
            mm_spans: vec![MmSpan {
                offset: 3,
                len: 2,
                hash: 99,
            }],
            ..Default::default()
        };
        let none = PrefixKeys::default();
        // Block 0 covers 0..2, block 1 covers 2..4, block 2 covers 4..6, block 3 6..8.
        for (i, overlaps) in [(0, false), (1, true), (2, true), (3, false)] {
            let with = hash_block(A, None, &[0, 0], i, 2, &img);
            let without = hash_block(A, None, &[0, 0], i, 2, &none);
            assert_eq!(with != without, overlaps, "block {i}");
            assert_eq!(
                img.extra_keys_for(i, i as u64 * 2, i as u64 * 2 + 2).len(),
                overlaps as usize
            );
        }
        let other_image = PrefixKeys {
            mm_spans: vec![MmSpan {
                offset: 3,
                len: 2,
                hash: 100,
            }],
            ..Default::default()
        };
        assert_ne!(
            hash_block(A, None, &[0, 0], 1, 2, &img),
            hash_block(A, None, &[0, 0], 1, 2, &other_image)
        );
    }

    #[test]
    fn salt_encoding_is_unambiguous() {
        // "ab" + adapter vs "a" + ... must differ: lengths are part of the input.
        let a = PrefixKeys::salted("ab");
        let b = PrefixKeys::salted("a\u{2}");
        assert_ne!(
            hash_block(A, None, &[1], 0, 1, &a),
            hash_block(A, None, &[1], 0, 1, &b)
        );
    }

    #[test]
    fn fast_and_general_paths_hash_the_same_input() {
        // An adapter key on a block other than the first adds no bytes, so the
        // general path must produce the fast path's hash.
        let adapter = PrefixKeys {
            adapter: Some(1),
            ..Default::default()
        };
        let none = PrefixKeys::default();
        for n in [1usize, 16, 64, 65, 200] {
            let toks: Vec<u32> = (0..n as u32).collect();
            assert_eq!(
                hash_block(A, None, &toks, 3, n as u32, &none),
                hash_block(A, None, &toks, 3, n as u32, &adapter),
                "{n} tokens"
            );
        }
    }

    #[test]
    fn zero_is_reserved() {
        assert_eq!(BlockHash::from_u128(0).get(), 1);
        assert_eq!(std::mem::size_of::<Option<BlockHash>>(), 16);
    }

    #[test]
    fn index_is_a_bijection() {
        let mut ix = PrefixIndex::new(4);
        let h = BlockHash::from_u128(5);
        assert!(ix.insert(0, h, BlockId(1)));
        assert!(!ix.insert(0, h, BlockId(2)), "duplicate content stays uncached");
        assert_eq!(ix.get(0, h), Some(BlockId(1)));
        assert_eq!(ix.hash_of(BlockId(2)), None);
        // The same content in another group is another entry.
        assert_eq!(ix.get(1, h), None);
        assert!(ix.insert(1, h, BlockId(3)));
        assert_eq!(
            (ix.get(1, h), ix.group_of(BlockId(3))),
            (Some(BlockId(3)), Some(1))
        );
        ix.check_invariants().unwrap();
        assert_eq!(ix.remove_block(BlockId(1)), Some((h, 0)));
        assert_eq!(ix.remove_block(BlockId(1)), None);
        assert_eq!(ix.get(1, h), Some(BlockId(3)));
        assert_eq!(ix.remove_block(BlockId(3)), Some((h, 1)));
        assert!(ix.is_empty());
        ix.check_invariants().unwrap();
    }

    #[cfg(feature = "sha256")]
    #[test]
    fn sha256_differs_from_xxh3_and_is_stable() {
        let k = PrefixKeys::default();
        let s = hash_block(HashAlgorithm::Sha256, None, &[1, 2], 0, 2, &k);
        assert_ne!(s, hash_block(A, None, &[1, 2], 0, 2, &k));
        assert_eq!(s, hash_block(HashAlgorithm::Sha256, None, &[1, 2], 0, 2, &k));
    }
}

#[cfg(test)]
mod pinned_hashes {
    use super::*;

    /// Hash values are part of the KV-event wire contract (routers compare
    /// them across restarts): these were computed before hashing went in place.
    #[test]
    fn block_hashes_keep_their_values() {
        let keys = PrefixKeys::default();
        let a = hash_block(
            HashAlgorithm::Xxh3_128,
            None,
            &(0..16).collect::<Vec<u32>>(),
            0,
            16,
            &keys,
        );
        let b = hash_block(HashAlgorithm::Xxh3_128, Some(a), &[u32::MAX; 16], 1, 16, &keys);
        let c = hash_block(
            HashAlgorithm::Xxh3_128,
            Some(b),
            &(100..132).collect::<Vec<u32>>(),
            2,
            32,
            &keys,
        );
        let d = hash_block(
            HashAlgorithm::Xxh3_128,
            None,
            &(7..107).collect::<Vec<u32>>(),
            0,
            100,
            &keys,
        );
        assert_eq!(a.get(), 0x57a8251d9875fc9f3fbabd112613bb73);
        assert_eq!(b.get(), 0x3238b896355951be87f9910d800918f6);
        assert_eq!(c.get(), 0xbe6e93cf3e0447e470bce86d00690fcd);
        assert_eq!(d.get(), 0xc52d7d9dbe52a5553f8d2da393bd775b);
    }
}
