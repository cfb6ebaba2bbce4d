//! A `Send + Sync` handle for engines whose request handling runs on several threads.

use std::ops::DerefMut;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{KvCacheConfig, KvCacheManager};
use crate::error::KvError;

/// A cloneable, thread-safe handle to one [`KvCacheManager`] behind a mutex.
/// Lock once per step and make all the step's calls under that one lock; each
/// call is nanoseconds, so the lock is held briefly.
///
/// The mutex is `parking_lot`'s (no poisoning, so a panic in another thread
/// does not make the cache unusable, and a smaller, faster uncontended lock
/// than std's); it stays an implementation detail: [`Self::lock`] returns an
/// opaque guard that dereferences to the manager.
///
/// ```
/// use pagedkv::{KvCacheConfig, SeqId, SharedKvCacheManager};
/// let kv = SharedKvCacheManager::new(KvCacheConfig { num_blocks: 16, ..Default::default() }).unwrap();
/// let worker = kv.clone();
/// std::thread::spawn(move || worker.lock().allocate(SeqId(1), &[1, 2, 3]).map(|_| ()))
///     .join().unwrap().unwrap();
/// assert!(kv.lock().contains(SeqId(1)));
/// ```
#[derive(Clone, Debug)]
pub struct SharedKvCacheManager {
    inner: Arc<Mutex<KvCacheManager>>,
}

impl SharedKvCacheManager {
    /// A new manager behind a shared handle.
    pub fn new(config: KvCacheConfig) -> Result<Self, KvError> {
        KvCacheManager::new(config).map(Self::from)
    }

    /// Locks the manager for a batch of calls; the lock is released when the
    /// returned guard is dropped.
    pub fn lock(&self) -> impl DerefMut<Target = KvCacheManager> + '_ {
        self.inner.lock()
    }

    /// Runs `f` under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut KvCacheManager) -> R) -> R {
        f(&mut self.inner.lock())
    }
}

impl From<KvCacheManager> for SharedKvCacheManager {
    fn from(kv: KvCacheManager) -> Self {
        SharedKvCacheManager {
            inner: Arc::new(Mutex::new(kv)),
        }
    }
}
