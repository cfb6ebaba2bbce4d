//! Publishing a step's events makes no heap allocation on the engine's thread
//! once warm: the batch is encoded into a buffer the I/O thread handed back
//! after sending the previous one, and queued on a bounded channel. (The I/O
//! thread allocates as the socket library needs; it is not the engine's.)
//!
//! A counting global allocator counts only on the measuring thread. `flush`
//! between steps makes the hand-back deterministic (an engine does not need
//! it: a buffer not yet back is replaced by a new one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pagedkv::kv_events::EventSource;
use pagedkv::{BlockHash, KvEvent};
use pagedkv_publisher::{KvEventPublisher, PublisherConfig};

struct CountingAllocator;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping touches only `const`-initialised thread-locals
// without destructors, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note() {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.with(|c| c.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, ALLOCS.with(Cell::get))
}

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = count_allocs(|| vec![1u8; 10]);
    assert_eq!((v.len(), n), (10, 1));
}

#[test]
fn a_warm_publish_makes_no_heap_allocation_on_the_callers_thread() {
    let mut publisher = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: Some("tcp://127.0.0.1:0".into()),
            buffer_steps: 8,
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap();
    let events: Vec<KvEvent> = (0..64u128)
        .map(|i| KvEvent::BlockStored {
            block_hashes: vec![BlockHash::from_u128(i + 1)],
            parent_block_hash: Some(BlockHash::from_u128(1000 + i)),
            token_ids: (0..16).collect(),
            block_size: 16,
            extra_keys: vec![Vec::new()],
            first_block_index: 3,
            adapter: None,
            group: 0,
            tier: pagedkv::CacheTier::Device,
        })
        .collect();
    // Warm-up: the buffers grow to a batch's size and come back.
    for step in 0..4 {
        publisher.publish(step as f64, &events).unwrap();
        publisher.flush().unwrap();
    }
    let mut total = 0;
    for step in 4..104 {
        let (seq, allocs) = count_allocs(|| publisher.publish(step as f64, &events).unwrap());
        assert_eq!(seq, Some(step));
        total += allocs;
        publisher.flush().unwrap();
    }
    assert_eq!(total, 0, "100 warm publishes made {total} heap allocations");
    publisher.shutdown().unwrap();
}
