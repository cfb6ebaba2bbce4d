"""Golden fixtures for pagedkv's hybrid (KV cache groups) prefix caching,
computed by vLLM 0.33.0's own `KVCacheManager` (with its
`HybridKVCacheCoordinator` / `UnitaryKVCacheCoordinator`, `BlockPool`,
`FullAttentionManager`, `SlidingWindowManager` and
`ChunkedLocalAttentionManager`) on a CPU, under a fake `torch`.

Each scenario is a script of engine-level operations on one cache (block size
4, a small pool, groups such as full + sliding window 8). The script is fixed
here (token ids from a seeded `random.Random`); vLLM decides everything else:

- `allocate seq prompt`: a new request. vLLM's `get_computed_blocks` gives the
  hit (`hit_tokens`: never the prompt's last token), `allocate_slots(request,
  prompt - hit, hit, blocks)` allocates (or refuses: `refused`), then the step
  runs (`num_computed_tokens = prompt`);
- `decode seq token`: the model sampled `token`; vLLM appends it to the request
  and `allocate_slots(request, 1)` gives it a slot, first releasing (nulling)
  the window blocks no longer read (`remove_skipped_blocks`). A refused decode
  is preempted (freed) in the same operation, as vLLM's scheduler would;
- `free seq`: the request finishes (`KVCacheManager.free`).

After every operation the fixture records, for every live request, the blocks
it holds in each KV cache group (entries that are not vLLM's null block) and
the pool's free block count (`BlockPool.get_num_free_blocks`, which never
counts the null block). vLLM's pool of `vllm_num_gpu_blocks` keeps block 0 as
the null block, so the same pool in pagedkv has `num_blocks =
vllm_num_gpu_blocks - 1` usable blocks.

Nothing here re-implements a rule: the numbers are vLLM's. CI never runs this
script; `tests/vllm_hybrid_fixtures.rs` replays the file through pagedkv.

Usage (see README.md next to this file for the environment):

    VLLM_SRC=/work/vllm-ref/src /work/vllm-ref/venv/bin/python \
        tools/vllm_oracle/gen_hybrid_fixtures.py > tests/fixtures/vllm_0.33.0/hybrid_prefix.json
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# The fake torch and stubbed packages of the planner's generator (only
# `torch.float16` is named here, as a dtype tag of the specs).
import gen_plan_fixtures as plan_gen  # noqa: E402

COMMAND = (
    "VLLM_SRC=/work/vllm-ref/src /work/vllm-ref/venv/bin/python "
    "tools/vllm_oracle/gen_hybrid_fixtures.py > tests/fixtures/vllm_0.33.0/hybrid_prefix.json"
)
SEED = 20260330
BLOCK_SIZE = 4
MAX_MODEL_LEN = 256


def setup():
    torch = plan_gen.setup_vllm()
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        KVCacheConfig,
        KVCacheGroupSpec,
        SlidingWindowSpec,
    )
    from vllm.v1.request import Request

    init_none_hash(sha256)
    hasher = get_request_block_hasher(BLOCK_SIZE, sha256)
    common = dict(block_size=BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float16)

    def spec(g):
        if g["kind"] == "full":
            return FullAttentionSpec(**common)
        if g["kind"] == "sliding_window":
            return SlidingWindowSpec(**common, sliding_window=g["window"])
        if g["kind"] == "chunked_local":
            return ChunkedLocalAttentionSpec(**common, attention_chunk_size=g["chunk"])
        raise ValueError(g)

    def manager(groups, num_gpu_blocks):
        cfg = KVCacheConfig(
            num_blocks=num_gpu_blocks,
            kv_cache_tensors=[],
            kv_cache_groups=[
                KVCacheGroupSpec([f"layer.{i}"], spec(g)) for i, g in enumerate(groups)
            ],
        )
        return KVCacheManager(
            cfg,
            max_model_len=MAX_MODEL_LEN,
            scheduler_block_size=BLOCK_SIZE,
            hash_block_size=BLOCK_SIZE,
            enable_caching=True,
        )

    def request(rid, prompt):
        return Request(
            request_id=str(rid),
            prompt_token_ids=list(prompt),
            sampling_params=SamplingParams(max_tokens=MAX_MODEL_LEN, ignore_eos=True),
            pooling_params=None,
            arrival_time=0.0,
            block_hasher=hasher,
        )

    return manager, request


class Driver:
    """Runs a script on vLLM's KVCacheManager, recording vLLM's decisions."""

    def __init__(self, manager, request, groups, num_gpu_blocks):
        self.kv = manager(groups, num_gpu_blocks)
        self.make_request = request
        self.groups = groups
        self.reqs = {}
        self.steps = []
        # Which coordinator vLLM chose (recorded: the rule under test).
        self.coordinator = type(self.kv.coordinator).__name__

    def held(self):
        out = {}
        for seq, req in sorted(self.reqs.items()):
            blocks = self.kv.coordinator.get_blocks(req.request_id)
            out[str(seq)] = [sum(1 for b in g if not b.is_null) for g in blocks]
        return out

    def record(self, step):
        step["held"] = self.held()
        step["free_blocks"] = self.kv.block_pool.get_num_free_blocks()
        # vLLM keeps every copy of content computed twice cached
        # (BlockHashToBlockMap does not deduplicate); pagedkv keeps one.
        # A free one among them is where the two can part: vLLM's hit takes
        # the first copy cached (even a free one while another is in use),
        # and its eviction order keeps the free copy where pagedkv reuses it
        # first. (The test tolerates a disagreement only from such a step on.)
        step["free_redundant_copies"] = sum(
            sum(1 for b in blocks.values() if b.ref_cnt == 0)
            for blocks in self.kv.block_pool.cached_block_hash_to_block._cache.values()
            if isinstance(blocks, dict)
        )
        if os.environ.get("HYBRID_FIXTURE_DEBUG"):
            # Block ids (vLLM numbering, 0 = null) and the free queue: for
            # comparing a disagreement with pagedkv by hand; not in the fixture.
            step["tables"] = {
                str(seq): [[b.block_id for b in g] for g in self.kv.coordinator.get_blocks(req.request_id)]
                for seq, req in sorted(self.reqs.items())
            }
            step["queue"] = [(b.block_id, b.block_hash is not None)
                             for b in self.kv.block_pool.free_block_queue.get_all_free_blocks()]
        self.steps.append(step)

    def allocate(self, seq, prompt):
        assert seq not in self.reqs
        req = self.make_request(seq, prompt)
        per_group = None
        if hasattr(self.kv.coordinator, "find_longest_cache_hit_per_group"):
            # Each group's own hit (vLLM's per-group lookup): for a full
            # attention group, the leading run of its cached blocks.
            per_group = list(self.kv.coordinator.find_longest_cache_hit_per_group(
                req.block_hashes, len(prompt) - 1)[1])
        blocks, hit, _ = self.kv.get_computed_blocks(req)
        new = self.kv.allocate_slots(req, len(prompt) - hit, hit, blocks)
        step = {"op": "allocate", "seq": seq, "prompt": list(prompt), "hit_tokens": hit,
                "refused": new is None}
        if per_group is not None:
            step["group_hit_tokens"] = per_group
        if new is not None:
            req.num_computed_tokens = len(prompt)  # the prefill step runs
            self.reqs[seq] = req
        self.record(step)
        return hit

    def decode(self, seq, token):
        req = self.reqs[seq]
        req.append_output_token_ids(token)
        new = self.kv.allocate_slots(req, 1)
        step = {"op": "decode", "seq": seq, "token": token, "refused": new is None}
        if new is None:
            # The scheduler would preempt it (recompute): its blocks are freed.
            self.kv.free(req)
            del self.reqs[seq]
        else:
            req.num_computed_tokens += 1  # the decode step runs
        self.record(step)

    def free(self, seq):
        self.kv.free(self.reqs.pop(seq))
        self.record({"op": "free", "seq": seq})


def scripted(d, rng, window_like):
    """Shared prefixes shorter than, equal to and longer than the window (or
    chunk), partial blocks, a fully cached prompt, decodes past the window,
    frees and re-requests, and a multi-turn follow-up."""
    base = [rng.randrange(1000, 30000) for _ in range(40)]

    def fresh(n):
        return [rng.randrange(30000, 60000) for _ in range(n)]

    d.allocate(1, base[:22])                      # 5 full blocks + 2 tokens
    for _ in range(3):
        d.decode(1, rng.randrange(60000, 70000))
    seq = 2
    for shared in sorted({3, 4, 5, window_like - 1, window_like, window_like + 1, 12, 16, 20, 21, 22}):
        d.allocate(seq, base[:shared] + fresh(6))  # a shared prefix, then its own tokens
        seq += 1
    d.allocate(seq, base[:22])                    # the same prompt: its last block is recomputed
    seq += 1
    d.allocate(seq, base[:20])                    # block-aligned, fully cached: hit 16
    seq += 1
    for s in range(2, seq, 2):
        d.free(s)
    d.free(1)                                     # its blocks stay cached, free
    d.allocate(seq, base[:22])                    # hits free cached blocks
    long_seq = seq
    seq += 1
    for _ in range(14):                           # past the window: releases
        d.decode(long_seq, rng.randrange(60000, 70000))
    # Multi-turn: the whole conversation so far, and more.
    conv = list(d.reqs[long_seq].all_token_ids)
    d.allocate(seq, conv + fresh(5))
    seq += 1
    d.allocate(seq, conv[:30] + fresh(3))         # a prefix ending inside released blocks
    seq += 1
    for s in sorted(d.reqs):
        d.free(s)
    d.allocate(seq, conv + fresh(2))              # after everything is freed
    seq += 1
    d.allocate(seq, conv[:len(conv) - len(conv) % 4])  # block-aligned replay of the conversation


def scripted_evict(d, rng):
    """A conversation whose window blocks were released, then unrelated
    fillers of growing size evict cached blocks (least recently freed
    first): probes of the conversation show which hits survive (a window
    group needs only its window; full attention needs every block)."""
    conv = [rng.randrange(1000, 30000) for _ in range(24)]
    d.allocate(1, conv)
    for _ in range(10):
        d.decode(1, rng.randrange(60000, 70000))
    conv = list(d.reqs[1].all_token_ids)
    d.free(1)
    seq = 2
    for filler_tokens in (4, 8, 12, 16, 20, 24, 28):
        filler = seq
        d.allocate(filler, [rng.randrange(30000, 60000) for _ in range(filler_tokens)])
        d.allocate(seq + 1, conv + [rng.randrange(30000, 60000) for _ in range(3)])
        d.allocate(seq + 2, conv[:21] + [rng.randrange(30000, 60000)])
        for s in (seq + 2, seq + 1, filler):
            if s in d.reqs:
                d.free(s)
        seq += 3


def pressure(d, rng, n_stems):
    """A seeded random mix of new requests around a few shared stems,
    decodes and frees in a pool too small to keep everything: hits on free
    cached blocks, evictions, refused allocations and decodes (preempted)."""
    stems = [[rng.randrange(1000, 30000) for _ in range(36)] for _ in range(n_stems)]
    seq = 1
    for _ in range(90):
        live = sorted(d.reqs)
        r = rng.random()
        if r < 0.35 or not live:
            stem = rng.choice(stems)
            shared = rng.randrange(1, len(stem) + 1)
            tail = [rng.randrange(30000, 60000) for _ in range(rng.randrange(0, 7))]
            d.allocate(seq, stem[:shared] + tail)
            seq += 1
        elif r < 0.8:
            d.decode(rng.choice(live), rng.randrange(60000, 70000))
        else:
            d.free(rng.choice(live))
    for s in sorted(d.reqs):
        d.free(s)


def main():
    manager, request = setup()
    rng = random.Random(SEED)
    full = {"kind": "full"}
    configs = [
        ("full_swa8", [full, {"kind": "sliding_window", "window": 8}], 8),
        ("full_swa5", [full, {"kind": "sliding_window", "window": 5}], 5),
        ("full_local8", [full, {"kind": "chunked_local", "chunk": 8}], 8),
        ("swa8_only", [{"kind": "sliding_window", "window": 8}], 8),
        ("swa5_only", [{"kind": "sliding_window", "window": 5}], 5),
    ]
    scenarios = []
    for name, groups, w in configs:
        d = Driver(manager, request, groups, 161)
        scripted(d, rng, w)
        scenarios.append(dict(name=f"{name}_scripted", groups=groups, steps=d.steps,
                              vllm_num_gpu_blocks=161, coordinator=d.coordinator))
        small = 12 * len(groups) + 1  # 12 usable blocks per group
        d = Driver(manager, request, groups, small)
        scripted_evict(d, rng)
        scenarios.append(dict(name=f"{name}_evict", groups=groups, steps=d.steps,
                              vllm_num_gpu_blocks=small, coordinator=d.coordinator))
        for pool in (20, 33):
            d = Driver(manager, request, groups, pool)
            pressure(d, rng, 3)
            scenarios.append(dict(name=f"{name}_pressure_{pool}", groups=groups, steps=d.steps,
                                  vllm_num_gpu_blocks=pool, coordinator=d.coordinator))
    out = {
        "source": "vLLM 0.33.0 KVCacheManager (vllm/v1/core/kv_cache_manager.py, kv_cache_coordinator.py, "
                  "single_type_kv_cache_manager.py, block_pool.py), driven on CPU by "
                  "tools/vllm_oracle/gen_hybrid_fixtures.py",
        "command": COMMAND,
        "seed": SEED,
        "block_size": BLOCK_SIZE,
        "max_model_len": MAX_MODEL_LEN,
        "notes": [
            "vllm_num_gpu_blocks includes vLLM's null block (block 0): pagedkv's num_blocks is one less",
            "held[seq][g]: blocks request seq holds in KV cache group g (vLLM's null block not counted)",
            "free_blocks: BlockPool.get_num_free_blocks() after the operation (free cached blocks included)",
            "each operation is one engine step: its blocks are computed (hittable) before the next",
            "a refused decode is preempted: its request is freed in the same operation",
            "prefix caching on, dense retention, no EAGLE, no KV connector, hash block size = block size",
        ],
        "scenarios": scenarios,
    }
    json.dump(out, sys.stdout, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
