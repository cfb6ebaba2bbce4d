//! Per-sequence state: a map keyed by a cheap hasher, and the slab the
//! manager keeps its device sequences in (dense [`SeqHandle`]s index it).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ids::{SeqHandle, SeqId};

/// A multiplicative hasher for engine-chosen `u64` sequence ids: one multiply and
/// a fold, several times cheaper than SipHash on the hot path. Sequence ids come
/// from the engine, not from untrusted clients, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct SeqIdHasher(u64);

impl Hasher for SeqIdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Fold the well-mixed high bits into the low bits the table indexes by.
        self.0 = h ^ (h >> 29);
    }
}

pub(crate) type SeqMap<V> = HashMap<SeqId, V, BuildHasherDefault<SeqIdHasher>>;

/// A value whose hot loops may leave derived state behind (the manager's
/// `Seq`: the token count of its groups past the first), brought up to date
/// by every access to it but the hot ones ([`SeqSlab::entries_hot`],
/// [`SeqSlab::by_handle_hot`], [`SeqSlab::get_hot`]), whose callers read
/// none of that state before setting it.
pub(crate) trait CatchUp {
    fn catch_up(&self);
}

/// Tags each slab (each manager, and each clone of one) so that a handle from
/// another is refused rather than resolved.
static NEXT_OWNER: AtomicU32 = AtomicU32::new(1);

fn next_owner() -> u32 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// One slot of a [`SeqSlab`]: the sequence living there (if any), the
/// slot's generation (bumped each time a sequence leaves it) and the hot
/// path's word of derived state.
///
/// Laid out for the decode loops: the generation and hot word first, then
/// the value (whose hot fields come first), the id last, so that what a
/// decode step reads and writes is in the entry's first 48 bytes.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Entry<V> {
    pub(crate) gen: u32,
    /// Derived from the value by the hot path (the manager: the length below
    /// which a one-token append needs no check). Every mutable access but
    /// [`SeqSlab::by_handle_hot`] resets it to 0, so it can never describe a
    /// value changed behind the hot path's back.
    pub(crate) hot: u32,
    pub(crate) val: Option<V>,
    pub(crate) id: SeqId,
}

impl<V> Entry<V> {
    /// Whether `h` names this entry's sequence (given the slab's owner tag).
    #[inline(always)]
    pub(crate) fn is(&self, h: SeqHandle, owner: u32) -> bool {
        self.gen == h.gen && h.owner == owner && self.val.is_some()
    }
}

/// Sequences in a dense slab: values live in a `Vec` and are found by
/// [`SeqHandle`] (slot index, generation and owner: one bounds check and two
/// comparisons) or by [`SeqId`] (one map lookup to the slot, then the slab).
/// Freed slots are reused most recent first, so a steady batch keeps its
/// slots and its handles stay dense. Iteration is in slot order.
#[derive(Debug)]
pub(crate) struct SeqSlab<V> {
    entries: Vec<Entry<V>>,
    ids: SeqMap<u32>,
    free: Vec<u32>,
    owner: u32,
}

impl<V> Default for SeqSlab<V> {
    fn default() -> Self {
        SeqSlab {
            entries: Vec::new(),
            ids: SeqMap::default(),
            free: Vec::new(),
            owner: next_owner(),
        }
    }
}

impl<V: Clone> Clone for SeqSlab<V> {
    /// A copy with a new owner tag: handles of the original are foreign to it.
    fn clone(&self) -> Self {
        SeqSlab {
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    id: e.id,
                    gen: e.gen,
                    hot: e.hot,
                    val: e.val.clone(),
                })
                .collect(),
            ids: self.ids.clone(),
            free: self.free.clone(),
            owner: next_owner(),
        }
    }
}

impl<V: CatchUp> SeqSlab<V> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    #[inline]
    pub(crate) fn contains_key(&self, seq: &SeqId) -> bool {
        self.ids.contains_key(seq)
    }

    #[inline(always)]
    pub(crate) fn get(&self, seq: &SeqId) -> Option<&V> {
        let &i = self.ids.get(seq)?;
        let v = self.entries[i as usize].val.as_ref()?;
        v.catch_up();
        Some(v)
    }

    /// The value, mutably (its hot word is reset).
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, seq: &SeqId) -> Option<&mut V> {
        let &i = self.ids.get(seq)?;
        let e = &mut self.entries[i as usize];
        e.hot = 0;
        let v = e.val.as_mut()?;
        v.catch_up();
        Some(v)
    }

    /// The handle of a sequence in the slab.
    #[inline]
    pub(crate) fn handle(&self, seq: &SeqId) -> Option<SeqHandle> {
        let &index = self.ids.get(seq)?;
        Some(SeqHandle {
            index,
            gen: self.entries[index as usize].gen,
            owner: self.owner,
        })
    }

    /// The sequence a live handle names, with its value.
    #[inline]
    pub(crate) fn by_handle(&self, h: SeqHandle) -> Option<(SeqId, &V)> {
        let e = self.entries.get(h.index as usize)?;
        if e.gen != h.gen || h.owner != self.owner {
            return None;
        }
        let v = e.val.as_ref()?;
        v.catch_up();
        Some((e.id, v))
    }

    /// [`Self::by_handle`], mutably, with the entry's hot word, which the
    /// caller keeps true to the value (set it to 0 when unsure).
    #[inline]
    pub(crate) fn by_handle_hot(&mut self, h: SeqHandle) -> Option<(SeqId, &mut u32, &mut V)> {
        let e = self.entries.get_mut(h.index as usize)?;
        if e.gen != h.gen || h.owner != self.owner {
            return None;
        }
        e.val.as_mut().map(|v| (e.id, &mut e.hot, v))
    }

    /// The entries and the owner tag, for a hot loop that resolves handles
    /// itself ([`Entry::is`]) and keeps the hot words true.
    #[inline]
    pub(crate) fn entries_hot(&mut self) -> (&mut [Entry<V>], u32) {
        (&mut self.entries, self.owner)
    }

    /// The value, mutably, with its hot word (as [`Self::by_handle_hot`]).
    #[inline]
    pub(crate) fn get_hot(&mut self, seq: &SeqId) -> Option<(&mut u32, &mut V)> {
        let &i = self.ids.get(seq)?;
        let e = &mut self.entries[i as usize];
        e.val.as_mut().map(|v| (&mut e.hot, v))
    }

    /// Inserts a sequence the slab does not hold (callers check), returning its handle.
    pub(crate) fn insert(&mut self, seq: SeqId, val: V) -> SeqHandle {
        debug_assert!(!self.ids.contains_key(&seq), "{seq:?} is in the slab already");
        let index = match self.free.pop() {
            Some(i) => {
                let e = &mut self.entries[i as usize];
                e.id = seq;
                e.hot = 0;
                e.val = Some(val);
                i
            }
            None => {
                let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 sequences");
                self.entries.push(Entry {
                    id: seq,
                    gen: 0,
                    hot: 0,
                    val: Some(val),
                });
                i
            }
        };
        self.ids.insert(seq, index);
        SeqHandle {
            index,
            gen: self.entries[index as usize].gen,
            owner: self.owner,
        }
    }

    /// Removes a sequence; its handles go stale. The value comes back as
    /// the hot loops left it: a caller that keeps it catches it up.
    #[inline]
    pub(crate) fn remove(&mut self, seq: &SeqId) -> Option<V> {
        let i = self.ids.remove(seq)?;
        let e = &mut self.entries[i as usize];
        e.gen = e.gen.wrapping_add(1);
        e.hot = 0;
        self.free.push(i);
        e.val.take()
    }

    pub(crate) fn iter(&self) -> Iter<'_, V> {
        Iter(self.entries.iter())
    }

    /// The ids (no value is read, so none is caught up).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &SeqId> + '_ {
        self.entries.iter().filter(|e| e.val.is_some()).map(|e| &e.id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Every value, mutably (their hot words are reset).
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.entries.iter_mut().filter_map(|e| {
            e.hot = 0;
            let v = e.val.as_mut()?;
            v.catch_up();
            Some(v)
        })
    }
}

/// The live sequences of a [`SeqSlab`], in slot order.
pub(crate) struct Iter<'a, V>(std::slice::Iter<'a, Entry<V>>);

impl<'a, V: CatchUp> Iterator for Iter<'a, V> {
    type Item = (&'a SeqId, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.by_ref().find_map(|e| {
            let v = e.val.as_ref()?;
            v.catch_up();
            Some((&e.id, v))
        })
    }
}

impl<'a, V: CatchUp> IntoIterator for &'a SeqSlab<V> {
    type Item = (&'a SeqId, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn seq_hasher_spreads_strided_ids() {
        let b = BuildHasherDefault::<SeqIdHasher>::default();
        let mut low: Vec<u64> = (0..64u64).map(|i| b.hash_one(SeqId(i << 20)) & 63).collect();
        low.sort_unstable();
        low.dedup();
        assert!(
            low.len() > 32,
            "strided ids collide in the low bits: {}",
            low.len()
        );
    }
}
