"""Golden bytes of vLLM 0.33.0's KV event wire format, produced by vLLM's own code.

Each case builds a `KVEventBatch` the way vLLM does and encodes it with the
encoder vLLM's `ZmqEventPublisher` uses (`msgspec.msgpack.Encoder().encode`):

- `BlockStored` events come from `BlockPool._build_block_stored_event` (the
  builder `cache_full_blocks` calls), with per-block extra keys from
  `BlockPool._generate_event_extra_keys` walked as `cache_full_blocks` walks
  them, then annotated with `kv_cache_spec_kind` and the sliding window by
  `KVCacheManager.take_events`;
- single-block `BlockRemoved` events come from
  `BlockPool._emit_block_removed_events`; a multi-hash removal (pagedkv's
  `reset_prefix_cache`) is vLLM's `BlockRemoved` type built directly;
- block hashes: pagedkv's 128-bit `BlockHash` values, as 16 big-endian bytes,
  through vLLM's `maybe_convert_block_hash` with its default
  `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1` (which keeps the low 64 bits).

The methods are called on small stand-in objects carrying only the attributes
they read (no GPU, no model). The Rust test `kv_events::tests` rebuilds the
same events from pagedkv's `KvEvent`s and compares bytes; keep the cases in
sync with `CASES` there.

Run (see README.md in this directory):

    VLLM_SRC=/work/vllm-ref/src /work/vllm-ref/venv/bin/python \
        data/kv_events/generate_fixtures.py > data/kv_events/vllm-0.33.0.golden
"""

import os
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ["VLLM_SRC"])
sys.path.insert(0, HERE)
os.environ["VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES"] = "1"

import vllm_stubs  # noqa: E402

vllm_stubs.install(
    [
        "torch", "transformers", "huggingface_hub", "safetensors", "aiohttp",
        "openai_harmony", "openai", "PIL", "prometheus_client", "xgrammar",
        "fastapi", "partial_json_parser", "llguidance",
    ]
)

import msgspec  # noqa: E402

from vllm.distributed.kv_events import (  # noqa: E402
    MEDIUM_CPU,
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    KVEventBatch,
)
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.multimodal.inputs import PlaceholderRange  # noqa: E402
from vllm.v1.core.block_pool import BlockPool  # noqa: E402
from vllm.v1.core.kv_cache_manager import KVCacheManager  # noqa: E402
from vllm.v1.core.kv_cache_utils import (  # noqa: E402
    make_block_hash_with_group_id,
    maybe_convert_block_hash,
)
from vllm.v1.kv_cache_interface import KVCacheSpecKind  # noqa: E402

# pagedkv BlockHash values (128-bit); their low 64 bits cover every msgpack
# unsigned-integer width.
H1 = 0x0123456789ABCDEF_FEDCBA9876543210
H2 = 0x1111111111111111_0000000000000005
H3 = 0x2222222222222222_0000000000000080
H4 = 0x3333333333333333_0000000000010000
H5 = 0x4444444444444444_00000000FFFFFFFF
H6 = 0x5555555555555555_0000000100000000
H7 = 0x6666666666666666_000000000000FFFF

FULL = (KVCacheSpecKind.FULL_ATTENTION.value, None)
SLIDING_4096 = (KVCacheSpecKind.SLIDING_WINDOW.value, 4096)


def block_hash_bytes(h: int) -> bytes:
    return h.to_bytes(16, "big")


def ext(h: int):
    return maybe_convert_block_hash(block_hash_bytes(h))


def pool(medium=MEDIUM_GPU):
    """The attributes of a BlockPool that its event builders read."""
    return SimpleNamespace(
        medium=medium,
        num_hash_lookahead_tokens=0,
        enable_kv_cache_events=True,
        kv_event_queue=[],
    )


def request(tokens, lora=None, cache_salt=None, mm=()):
    """The attributes of a Request that the event builders read."""
    features = [
        SimpleNamespace(
            identifier=f"{h:032x}", mm_position=PlaceholderRange(offset=o, length=n)
        )
        for (o, n, h) in mm
    ]
    return SimpleNamespace(
        all_token_ids=list(tokens),
        lora_request=lora,
        cache_salt=cache_salt,
        mm_features=features,
        prompt_embeds=None,
        session_id=None,
    )


def stored(p, req, hashes, parent, first_block, block_size, group):
    """`cache_full_blocks`'s event for blocks first_block.. of `req`."""
    n = len(hashes)
    extra_keys_list = []
    curr_mm_idx = 0
    for i in range(first_block, first_block + n):
        keys, curr_mm_idx = BlockPool._generate_event_extra_keys(
            p, req, i * block_size, (i + 1) * block_size, curr_mm_idx
        )
        extra_keys_list.append(keys)
    return BlockPool._build_block_stored_event(
        p,
        req,
        block_hashes=[ext(h) for h in hashes],
        parent_block_hash=None if parent is None else ext(parent),
        start_token_idx=first_block * block_size,
        end_token_idx=(first_block + n) * block_size,
        block_size=block_size,
        kv_cache_group_id=group,
        extra_keys_list=extra_keys_list,
        lookahead_token_ids=None,
    )


def removed_one(p, h, group):
    p.kv_event_queue = []
    BlockPool._emit_block_removed_events(
        p, [make_block_hash_with_group_id(block_hash_bytes(h), group)]
    )
    (event,) = p.kv_event_queue
    return event


def annotate(events, groups):
    """`KVCacheManager.take_events`: store events get their group's spec kind."""
    mgr = SimpleNamespace(
        block_pool=SimpleNamespace(take_events=lambda: list(events)),
        kv_cache_event_metadata=tuple(groups),
    )
    return KVCacheManager.take_events(mgr)


def batch(ts, events, rank):
    return KVEventBatch(ts=ts, events=events, data_parallel_rank=rank)


def cases():
    gpu, cpu = pool(MEDIUM_GPU), pool(MEDIUM_CPU)
    sql = LoRARequest(lora_name="sql-lora", lora_int_id=7, lora_path="/adapters/sql")
    long_name = "a-rather-long-adapter-name-of-forty-chars"
    assert len(long_name) == 41
    long_lora = LoRARequest(lora_name=long_name, lora_int_id=300, lora_path="/a")
    widths = [0, 127, 128, 255, 256, 65535, 65536, 4294967295, 9, 10, 11, 12]
    # Images at 3..5 and 6..10 over blocks of 4: block 0 sees the first at
    # +3; block 1 sees it at -1 and the second at +2; block 2 sees the second at -2.
    mm = [(3, 2, 0xABCDEF), (6, 4, 0x0123_4567_89AB_CDEF_0011_2233_4455_6677)]

    yield "stored_plain", batch(
        1700000000.25,
        annotate(
            [stored(gpu, request(range(1, 9)), [H1, H2], None, 0, 4, 0)], [FULL]
        ),
        0,
    )
    yield "stored_int_widths", batch(
        1.0,
        annotate(
            [stored(gpu, request([7] * 4 + widths), [H4, H5, H6], H3, 1, 4, 0)], [FULL]
        ),
        1,
    )
    yield "stored_extra_keys", batch(
        2.5,
        annotate(
            [
                stored(
                    gpu,
                    request(range(100, 112), lora=sql, cache_salt="tenant-a", mm=mm),
                    [H1, H2, H3],
                    None,
                    0,
                    4,
                    0,
                )
            ],
            [FULL],
        ),
        0,
    )
    yield "stored_later_blocks_lora_salt", batch(
        3.0,
        annotate(
            [
                stored(
                    gpu,
                    request(range(200, 216), lora=sql, cache_salt="tenant-a", mm=mm),
                    [H4, H5],
                    H7,
                    2,
                    4,
                    0,
                )
            ],
            [FULL],
        ),
        0,
    )
    yield "stored_sliding_window_cpu", batch(
        4.0,
        annotate(
            [stored(cpu, request(range(8)), [H2], H1, 1, 4, 1)], [FULL, SLIDING_4096]
        ),
        0,
    )
    yield "stored_long_name_array16", batch(
        5.0,
        annotate(
            [stored(gpu, request(range(20), lora=long_lora), [H6], None, 0, 20, 0)],
            [FULL],
        ),
        0,
    )
    # One image over three blocks of 100: offsets 0, -100 (int8), -200 (int16).
    yield "stored_mm_far_offsets", batch(
        5.5,
        annotate(
            [
                stored(
                    gpu,
                    request(range(300), mm=[(0, 300, 0x42)]),
                    [H1, H2, H3],
                    None,
                    0,
                    100,
                    0,
                )
            ],
            [FULL],
        ),
        0,
    )
    str16_lora = LoRARequest(lora_name="lora-" + "x" * 295, lora_int_id=1 << 40, lora_path="/b")
    yield "stored_str16_name_uint64_id", batch(
        5.75,
        annotate([stored(gpu, request(range(4), lora=str16_lora), [H2], None, 0, 4, 0)], [FULL]),
        0,
    )
    yield "removed_one", batch(6.0, [removed_one(gpu, H1, 0)], 0)
    yield "removed_many_cpu_group1", batch(
        7.0,
        [BlockRemoved(block_hashes=[ext(H1), ext(H2), ext(H3)], medium=MEDIUM_CPU, group_idx=1)],
        0,
    )
    yield "cleared", batch(8.0, [AllBlocksCleared()], 0)
    yield "empty_no_rank", batch(0.0, [], None)
    yield "mixed_rank3", batch(
        1234.5,
        annotate(
            [
                stored(gpu, request(range(4)), [H7], None, 0, 4, 0),
                removed_one(gpu, H2, 0),
                AllBlocksCleared(),
            ],
            [FULL],
        ),
        3,
    )


def main():
    enc = msgspec.msgpack.Encoder()
    print("# vLLM 0.33.0 KVEventBatch encodings; generated by data/kv_events/generate_fixtures.py")
    print("# (msgspec " + msgspec.__version__ + "). One case per line: name, then the payload in hex.")
    for name, b in cases():
        print(f"# {name}: {b!r}")
        print(f"{name} {enc.encode(b).hex()}")


if __name__ == "__main__":
    main()
