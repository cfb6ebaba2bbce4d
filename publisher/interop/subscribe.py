"""Manual interop check (not run by CI): a pyzmq subscriber decodes the batches
that `cargo run -p pagedkv-publisher --example publish` sends, with vLLM
0.33.0's own msgspec types, checks the sequence numbers are gap-free, then asks
the replay socket for everything from sequence 0 and checks the end marker.

    cargo run -p pagedkv-publisher --example publish &
    VLLM_SRC=/work/vllm-ref/src /work/vllm-ref/venv/bin/python publisher/interop/subscribe.py
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ["VLLM_SRC"])
sys.path.insert(0, os.path.join(HERE, "..", "..", "data", "kv_events"))

import vllm_stubs  # noqa: E402

vllm_stubs.install(
    ["torch", "transformers", "huggingface_hub", "safetensors", "aiohttp", "openai_harmony",
     "openai", "PIL", "prometheus_client", "xgrammar", "fastapi", "partial_json_parser", "llguidance"]
)

import msgspec  # noqa: E402
import zmq  # noqa: E402

from vllm.distributed.kv_events import KVEventBatch  # noqa: E402

ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect("tcp://127.0.0.1:5557")
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.setsockopt(zmq.RCVTIMEO, 15000)  # until the first batch; then 2 s
decoder = msgspec.msgpack.Decoder(type=KVEventBatch)

seqs, kinds = [], {}
while True:
    try:
        topic, seq, payload = sub.recv_multipart()
    except zmq.Again:
        break
    sub.setsockopt(zmq.RCVTIMEO, 2000)
    seqs.append(int.from_bytes(seq, "big"))
    batch = decoder.decode(payload)
    for e in batch.events:
        kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
    if len(seqs) <= 3:
        print(f"seq {seqs[-1]}: {batch}")
assert seqs, "no batch received"
assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
print(f"live: {len(seqs)} batches, sequence {seqs[0]}..{seqs[-1]} gap-free; events {kinds}")

dealer = ctx.socket(zmq.DEALER)
dealer.connect("tcp://127.0.0.1:5558")
dealer.setsockopt(zmq.RCVTIMEO, 3000)
dealer.send_multipart([b"", (0).to_bytes(8, "big")])
replayed = []
while True:
    frames = dealer.recv_multipart()
    _, topic, seq, payload = frames
    if int.from_bytes(seq, "big", signed=True) == -1:
        assert payload == b"" and topic == b""
        break
    decoder.decode(payload)
    replayed.append(int.from_bytes(seq, "big"))
assert replayed == list(range(0, seqs[-1] + 1)), replayed
print(f"replay from 0: {len(replayed)} batches decoded, then the end marker (-1)")
