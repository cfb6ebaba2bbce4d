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

use std::fmt;
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

/// [`hash_block`] of each whole block of `tokens` in turn, the first being
/// block `first_index` of its sequence and chained to `parent`, pushed onto
/// `out` (the same values, one call: without extra keys the loop hashes the
/// token ids in place with nothing else per block).
pub(crate) fn hash_blocks(
    algo: HashAlgorithm,
    mut parent: Option<BlockHash>,
    tokens: &[TokenId],
    first_index: u32,
    block_size: u32,
    keys: &PrefixKeys,
    out: &mut Vec<BlockHash>,
) {
    let blocks = tokens.chunks_exact(block_size as usize);
    out.reserve(blocks.len());
    #[cfg(target_endian = "little")]
    if keys.is_empty() {
        let mut p = parent.map_or(u128::from_le_bytes(ROOT_SEED), BlockHash::get);
        for block in blocks {
            let h = chained(algo, p, bytemuck::cast_slice(block));
            out.push(h);
            p = h.get();
        }
        return;
    }
    for (i, block) in blocks.enumerate() {
        let h = hash_block(algo, parent, block, first_index + i as u32, block_size, keys);
        out.push(h);
        parent = Some(h);
    }
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
    /// Per block: the hash it carries and in which role, its group, and its
    /// links (one record, so a lookup, a hit or a release reads one place).
    slots: Vec<Slot>,
    /// The hash → block map of committed blocks: an open-addressing table
    /// (linear probing from the key's low bits, which are uniformly mixed)
    /// of block ids, `NO_BLOCK` where empty. A probe compares the probed
    /// block's own hash and group, so entries are 4 bytes; it holds at most
    /// one entry per block and at least four times as many positions, so it
    /// never grows (nothing is allocated after construction) and stays at
    /// most a quarter full: short probe runs, and a removal rarely has an
    /// entry after it to shift (16 to 32 bytes per block). Removal shifts the
    /// entries after it back (no tombstones), found in O(1) through the
    /// block's recorded position.
    table: Vec<u32>,
    /// `table.len() - 1` (a power of two minus one).
    mask: usize,
    /// Committed blocks (entries of `table`).
    len: usize,
    /// Duplicates in use now.
    num_dups: usize,
}

/// One block's record in the index.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The hash the block carries, committed, pending or duplicated.
    hash: Option<BlockHash>,
    /// The group of the block while it carries a hash.
    group: u8,
    /// What the carried hash is: `CACHED` (committed, in the table),
    /// `PENDING` (carried, not in the table) or `DUPLICATE` (carried, not in
    /// the table, listed under the cached copy).
    role: u8,
    /// The block's position in `table` while it is cached (else `NO_BLOCK`).
    pos: u32,
    /// The duplicates of a cached block form a doubly linked list with the
    /// cached block as its head: `dup_next` of the cached block is the first
    /// duplicate, of a duplicate the one after it (or `NO_BLOCK`); `dup_prev`
    /// the one before it (the cached block for the first). In the record, so
    /// keeping duplicates never allocates.
    dup_next: u32,
    dup_prev: u32,
}

const CACHED: u8 = 0;
const PENDING: u8 = 1;
const DUPLICATE: u8 = 2;

const EMPTY_SLOT: Slot = Slot {
    hash: None,
    group: 0,
    role: CACHED,
    pos: NO_BLOCK,
    dup_next: NO_BLOCK,
    dup_prev: NO_BLOCK,
};

/// The end of a duplicate list, an empty table position, no position.
const NO_BLOCK: u32 = u32::MAX;

impl PrefixIndex {
    /// An empty index over `num_blocks` blocks.
    pub fn new(num_blocks: u32) -> Self {
        let positions = (4 * num_blocks as usize).next_power_of_two().max(2);
        PrefixIndex {
            slots: vec![EMPTY_SLOT; num_blocks as usize],
            table: vec![NO_BLOCK; positions],
            mask: positions - 1,
            len: 0,
            num_dups: 0,
        }
    }

    /// Where the probe for `hash` in `group` starts.
    #[inline]
    fn home(&self, group: u32, hash: BlockHash) -> usize {
        key(hash, group).get() as usize & self.mask
    }

    /// The block holding `hash` in `group`, if cached.
    #[inline]
    pub fn get(&self, group: u32, hash: BlockHash) -> Option<BlockId> {
        let mut i = self.home(group, hash);
        loop {
            let b = self.table[i];
            if b == NO_BLOCK {
                return None;
            }
            let s = &self.slots[b as usize];
            if s.hash == Some(hash) && s.group as u32 == group {
                return Some(BlockId(b));
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Enters the cached block `b` (its hash and group set, not in the table) in the table.
    fn table_insert(&mut self, b: u32) {
        let s = self.slots[b as usize];
        let mut i = self.home(s.group as u32, s.hash.expect("a cached block carries a hash"));
        while self.table[i] != NO_BLOCK {
            i = (i + 1) & self.mask;
        }
        self.table[i] = b;
        self.slots[b as usize].pos = i as u32;
        self.len += 1;
    }

    /// Removes the cached block `b` from the table, shifting back the entries
    /// after it that would otherwise become unreachable from their home.
    fn table_remove(&mut self, b: u32) {
        let mut hole = std::mem::replace(&mut self.slots[b as usize].pos, NO_BLOCK) as usize;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let e = self.table[j];
            if e == NO_BLOCK {
                break;
            }
            let s = self.slots[e as usize];
            let home = self.home(s.group as u32, s.hash.expect("a cached block carries a hash"));
            // `e` may fill the hole unless its home lies cyclically in (hole, j].
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.table[hole] = e;
                self.slots[e as usize].pos = hole as u32;
                hole = j;
            }
        }
        self.table[hole] = NO_BLOCK;
        self.len -= 1;
    }

    /// Puts `to` in the table position of the cached block `from` (the same
    /// hash and group: the entry moves, the table does not change shape).
    fn table_replace(&mut self, from: u32, to: u32) {
        let pos = std::mem::replace(&mut self.slots[from as usize].pos, NO_BLOCK);
        self.table[pos as usize] = to;
        self.slots[to as usize].pos = pos;
    }

    /// The hash `block` carries, if it is cached (committed).
    #[inline]
    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.slots.get(block.index()) {
            Some(s) if s.role == CACHED => s.hash,
            _ => None,
        }
    }

    /// The hash cached in another block whose content `block` duplicates, if
    /// it is a duplicate.
    #[inline]
    pub fn duplicate_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.slots.get(block.index()) {
            Some(s) if s.role == DUPLICATE => s.hash,
            _ => None,
        }
    }

    /// The hash `block` carries in any role: cached, pending or duplicate.
    #[inline]
    pub fn carried_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.slots.get(block.index()).and_then(|s| s.hash)
    }

    /// Duplicates in use now.
    pub fn num_duplicates(&self) -> usize {
        self.num_dups
    }

    /// Each duplicate with its group and the hash it duplicates.
    pub fn duplicates(&self) -> impl Iterator<Item = (u32, BlockHash, BlockId)> + '_ {
        (0..self.slots.len() as u32).map(BlockId).filter_map(|d| {
            let h = self.duplicate_hash_of(d)?;
            Some((self.slots[d.index()].group as u32, h, d))
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
        let s = self.slots.get(block.index())?;
        s.hash.map(|_| s.group as u32)
    }

    /// The hash `block` carries while it waits to be committed.
    #[inline]
    pub fn pending_hash_of(&self, block: BlockId) -> Option<BlockHash> {
        match self.slots.get(block.index()) {
            Some(s) if s.role == PENDING => s.hash,
            _ => None,
        }
    }

    /// Cached (committed) blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no block is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks `block` of `group` as holding content whose chained hash is
    /// `hash`, not yet hittable (its step has not been handed to the engine).
    #[inline]
    pub(crate) fn insert_pending(&mut self, group: u32, hash: BlockHash, block: BlockId) {
        let s = &mut self.slots[block.index()];
        debug_assert!(s.hash.is_none(), "a block carries at most one hash");
        s.hash = Some(hash);
        s.group = group as u8;
        s.role = PENDING;
    }

    /// Commits a pending block: its hash becomes hittable in its group.
    /// Returns the hash, or `None` (changing nothing) when the block is not
    /// pending any more (freed or rewritten since) or when its hash is already
    /// cached in another block of the group (the same content computed twice):
    /// that block keeps the entry and `block` stays uncached.
    pub(crate) fn commit(&mut self, block: BlockId) -> Option<BlockHash> {
        let h = self.pending_hash_of(block)?;
        let s = &mut self.slots[block.index()];
        s.role = CACHED;
        let group = s.group as u32;
        if self.get(group, h).is_some() {
            self.slots[block.index()].hash = None;
            return None;
        }
        self.table_insert(block.0);
        Some(h)
    }

    /// Commits a pending block whose hash is cached in the free block `from`
    /// of its group by moving the entry: `block` becomes the cached copy and
    /// `from` carries nothing (the hash stays cached throughout).
    pub(crate) fn commit_moving(&mut self, block: BlockId, from: BlockId) {
        let h = self.pending_hash_of(block).expect("the block is pending");
        debug_assert_eq!(
            self.get(self.slots[block.index()].group as u32, h),
            Some(from),
            "`from` is the cached copy"
        );
        debug_assert_eq!(
            self.slots[from.index()].dup_next,
            NO_BLOCK,
            "a free cached block has no duplicates"
        );
        self.slots[block.index()].role = CACHED;
        self.slots[from.index()].hash = None;
        self.table_replace(from.0, block.0);
    }

    /// Commits a pending block whose hash is cached in a block of its group
    /// in use, as a duplicate of it.
    pub(crate) fn commit_duplicate(&mut self, block: BlockId) {
        let h = self.pending_hash_of(block).expect("the block is pending");
        let original = self
            .get(self.slots[block.index()].group as u32, h)
            .expect("the hash is cached");
        // Insert after the head (the cached block).
        let (b, o) = (block.index(), original.index());
        let next = self.slots[o].dup_next;
        let s = &mut self.slots[b];
        s.role = DUPLICATE;
        s.dup_next = next;
        s.dup_prev = original.0;
        if next != NO_BLOCK {
            self.slots[next as usize].dup_prev = block.0;
        }
        self.slots[o].dup_next = block.0;
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
        self.hash_of(block)?;
        let d = self.slots[block.index()].dup_next;
        if d == NO_BLOCK {
            return None;
        }
        // `d` becomes the head: the rest of the list hangs from it already.
        let s = &mut self.slots[block.index()];
        s.dup_next = NO_BLOCK;
        s.hash = None;
        let sd = &mut self.slots[d as usize];
        sd.dup_prev = NO_BLOCK;
        sd.role = CACHED;
        self.num_dups -= 1;
        self.table_replace(block.0, d);
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
        let s = self.slots.get_mut(block.index())?;
        let h = s.hash.take()?;
        let role = std::mem::replace(&mut s.role, CACHED);
        match role {
            PENDING => None,
            DUPLICATE => {
                let (prev, next) = (s.dup_prev, s.dup_next);
                s.dup_next = NO_BLOCK;
                s.dup_prev = NO_BLOCK;
                self.slots[prev as usize].dup_next = next;
                if next != NO_BLOCK {
                    self.slots[next as usize].dup_prev = prev;
                }
                self.num_dups -= 1;
                None
            }
            _ => {
                debug_assert_eq!(
                    s.dup_next, NO_BLOCK,
                    "a cached block with duplicates hands its hash over"
                );
                let group = s.group as u32;
                self.table_remove(block.0);
                Some((h, group))
            }
        }
    }

    /// The cached blocks, in table order.
    fn cached_blocks(&self) -> impl Iterator<Item = (usize, BlockId)> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b != NO_BLOCK)
            .map(|(i, &b)| (i, BlockId(b)))
    }

    /// Checks that the map and the committed per-block hashes describe the
    /// same bijection, and that pending flags go with carried hashes.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        for (i, b) in self.cached_blocks() {
            let Some(s) = self.slots.get(b.index()) else {
                return Err(InvariantViolation::new(format!(
                    "index table position {i} names unknown block {b:?}"
                )));
            };
            let found = s.hash.and_then(|h| self.get(s.group as u32, h));
            if s.role != CACHED || s.pos != i as u32 || found != Some(b) {
                return Err(InvariantViolation::new(format!(
                    "block {b:?} is in the index table at {i} but carries {:?} in group {} (role {}, position {}; its hash finds {found:?})",
                    s.hash, s.group, s.role, s.pos
                )));
            }
        }
        if let Some(b) =
            (0..self.slots.len()).find(|&b| self.slots[b].role != CACHED && self.slots[b].hash.is_none())
        {
            return Err(InvariantViolation::new(format!(
                "block {b} is pending or a duplicate but carries no hash"
            )));
        }
        // Walk each cached block's duplicate list: every listed block is a
        // duplicate of that key, linked both ways, and every duplicate is listed.
        let mut listed = 0;
        for (_, head) in self.cached_blocks() {
            let k = (self.slots[head.index()].group, self.slots[head.index()].hash);
            let (mut prev, mut d) = (head.0, self.slots[head.index()].dup_next);
            while d != NO_BLOCK {
                let block = BlockId(d);
                let s = self.slots[d as usize];
                let dup_key = (s.group, self.duplicate_hash_of(block));
                if dup_key != k || s.dup_prev != prev || listed > self.num_dups {
                    return Err(InvariantViolation::new(format!(
                        "block {block:?} is listed as a duplicate of {:?} (cached in {head:?}) but carries {:?}",
                        k.1,
                        self.carried_hash_of(block)
                    )));
                }
                listed += 1;
                (prev, d) = (d, s.dup_next);
            }
        }
        let flagged = self.slots.iter().filter(|s| s.role == DUPLICATE).count();
        if listed != flagged || flagged != self.num_dups {
            return Err(InvariantViolation::new(format!(
                "{flagged} blocks are duplicates, {listed} are listed, {} are counted",
                self.num_dups
            )));
        }
        let carried = self
            .slots
            .iter()
            .filter(|s| s.role == CACHED && s.hash.is_some())
            .count();
        if carried != self.len || self.cached_blocks().count() != self.len {
            return Err(InvariantViolation::new(format!(
                "{carried} blocks carry a committed hash but the index holds {} (counted {})",
                self.cached_blocks().count(),
                self.len
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
    fn hash_blocks_chains_as_hash_block_does() {
        let toks: Vec<u32> = (0..70).map(|t| t * 7 + 1).collect();
        let salted = PrefixKeys::salted("t");
        let image = PrefixKeys {
            mm_spans: vec![MmSpan {
                offset: 20,
                len: 9,
                hash: 5,
            }],
            ..Default::default()
        };
        for keys in [PrefixKeys::default(), salted, image] {
            for (parent, first) in [(None, 0), (Some(BlockHash::from_u128(77)), 3)] {
                let mut out = vec![BlockHash::from_u128(1)];
                hash_blocks(A, parent, &toks, first, 16, &keys, &mut out);
                let mut expect = vec![BlockHash::from_u128(1)];
                let mut p = parent;
                for (i, b) in toks.chunks_exact(16).enumerate() {
                    let h = hash_block(A, p, b, first + i as u32, 16, &keys);
                    expect.push(h);
                    p = Some(h);
                }
                assert_eq!(out, expect, "{keys:?} from block {first}");
            }
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

    #[test]
    fn colliding_keys_stay_findable_through_removals() {
        // 16 blocks, a 32-position table: keys whose low bits put them all in
        // a few homes near the table's end, so probes cluster and wrap, and
        // removals shift entries back across the wrap.
        let n = 16u32;
        let mut ix = PrefixIndex::new(n);
        let mut model: std::collections::HashMap<BlockHash, BlockId> = Default::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..4000 {
            let b = BlockId((next() % n as u64) as u32);
            if let Some(h) = ix.hash_of(b) {
                assert_eq!(ix.remove_block(b), Some((h, 0)));
                model.remove(&h);
            } else {
                // High bits pick the hash, low bits one of three homes (30, 31, 0).
                let home = [30u128, 31, 0][(next() % 3) as usize];
                let h = BlockHash::from_u128(((next() % 24) as u128) << 64 | home);
                let inserted = ix.insert(0, h, b);
                assert_eq!(inserted, !model.contains_key(&h));
                if inserted {
                    model.insert(h, b);
                }
            }
            ix.check_invariants().unwrap();
            assert_eq!(ix.len(), model.len());
            for (&h, &b) in &model {
                assert_eq!(ix.get(0, h), Some(b));
            }
            let absent = BlockHash::from_u128(((next() % 24) as u128) << 64 | 31);
            assert_eq!(ix.get(0, absent), model.get(&absent).copied());
        }
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
