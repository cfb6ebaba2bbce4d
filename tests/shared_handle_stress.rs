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

/// What each thread's ids are doing.
#[derive(Clone, Copy, PartialEq)]
enum State {
    Free,
    Running,
    Swapped,
}

/// Four threads, 5,000 operations each, over one manager; with `features`,
/// prefix caching (threads share prompts, so they hit each other's blocks) and
/// a host tier with swap-out / swap-in.
fn stress(features: bool) {
    const THREADS: u64 = 4;
    const OPS: usize = 5_000;
    let kv = SharedKvCacheManager::new(KvCacheConfig {
        num_blocks: 256,
        block_size: 8,
        max_model_len: 512,
        watermark: 0.0,
        enable_prefix_caching: features,
        num_host_blocks: if features { 96 } else { 0 },
        ..Default::default()
    })
    .unwrap();

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let kv = kv.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + t);
                let mut ops = BlockOps::default();
                // Each thread owns ids t*1000 .. t*1000+16 and tracks their state.
                let mut state = [State::Free; 16];
                let mut out_of_blocks = 0;
                for _ in 0..OPS {
                    let i = rng.below(16) as usize;
                    let seq = SeqId(t * 1000 + i as u64);
                    let mut guard = kv.lock();
                    let result = match (state[i], rng.below(if features { 7 } else { 5 })) {
                        (State::Free, _) => {
                            let prompt: Vec<u32> = (0..1 + rng.below(40) as u32).collect();
                            guard.allocate(seq, &prompt).map(|_| state[i] = State::Running)
                        }
                        (State::Swapped, 0) => guard.free(seq).map(|_| state[i] = State::Free),
                        (State::Swapped, _) => guard.swap_in(seq).map(|_| state[i] = State::Running),
                        (State::Running, 0) => guard.free(seq).map(|_| state[i] = State::Free),
                        (State::Running, 1) => {
                            let j = rng.below(16) as usize;
                            if state[j] != State::Free {
                                Ok(())
                            } else {
                                let child = SeqId(t * 1000 + j as u64);
                                guard.fork(seq, child).map(|_| state[j] = State::Running)
                            }
                        }
                        (State::Running, 2) => {
                            let len = guard.num_tokens(seq).unwrap();
                            guard.truncate(seq, len / 2)
                        }
                        (State::Running, 5) => match guard.swap_out(seq) {
                            Err(KvError::HostOutOfBlocks { .. }) => Ok(()),
                            r => r.map(|_| state[i] = State::Swapped),
                        },
                        (State::Running, _) => {
                            let n = 1 + rng.below(12) as usize;
                            match guard.append(seq, &vec![7; n]) {
                                Err(KvError::ExceedsMaxModelLen { .. }) => {
                                    guard.free(seq).map(|_| state[i] = State::Free)
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
                    // The step ran: its copies and swaps are done.
                    guard.drain_ops(&mut ops);
                }
                let mut guard = kv.lock();
                for (i, &s) in state.iter().enumerate() {
                    if s != State::Free {
                        guard.free(SeqId(t * 1000 + i as u64)).unwrap();
                    }
                }
                out_of_blocks
            })
        })
        .collect();
    let refused: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let mut guard = kv.lock();
    guard.drain_ops(&mut BlockOps::default());
    guard.check_invariants().unwrap();
    assert_eq!(guard.num_seqs(), 0);
    assert_eq!(guard.usage().free_blocks, 256);
    assert_eq!(guard.pool().free_blocks().count(), 256);
    assert_eq!(guard.stats().out_of_blocks, refused);
    assert!(guard.stats().forks > 0 && guard.stats().cow_copies > 0);
    if features {
        let s = guard.stats();
        assert!(
            s.prefix_hit_tokens > 0 && s.swap_outs > 0 && s.swap_ins > 0,
            "{s:?}"
        );
        assert_eq!(guard.num_free_host_blocks(), 96);
    }
}

#[test]
fn threads_share_one_manager_without_corruption() {
    stress(false);
}

#[test]
fn threads_share_one_manager_with_prefix_caching_and_swap() {
    stress(true);
}

#[test]
fn handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SharedKvCacheManager>();
}
