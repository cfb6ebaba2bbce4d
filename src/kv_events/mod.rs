//! KV events on the wire: pagedkv's [`KvEvent`]s encoded byte for byte as
//! vLLM 0.33.0 publishes its `KVEventBatch` (msgpack, as msgspec writes it),
//! so the cache-aware routers that read vLLM's events (llm-d's KV cache
//! indexer, NVIDIA Dynamo's KV router) can follow an engine built on pagedkv.
//!
//! The format, pinned by golden bytes from vLLM's own encoder
//! (`data/kv_events/`):
//!
//! - a batch is an array `[ts (float64), events, data_parallel_rank (int or nil)]`;
//! - an event is a map tagged by `"type"`: `BlockStored`, `BlockRemoved` or
//!   `AllBlocksCleared`, with vLLM's fields in vLLM's order. Fields without a
//!   default are always written (`nil` when absent: `parent_block_hash`,
//!   `lora_id`, `lora_name`); fields whose default is `None` are left out when
//!   absent (`kv_cache_spec_sliding_window`, and `extra_keys` of a store
//!   without blocks). `BlockStored` declares 15 fields, so msgspec gives it a
//!   map16 header whatever the number written; the others get a fixmap;
//! - block hashes are msgpack unsigned integers: [`external_block_hash`];
//! - `extra_keys` holds one entry per stored block, `nil` or an array of, in
//!   vLLM's order: the LoRA name (every block of a LoRA sequence), each
//!   overlapping multimodal span as `[identifier, offset from the block's
//!   start]` (the identifier is the 32 lowercase hex digits of
//!   [`crate::MmSpan::hash`]), and the cache salt (first block only).
//!
//! What the manager does not know, the engine supplies in an [`EventSource`]:
//! the data-parallel rank, the storage medium, the LoRA names of adapter ids,
//! and each KV cache group's spec kind and sliding window. The reusable
//! [`KvEventEncoder`] writes a step's events into one buffer: once the buffer
//! has grown to a step's size, encoding allocates nothing.
//!
//! A ZMQ publisher sending these payloads the way vLLM's `ZmqEventPublisher`
//! does lives in the separate `pagedkv-publisher` package (the library stays
//! free of networking).
//!
//! Start reading at [`KvEventEncoder::encode_into`].

use std::collections::BTreeMap;

use crate::prefix::{BlockHash, CacheTier, ExtraKey, KvEvent};
use crate::sizing::AttentionKind;

mod msgpack;
#[cfg(test)]
mod tests;

/// The 64-bit id under which a block is published: the low 64 bits of its
/// 128-bit [`BlockHash`]. This is the projection vLLM applies to its own
/// hashes for events (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`, the default,
/// keeps the last 8 bytes of the big-endian hash), applied to pagedkv's hash
/// as 16 big-endian bytes. Routers treat it as an opaque id and recompute
/// their own keys from the token ids.
///
/// ```
/// use pagedkv::{kv_events::external_block_hash, BlockHash};
/// let h = BlockHash::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
/// assert_eq!(external_block_hash(h), 0xfedc_ba98_7654_3210);
/// ```
#[inline]
pub const fn external_block_hash(hash: BlockHash) -> u64 {
    hash.get() as u64
}

/// Where the blocks an event describes live (vLLM's `medium`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Medium {
    /// Device memory (`"GPU"`, the default).
    #[default]
    Gpu,
    /// A host-memory tier (`"CPU"`).
    Cpu,
    /// Storage below host memory (`"STORAGE"`).
    Storage,
}

impl Medium {
    /// The string vLLM publishes.
    pub const fn as_str(self) -> &'static str {
        match self {
            Medium::Gpu => "GPU",
            Medium::Cpu => "CPU",
            Medium::Storage => "STORAGE",
        }
    }
}

/// The layer kind of a KV cache group, as vLLM names it in
/// `kv_cache_spec_kind` (its `KVCacheSpecKind` values). Routers index only
/// the main attention groups (full attention, MLA) and skip the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KvCacheSpecKind {
    /// `"full_attention"` (the default).
    #[default]
    FullAttention,
    /// `"mla_attention"`.
    MlaAttention,
    /// `"sliding_window"`.
    SlidingWindow,
    /// `"sliding_window_mla"`.
    SlidingWindowMla,
    /// `"mamba"`.
    Mamba,
    /// `"chunked_local_attention"`.
    ChunkedLocalAttention,
    /// `"sink_full_attention"`.
    SinkFullAttention,
    /// `"encoder_only_attention"`.
    EncoderOnlyAttention,
    /// `"cross_attention"`.
    CrossAttention,
    /// `"unknown"`.
    Unknown,
}

impl KvCacheSpecKind {
    /// The string vLLM publishes.
    pub const fn as_str(self) -> &'static str {
        match self {
            KvCacheSpecKind::FullAttention => "full_attention",
            KvCacheSpecKind::MlaAttention => "mla_attention",
            KvCacheSpecKind::SlidingWindow => "sliding_window",
            KvCacheSpecKind::SlidingWindowMla => "sliding_window_mla",
            KvCacheSpecKind::Mamba => "mamba",
            KvCacheSpecKind::ChunkedLocalAttention => "chunked_local_attention",
            KvCacheSpecKind::SinkFullAttention => "sink_full_attention",
            KvCacheSpecKind::EncoderOnlyAttention => "encoder_only_attention",
            KvCacheSpecKind::CrossAttention => "cross_attention",
            KvCacheSpecKind::Unknown => "unknown",
        }
    }

    /// Whether vLLM publishes a sliding window with this kind.
    pub const fn has_window(self) -> bool {
        matches!(
            self,
            KvCacheSpecKind::SlidingWindow | KvCacheSpecKind::SlidingWindowMla
        )
    }
}

/// One KV cache group as its events describe it: `group_idx` is its index in
/// [`EventSource::groups`].
///
/// ```
/// use pagedkv::kv_events::{EventGroup, KvCacheSpecKind};
/// use pagedkv::AttentionKind;
/// let swa = EventGroup::from(AttentionKind::SlidingWindow { window: 4096 });
/// assert_eq!((swa.kind, swa.sliding_window), (KvCacheSpecKind::SlidingWindow, Some(4096)));
/// assert_eq!(EventGroup::default(), EventGroup::from(AttentionKind::Full));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventGroup {
    /// The group's layer kind (`kv_cache_spec_kind`).
    pub kind: KvCacheSpecKind,
    /// Its sliding window in tokens (`kv_cache_spec_sliding_window`; sliding kinds only).
    pub sliding_window: Option<u32>,
}

impl From<AttentionKind> for EventGroup {
    fn from(kind: AttentionKind) -> Self {
        match kind {
            AttentionKind::SlidingWindow { window } => EventGroup {
                kind: KvCacheSpecKind::SlidingWindow,
                sliding_window: Some(window),
            },
            AttentionKind::ChunkedLocal { .. } => EventGroup {
                kind: KvCacheSpecKind::ChunkedLocalAttention,
                sliding_window: None,
            },
            _ => EventGroup::default(),
        }
    }
}

/// What the engine tells the encoder beside the events themselves.
///
/// ```
/// use pagedkv::kv_events::{EventSource, Medium};
/// let mut source = EventSource { data_parallel_rank: Some(2), ..Default::default() };
/// source.lora_names.insert(7, "sql-lora".into()); // adapter id 7 of PrefixKeys
/// assert_eq!(source.medium, Medium::Gpu);
/// assert_eq!(source.groups.len(), 1); // one full-attention group
/// source.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSource {
    /// The engine's data-parallel rank (`Some(0)` by default; vLLM's publisher
    /// always fills it, `None` writes `nil`).
    pub data_parallel_rank: Option<u32>,
    /// Where the manager's device blocks live (GPU by default).
    pub medium: Medium,
    /// Where its host tier's blocks live (CPU by default): the medium of the
    /// events of blocks offloaded there ([`crate::CacheTier::Host`]).
    pub host_medium: Medium,
    /// The KV cache groups, indexed by group (default: one full-attention group).
    pub groups: Vec<EventGroup>,
    /// The name of each LoRA adapter id used in [`crate::PrefixKeys::adapter`],
    /// published as `lora_name` and in the extra keys. An adapter without a
    /// name is published under its id in decimal.
    pub lora_names: BTreeMap<u64, String>,
}

impl Default for EventSource {
    fn default() -> Self {
        EventSource {
            data_parallel_rank: Some(0),
            medium: Medium::Gpu,
            host_medium: Medium::Cpu,
            groups: vec![EventGroup::default()],
            lora_names: BTreeMap::new(),
        }
    }
}

/// An [`EventSource`] the encoder cannot publish; `field` names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventSourceError {
    /// A setting is unusable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending setting (`groups`, `lora_names`, ...).
        field: &'static str,
        /// What is wrong with it and what would work.
        reason: String,
    },
}

impl EventSource {
    /// The default source (GPU, rank 0, no LoRA names) for a manager whose KV
    /// cache groups are `groups` (its [`crate::KvCacheConfig::groups`]).
    ///
    /// ```
    /// use pagedkv::kv_events::{EventSource, KvCacheSpecKind};
    /// use pagedkv::AttentionKind;
    /// let source = EventSource::for_groups(&[AttentionKind::Full, AttentionKind::SlidingWindow { window: 512 }]);
    /// assert_eq!(source.groups[1].kind, KvCacheSpecKind::SlidingWindow);
    /// assert_eq!(source.groups[1].sliding_window, Some(512));
    /// ```
    pub fn for_groups(groups: &[AttentionKind]) -> Self {
        EventSource {
            groups: groups.iter().map(|&k| EventGroup::from(k)).collect(),
            ..Default::default()
        }
    }

    /// Checks that every group and name can be published.
    pub fn validate(&self) -> Result<(), EventSourceError> {
        let invalid = |field, reason: String| Err(EventSourceError::Invalid { field, reason });
        if self.groups.is_empty() {
            return invalid(
                "groups",
                "no KV cache group; events name one (use EventGroup::default() for full attention)".into(),
            );
        }
        for (i, g) in self.groups.iter().enumerate() {
            match (g.kind.has_window(), g.sliding_window) {
                (true, None) | (true, Some(0)) => {
                    return invalid(
                        "groups",
                        format!("group {i} is {} but has no sliding window; give its window in tokens (≥ 1)", g.kind.as_str()),
                    )
                }
                (false, Some(w)) => {
                    return invalid(
                        "groups",
                        format!(
                            "group {i} is {} with a sliding window of {w}; only sliding_window and sliding_window_mla groups have one",
                            g.kind.as_str()
                        ),
                    )
                }
                _ => {}
            }
        }
        if let Some((id, _)) = self.lora_names.iter().find(|(_, n)| n.is_empty()) {
            return invalid(
                "lora_names",
                format!("adapter {id} has an empty name; give the name the router knows it by"),
            );
        }
        Ok(())
    }
}

/// Encodes batches of [`KvEvent`]s as vLLM's `KVEventBatch`, reusing one buffer.
///
/// ```
/// use pagedkv::kv_events::{EventSource, KvEventEncoder};
/// use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId};
/// let mut kv = KvCacheManager::new(KvCacheConfig {
///     num_blocks: 8, block_size: 4, enable_prefix_caching: true, enable_kv_events: true,
///     ..Default::default()
/// }).unwrap();
/// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5]).unwrap(); // fills one block
/// kv.drain_ops(&mut BlockOps::default()); // the step is handed over: the block is cached
/// let mut events = Vec::new();
/// kv.drain_events(&mut events);
/// let mut encoder = KvEventEncoder::new(EventSource::default()).unwrap();
/// let payload = encoder.encode(1_700_000_000.0, &events);
/// assert_eq!(payload[0], 0x93); // [ts, events, data_parallel_rank]
/// ```
#[derive(Clone, Debug)]
pub struct KvEventEncoder {
    source: EventSource,
    buf: Vec<u8>,
}

/// `BlockStored` declares 15 fields (plus the tag), `BlockRemoved` 5.
const STORED_FIELDS: usize = 16;
const REMOVED_FIELDS: usize = 6;
const CLEARED_FIELDS: usize = 1;

// Map keys and tags, pre-encoded (fixstr headers included).
const K_TYPE: &[u8] = b"\xa4type";
const T_STORED: &[u8] = b"\xabBlockStored";
const T_REMOVED: &[u8] = b"\xacBlockRemoved";
const T_CLEARED: &[u8] = b"\xb0AllBlocksCleared";
const K_BLOCK_HASHES: &[u8] = b"\xacblock_hashes";
const K_PARENT: &[u8] = b"\xb1parent_block_hash";
const K_TOKEN_IDS: &[u8] = b"\xa9token_ids";
const K_BLOCK_SIZE: &[u8] = b"\xaablock_size";
const K_LORA_ID: &[u8] = b"\xa7lora_id";
const K_MEDIUM: &[u8] = b"\xa6medium";
const K_LORA_NAME: &[u8] = b"\xa9lora_name";
const K_EXTRA_KEYS: &[u8] = b"\xaaextra_keys";
const K_GROUP_IDX: &[u8] = b"\xa9group_idx";
const K_SPEC_KIND: &[u8] = b"\xb2kv_cache_spec_kind";
const K_WINDOW: &[u8] = b"\xbckv_cache_spec_sliding_window";

impl KvEventEncoder {
    /// An encoder for events from `source` (validated).
    pub fn new(source: EventSource) -> Result<Self, EventSourceError> {
        source.validate()?;
        Ok(KvEventEncoder {
            source,
            buf: Vec::new(),
        })
    }

    /// What the engine supplied.
    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// Encodes one batch (a step's events, taken at time `ts` in seconds since
    /// the Unix epoch) into the encoder's buffer and returns it. Allocates only
    /// while the buffer grows.
    pub fn encode(&mut self, ts: f64, events: &[KvEvent]) -> &[u8] {
        let mut buf = std::mem::take(&mut self.buf);
        self.encode_into(ts, events, &mut buf);
        self.buf = buf;
        &self.buf
    }

    /// Encodes one batch into `out` (cleared first); allocates only if `out`
    /// must grow.
    pub fn encode_into(&self, ts: f64, events: &[KvEvent], out: &mut Vec<u8>) {
        out.clear();
        out.push(0x93);
        msgpack::f64(out, ts);
        msgpack::array_header(out, events.len());
        for e in events {
            self.encode_event(e, self.group_of(e), self.medium_of(e), out);
        }
        match self.source.data_parallel_rank {
            Some(r) => msgpack::uint(out, r as u64),
            None => msgpack::nil(out),
        }
    }

    /// The KV cache group an event names (an index into the source's groups).
    #[inline]
    fn group_of(&self, event: &KvEvent) -> usize {
        match event {
            KvEvent::BlockStored { group, .. } | KvEvent::BlockRemoved { group, .. } => *group as usize,
            _ => 0,
        }
    }

    /// The medium of an event: the source's `medium` for the device tier,
    /// its `host_medium` for blocks the manager offloaded to its host tier.
    #[inline]
    fn medium_of(&self, event: &KvEvent) -> Medium {
        match event {
            KvEvent::BlockStored { tier, .. } | KvEvent::BlockRemoved { tier, .. }
                if *tier == CacheTier::Host =>
            {
                self.source.host_medium
            }
            _ => self.source.medium,
        }
    }

    /// One event of KV cache group `group_idx` (an index into the source's
    /// groups; a group past them is published as full attention) on `medium`.
    fn encode_event(&self, event: &KvEvent, group_idx: usize, medium: Medium, out: &mut Vec<u8>) {
        match event {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                extra_keys,
                first_block_index,
                adapter,
                ..
            } => {
                let group = self.source.groups.get(group_idx).copied().unwrap_or_default();
                let window = group.sliding_window;
                let has_extra = !block_hashes.is_empty();
                let len = 10 + has_extra as usize + window.is_some() as usize;
                msgpack::struct_map_header(out, STORED_FIELDS, len);
                out.extend_from_slice(K_TYPE);
                out.extend_from_slice(T_STORED);
                out.extend_from_slice(K_BLOCK_HASHES);
                msgpack::uint_array(out, block_hashes.iter().map(|&h| external_block_hash(h)));
                out.extend_from_slice(K_PARENT);
                match parent_block_hash {
                    Some(p) => msgpack::uint(out, external_block_hash(*p)),
                    None => msgpack::nil(out),
                }
                out.extend_from_slice(K_TOKEN_IDS);
                msgpack::uint_array(out, token_ids.iter().map(|&t| t as u64));
                out.extend_from_slice(K_BLOCK_SIZE);
                msgpack::uint(out, *block_size as u64);
                out.extend_from_slice(K_LORA_ID);
                match adapter {
                    Some(a) => msgpack::uint(out, *a),
                    None => msgpack::nil(out),
                }
                out.extend_from_slice(K_MEDIUM);
                msgpack::str(out, medium.as_str());
                out.extend_from_slice(K_LORA_NAME);
                match adapter {
                    Some(a) => self.lora_name(*a, out),
                    None => msgpack::nil(out),
                }
                if has_extra {
                    out.extend_from_slice(K_EXTRA_KEYS);
                    msgpack::array_header(out, block_hashes.len());
                    for i in 0..block_hashes.len() {
                        let keys = extra_keys.get(i).map_or(&[][..], Vec::as_slice);
                        let block_start = (*first_block_index as i64 + i as i64) * *block_size as i64;
                        self.block_extra_keys(keys, *adapter, block_start, out);
                    }
                }
                out.extend_from_slice(K_GROUP_IDX);
                msgpack::uint(out, group_idx as u64);
                out.extend_from_slice(K_SPEC_KIND);
                msgpack::str(out, group.kind.as_str());
                if let Some(w) = window {
                    out.extend_from_slice(K_WINDOW);
                    msgpack::uint(out, w as u64);
                }
            }
            KvEvent::BlockRemoved { block_hashes, .. } => {
                msgpack::struct_map_header(out, REMOVED_FIELDS, 4);
                out.extend_from_slice(K_TYPE);
                out.extend_from_slice(T_REMOVED);
                out.extend_from_slice(K_BLOCK_HASHES);
                msgpack::uint_array(out, block_hashes.iter().map(|&h| external_block_hash(h)));
                out.extend_from_slice(K_MEDIUM);
                msgpack::str(out, medium.as_str());
                out.extend_from_slice(K_GROUP_IDX);
                msgpack::uint(out, group_idx as u64);
            }
            KvEvent::AllCleared => {
                msgpack::struct_map_header(out, CLEARED_FIELDS, 1);
                out.extend_from_slice(K_TYPE);
                out.extend_from_slice(T_CLEARED);
            }
        }
    }

    /// The adapter's name, or its id in decimal.
    fn lora_name(&self, adapter: u64, out: &mut Vec<u8>) {
        match self.source.lora_names.get(&adapter) {
            Some(name) => msgpack::str(out, name),
            None => {
                let mut digits = [0u8; 20];
                let mut n = adapter;
                let mut start = digits.len();
                loop {
                    start -= 1;
                    digits[start] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                msgpack::str_header(out, digits.len() - start);
                out.extend_from_slice(&digits[start..]);
            }
        }
    }

    /// One block's entry of `extra_keys`, in vLLM's order: LoRA name,
    /// multimodal spans, cache salt; `nil` when there is none.
    fn block_extra_keys(&self, keys: &[ExtraKey], adapter: Option<u64>, block_start: i64, out: &mut Vec<u8>) {
        let mm = keys
            .iter()
            .filter(|k| matches!(k, ExtraKey::Multimodal { .. }))
            .count();
        let salt = keys
            .iter()
            .filter(|k| matches!(k, ExtraKey::CacheSalt(_)))
            .count();
        let n = adapter.is_some() as usize + mm + salt;
        if n == 0 {
            msgpack::nil(out);
            return;
        }
        msgpack::array_header(out, n);
        if let Some(a) = adapter {
            self.lora_name(a, out);
        }
        for k in keys {
            if let ExtraKey::Multimodal { hash, offset } = k {
                msgpack::array_header(out, 2);
                msgpack::hex128(out, *hash);
                msgpack::int(out, *offset as i64 - block_start);
            }
        }
        for k in keys {
            if let ExtraKey::CacheSalt(s) = k {
                msgpack::str(out, s);
            }
        }
    }
}
