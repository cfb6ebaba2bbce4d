//! Several threads drive one manager through `SharedKvCacheManager`; at the
//! end every invariant holds and freeing everything returns every block.

use std::thread;

use pagedkv::{BlockOps, KvCacheConfig, KvError, SeqId, SharedKvCacheManager};

/// A small deterministic generator (xorshift) so each thread's script is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn threads_share_one_manager_without_corruption() {
    const THREADS: u64 = 4;
    const OPS: usize = 5_000;
    let kv = SharedKvCacheManager::new(KvCacheConfig {
        num_blocks: 256,
        block_size: 8,
        max_model_len: 512,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap();

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let kv = kv.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + t);
                let mut ops = BlockOps::default();
                // Each thread owns ids t*1000 .. t*1000+16 and tracks which are live.
                let mut live = [false; 16];
                let mut out_of_blocks = 0;
                for _ in 0..OPS {
                    let i = rng.below(16) as usize;
                    let seq = SeqId(t * 1000 + i as u64);
                    let mut guard = kv.lock();
                    let result = match (live[i], rng.below(5)) {
                        (false, _) => {
                            let prompt: Vec<u32> = (0..1 + rng.below(40) as u32).collect();
                            guard.allocate(seq, &prompt).map(|_| live[i] = true)
                        }
                        (true, 0) => guard.free(seq).map(|_| live[i] = false),
                        (true, 1) => {
                            let j = rng.below(16) as usize;
                            if live[j] {
                                Ok(())
                            } else {
                                let child = SeqId(t * 1000 + j as u64);
                                guard.fork(seq, child).map(|_| live[j] = true)
                            }
                        }
                        (true, 2) => {
                            let len = guard.num_tokens(seq).unwrap();
                            guard.truncate(seq, len / 2)
                        }
                        (true, _) => {
                            let n = 1 + rng.below(12) as usize;
                            match guard.append(seq, &vec![7; n]) {
                                Err(KvError::ExceedsMaxModelLen { .. }) => {
                                    guard.free(seq).map(|_| live[i] = false)
                                }
                                r => r,
                            }
                        }
                    };
                    match result {
                        Ok(()) => {}
                        Err(KvError::OutOfBlocks { .. }) => out_of_blocks += 1,
                        Err(e) => panic!("thread {t}: unexpected {e}"),
                    }
                    guard.drain_ops(&mut ops);
                }
                let mut guard = kv.lock();
                for (i, &l) in live.iter().enumerate() {
                    if l {
                        guard.free(SeqId(t * 1000 + i as u64)).unwrap();
                    }
                }
                out_of_blocks
            })
        })
        .collect();
    let refused: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let guard = kv.lock();
    guard.check_invariants().unwrap();
    assert_eq!(guard.num_seqs(), 0);
    assert_eq!(guard.usage().free_blocks, 256);
    assert_eq!(guard.pool().free_blocks().count(), 256);
    assert_eq!(guard.stats().out_of_blocks, refused);
    assert!(guard.stats().forks > 0 && guard.stats().cow_copies > 0);
}

#[test]
fn handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SharedKvCacheManager>();
}
