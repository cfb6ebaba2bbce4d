"""Golden fixtures for `pagedkv plan --engine vllm-v1`, computed by vLLM 0.33.0's
own sizing code on the configs in data/configs.

Two phases, two processes (vLLM must be imported with a fake `torch` and a
stubbed `transformers`, while the configs must be read by the real
`transformers`, which fills in defaults such as Gemma 2's `layer_types`):

1. `--read-configs` (child process, real transformers, no vLLM): loads every
   data/configs/*.json with `AutoConfig` and prints the text config's
   attributes as JSON.
2. (this process, vLLM with stubs): resolves each model the way vLLM does
   (ModelArchConfigConvertorBase for heads, head size, MLA and the derived
   max_model_len; `_resolve_auto_dtype` for `dtype=auto`; the per-model-type
   rule of vLLM's model code for which layers slide or chunk), builds the
   per-layer KV cache specs (`FullAttentionSpec`, `SlidingWindowSpec`,
   `ChunkedLocalAttentionSpec`, `MLAAttentionSpec`) for one tensor-parallel
   rank, and runs `get_global_kv_cache_groups` and `get_kv_cache_configs`
   (which raise vLLM's "To serve at least one request ..." error), reading
   the pool's bytes per block, the blocks a request needs and the estimated
   maximum model length from the same functions those use.

Nothing here re-implements a sizing formula: the numbers come from vLLM's
functions. What this script does decide is listed in `ASSUMPTIONS` (written
into the fixture file).

Usage (see README.md next to this file for the environment):

    VLLM_SRC=/work/vllm-ref/src python tools/vllm_oracle/gen_plan_fixtures.py \
        > cli/tests/fixtures/vllm_plan.json
"""
import argparse
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG_DIR = os.path.join(REPO, "data", "configs")

GIB = 1 << 30
BUDGETS = [2 * GIB, 10 * GIB]
KV_DTYPES = ["auto", "fp8"]
TENSOR_PARALLEL = [1, 2]
# Pipeline parallel cases: these configs x stages x BUDGETS, dtype auto, TP 1.
PP_CONFIGS = ["gpt-oss-20b.json", "Llama-4-Scout-17B-16E-Instruct.json", "gemma-2-9b.json",
              "Qwen2.5-7B-Instruct.json", "DeepSeek-V2-Lite.json"]
PIPELINE_PARALLEL = [2, 3]
BLOCK_SIZE = 16
MAX_NUM_BATCHED_TOKENS = 2048

ASSUMPTIONS = [
    "kv_cache_memory_bytes is the per-GPU KV budget (vLLM skips profiling and uses it as is)",
    "block_size 16 given by the user (a CUDA backend taking multiples of 16 keeps it)",
    "max_num_batched_tokens 2048 and async scheduling (vLLM's default): 2 concurrent batches",
    "max_model_len: vLLM's derived default for the config (no --max-model-len)",
    "dtype=auto on a CUDA device supporting bfloat16, float16 and float32",
    "hybrid KV cache manager on (vLLM's default for these models)",
    "pipeline parallel 1, except pp_cases: layers split by get_pp_indices, V2 model runner (pp + 1 batches in flight)",
]


# --------------------------------------------------------------------------
# Phase 1: read the configs with the real transformers.
# --------------------------------------------------------------------------

def read_configs():
    import shutil
    import tempfile

    from transformers import AutoConfig

    out = {}
    for name in sorted(os.listdir(CONFIG_DIR)):
        if not name.endswith(".json"):
            continue
        tmp = tempfile.mkdtemp()
        shutil.copy(os.path.join(CONFIG_DIR, name), os.path.join(tmp, "config.json"))
        config = AutoConfig.from_pretrained(tmp)
        text = config.get_text_config()

        def plain(c):
            d = {}
            for k, v in c.to_dict().items():
                if k.endswith("_config") and isinstance(v, dict):
                    continue
                d[k] = v
            # Attributes transformers computes without serialising them.
            for k in ("layer_types", "no_rope_layers", "head_dim", "sliding_window",
                      "attention_chunk_size", "rope_parameters", "dtype"):
                if hasattr(c, k):
                    v = getattr(c, k)
                    d[k] = str(v).replace("torch.", "") if k == "dtype" and v is not None else v
            return d

        out[name] = {
            "config": plain(config),
            "text_config": plain(text),
            "has_vision_config": hasattr(config, "vision_config"),
        }
        shutil.rmtree(tmp)
    json.dump(out, sys.stdout)


# --------------------------------------------------------------------------
# Phase 2: vLLM under a fake torch.
# --------------------------------------------------------------------------

class _Dummy(type):
    """A permissive stand-in class: any attribute is another dummy."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        d = _Dummy(name, (), {"__module__": cls.__module__})
        setattr(cls, name, d)
        return d

    def __call__(cls, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k and not isinstance(a[0], _Dummy):
            return a[0]
        return cls

    def __getitem__(cls, item):
        return cls

    def __or__(cls, other):
        return cls

    def __ror__(cls, other):
        return cls

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False

    def __lt__(cls, other):
        return False

    __le__ = __gt__ = __ge__ = __lt__
    __hash__ = type.__hash__

    def __mro_entries__(cls, bases):
        return (cls,)

    def _self(cls, *a):
        return cls

    __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __truediv__ = _self

    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.any_schema()


class _DummyModule(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []
        self.__file__ = f"<stub {name}>"

    def __getattr__(self, name):
        if name in ("__version__", "version"):
            return "2.14.0"
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        d = _Dummy(name, (), {"__module__": self.__name__})
        setattr(self, name, d)
        return d


class FakeDtype:
    """A torch dtype as vLLM's sizing code uses it: a name and an element size."""

    def __init__(self, name, itemsize, floating=True):
        self.name = name
        self.itemsize = itemsize
        self.is_floating_point = floating
        self.is_complex = False

    def __repr__(self):
        return f"torch.{self.name}"


class _FakeTensor:
    def __init__(self, dtype):
        self.dtype = dtype

    def element_size(self):
        return self.dtype.itemsize


STUBBED = []


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _DummyModule(spec.name)

    def exec_module(self, module):
        pass


class _StubFinder(importlib.abc.MetaPathFinder):
    # Stubbed even when installed: vLLM's sizing path never runs them.
    FORCED = {"torch", "transformers", "triton", "huggingface_hub", "safetensors",
              "tokenizers", "aiohttp", "openai_harmony", "openai", "PIL",
              "prometheus_client", "xgrammar", "fastapi", "partial_json_parser",
              "llguidance"}

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in self.FORCED:
            return None
        STUBBED.append(fullname)
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)


def install_fake_torch():
    sys.meta_path.insert(0, _StubFinder())
    torch = _DummyModule("torch")
    dtypes = {
        "float16": FakeDtype("float16", 2),
        "bfloat16": FakeDtype("bfloat16", 2),
        "float32": FakeDtype("float32", 4),
        "uint8": FakeDtype("uint8", 1, floating=False),
        "int8": FakeDtype("int8", 1, floating=False),
        "float8_e4m3fn": FakeDtype("float8_e4m3fn", 1),
        "float8_e5m2": FakeDtype("float8_e5m2", 1),
        "bool": FakeDtype("bool", 1, floating=False),
    }
    for name, d in dtypes.items():
        setattr(torch, name, d)
    torch.half = dtypes["float16"]
    torch.float = dtypes["float32"]
    torch.dtype = FakeDtype
    torch.tensor = lambda data, dtype=None, **k: _FakeTensor(dtype)
    sys.modules["torch"] = torch
    return torch


def setup_vllm():
    sys.path.insert(0, os.environ["VLLM_SRC"])
    torch = install_fake_torch()

    # As the shared scheduler oracle does: the executor stack registers custom
    # ops at import; nothing on the sizing path uses it.
    class Executor:
        @classmethod
        def get_class(cls, vllm_config):
            return cls

        @classmethod
        def supports_async_scheduling(cls):
            return True

    for name in ("vllm.v1.executor", "vllm.v1.executor.abstract"):
        m = types.ModuleType(name)
        m.__path__ = []
        m.Executor = Executor
        sys.modules[name] = m
    return torch


def ns(d):
    """A config-like object: attributes from a dict (missing ones raise)."""
    o = types.SimpleNamespace(**d)
    return o


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--read-configs", action="store_true")
    args = parser.parse_args()
    if args.read_configs:
        read_configs()
        return

    raw = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--read-configs"],
        check=True, capture_output=True, text=True,
    ).stdout
    configs = json.loads(raw)

    torch = setup_vllm()
    import vllm.v1.core.kv_cache_config_builder as builder_mod
    from vllm.config import VllmConfig
    from vllm.config import model as model_mod
    from vllm.transformers_utils.model_arch_config_convertor import (
        ModelArchConfigConvertorBase,
    )
    from vllm.utils.mem_utils import format_gib
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
    from vllm.v1.core import kv_cache_planning as P
    from vllm.v1.core.kv_cache_utils import get_kv_cache_capacity
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        MLAAttentionSpec,
        SlidingWindowSpec,
    )
    from vllm.v1.kv_cache_layout import KVCacheLayout

    builder = P.DefaultKVCacheConfigBuilder()
    builder_mod.get_kv_cache_config_builder = lambda cfg: builder

    # A CUDA device with compute capability >= 8.0 (bf16 first, as CudaPlatform lists it).
    class Platform:
        supported_dtypes = [torch.bfloat16, torch.float16, torch.float32]

        @staticmethod
        def get_device_name():
            return "NVIDIA H100"

        @staticmethod
        def get_device_capability():
            return None

        @staticmethod
        def check_max_model_len(n):
            return n

        @staticmethod
        def is_cpu():
            return False

    model_mod.current_platform = Platform

    class FakeVllmConfig:
        """The attributes vLLM's KV cache planning reads, with VllmConfig's own
        properties for the concurrency of batches and the in-flight tokens."""

        max_concurrent_batches = VllmConfig.max_concurrent_batches
        max_in_flight_tokens = VllmConfig.max_in_flight_tokens
        num_prefill_lookahead_tokens = 0
        speculative_config = None
        use_v2_model_runner = True

        def __init__(self, max_model_len, tp, pp=1):
            self.model_config = ns(dict(max_model_len=max_model_len,
                                        original_max_model_len=max_model_len,
                                        supports_kv_cache_grouping=False))
            self.cache_config = ns(dict(
                num_gpu_blocks_override=None,
                prefix_cache_retention_interval=None,
                mamba_cache_mode="none",
                kv_cache_layout="LBNHC",
                get_resolved_kv_cache_layout=lambda: KVCacheLayout.LBNHC,
            ))
            self.scheduler_config = ns(dict(disable_hybrid_kv_cache_manager=False,
                                            max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
                                            async_scheduling=True))
            self.parallel_config = ns(dict(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                           decode_context_parallel_size=1))
            self.attention_config = ns(dict(hisparse_config=None))
            self.device_config = ns(dict(device_type="cuda"))

    def resolve_model(entry):
        root = dict(entry["config"])
        text = dict(entry["text_config"])
        hf_text = ns(text)
        hf_config = ns(root)
        hf_config.get_text_config = lambda: hf_text
        conv = ModelArchConfigConvertorBase(hf_config, hf_text)
        model_type = text.get("model_type")
        layers = conv.get_num_hidden_layers()
        heads = conv.get_total_num_attention_heads()
        kv_heads = conv.get_total_num_kv_heads()
        use_mla = getattr(hf_text, "is_causal", True) and conv.is_deepseek_mla()
        head_size = conv.get_head_size()
        derived, key = conv.derive_max_model_len_and_key()
        arch = ns(dict(derived_max_model_len_and_key=(derived, key)))

        # `dtype=auto` (ModelConfig._get_and_verify_dtype with the config's dtype).
        name = text.get("dtype") or root.get("dtype")
        config_dtype = getattr(torch, name) if name else torch.float32
        model_dtype = model_mod._resolve_auto_dtype(model_type, config_dtype, is_pooling_model=False)

        # Which layers slide or chunk, per vLLM's model code.
        sliding = text.get("sliding_window")
        layer_types = text.get("layer_types")
        if model_type == "gpt_oss":
            # model_executor/models/gpt_oss.py:175: sliding on even layers.
            kinds = [("sliding", sliding) if i % 2 == 0 else ("full", None) for i in range(layers)]
        elif model_type in ("gemma2",):
            # model_executor/models/gemma2.py:155: config.layer_types.
            kinds = [("sliding", sliding) if t == "sliding_attention" else ("full", None)
                     for t in layer_types]
        elif model_type in ("llama4", "llama4_text"):
            # model_executor/models/llama4.py:185,251: NoPE layers are global,
            # the others chunked local when attention_chunk_size is set.
            chunk = text.get("attention_chunk_size")
            nrl = text["no_rope_layers"]
            kinds = [("full", None) if nrl[i] == 0 or not chunk else ("chunked", chunk)
                     for i in range(layers)]
        else:
            # engine/arg_utils.py:2288: CacheConfig.sliding_window only when the
            # model has no layer_types or all of them slide; every layer without
            # a per-layer window then takes it (layers/attention/attention.py:266).
            # llama.py:186 honours explicit layer_types.
            if layer_types is None or all(t == "sliding_attention" for t in layer_types):
                kinds = [("sliding", sliding) if sliding else ("full", None)] * layers
            else:
                kinds = [("sliding", sliding) if t == "sliding_attention" else ("full", None)
                         for t in layer_types]
        max_model_len = model_mod._get_and_verify_max_len(
            hf_config=hf_text, model_arch_config=arch, tokenizer_config=None,
            max_model_len=None, disable_sliding_window=False, sliding_window=sliding,
        )
        return dict(model_type=model_type, layers=layers, heads=heads, kv_heads=kv_heads,
                    use_mla=use_mla, head_size=head_size, model_dtype=model_dtype,
                    kinds=kinds, max_model_len=max_model_len,
                    kv_lora_rank=text.get("kv_lora_rank"),
                    qk_rope_head_dim=text.get("qk_rope_head_dim"))

    def specs_for(m, kv_cache_dtype, tp):
        kv_dtype = (m["model_dtype"] if kv_cache_dtype == "auto"
                    else STR_DTYPE_TO_TORCH_DTYPE[kv_cache_dtype])
        specs = {}
        for i, (kind, arg) in enumerate(m["kinds"]):
            name = f"model.layers.{i}.self_attn.attn"
            if m["use_mla"]:
                specs[name] = MLAAttentionSpec(
                    block_size=BLOCK_SIZE, num_kv_heads=1, max_tp_shards=1,
                    head_size=m["head_size"], dtype=kv_dtype, cache_dtype_str=kv_cache_dtype)
                continue
            common = dict(block_size=BLOCK_SIZE,
                          num_kv_heads=max(1, m["kv_heads"] // tp),
                          head_size=m["head_size"], dtype=kv_dtype)
            if kind == "sliding":
                specs[name] = SlidingWindowSpec(sliding_window=arg, **common)
            elif kind == "chunked":
                specs[name] = ChunkedLocalAttentionSpec(attention_chunk_size=arg, **common)
            else:
                specs[name] = FullAttentionSpec(**common)
        return specs, kv_dtype

    def kind_label(spec):
        if isinstance(spec, SlidingWindowSpec):
            return f"sliding_window({spec.sliding_window})"
        if isinstance(spec, ChunkedLocalAttentionSpec):
            return f"chunked_local({spec.attention_chunk_size})"
        return "full"

    def plan_case(m, config_name, budget, kv_cache_dtype, tp):
        if m["heads"] % tp:
            raise ValueError(f"{config_name}: {m['heads']} heads not divisible by {tp}")
        cfg = FakeVllmConfig(m["max_model_len"], tp)
        specs, kv_dtype = specs_for(m, kv_cache_dtype, tp)
        groups = P.get_global_kv_cache_groups(cfg, [dict(specs)])
        bpb = P._pool_bytes_per_block_from_builder(builder, cfg, groups)
        check_memory = budget - bpb
        needed = P._max_memory_usage_bytes_from_groups(builder, cfg, groups)
        blocks_per_request = needed // bpb
        estimate = P._estimate_max_model_len_from_groups(builder, cfg, groups, check_memory)
        case = dict(
            config=config_name,
            kv_cache_memory_bytes=budget,
            kv_cache_dtype=kv_cache_dtype,
            tensor_parallel_size=tp,
            max_model_len=m["max_model_len"],
            kv_dtype=repr(kv_dtype).replace("torch.", ""),
            kv_dtype_bytes=kv_dtype.itemsize,
            bytes_per_token=sum(s.page_size_bytes for s in specs.values()) // BLOCK_SIZE,
            groups=[dict(kind=kind_label(g.kv_cache_spec), layers=len(g.layer_names))
                    for g in groups],
            page_size_bytes=groups[0].kv_cache_spec.page_size_bytes,
            bytes_per_block=bpb,
            num_blocks=budget // bpb,
            max_in_flight_tokens=cfg.max_in_flight_tokens,
            blocks_per_request=blocks_per_request,
            needed_bytes=needed,
            available_bytes=check_memory,
            estimated_max_model_len=estimate,
        )
        try:
            configs = P.get_kv_cache_configs(cfg, [dict(specs)], [budget], groups)
            assert configs[0].num_blocks == case["num_blocks"]
            tokens, concurrency = get_kv_cache_capacity(cfg, configs[0])
            case.update(fits=True, error=None, kv_cache_size_tokens=tokens,
                        max_concurrency=round(concurrency, 6))
        except ValueError as e:
            case.update(fits=False, error=str(e), kv_cache_size_tokens=None, max_concurrency=None)
        case["needed_gib"] = format_gib(needed)
        case["available_gib"] = format_gib(check_memory)
        return case

    from vllm.distributed.utils import get_pp_indices

    def plan_pp_case(m, config_name, budget, pp):
        cfg = FakeVllmConfig(m["max_model_len"], 1, pp)
        specs, kv_dtype = specs_for(m, "auto", 1)
        names = list(specs)
        workers = []
        for rank in range(pp):
            start, end = get_pp_indices(len(names), rank, pp)
            workers.append({n: specs[n] for n in names[start:end]})
        groups = P.get_global_kv_cache_groups(cfg, [dict(w) for w in workers])
        projected = [P._project_kv_cache_groups_to_worker(groups, w) for w in workers]
        bpbs = [P._pool_bytes_per_block_from_builder(builder, cfg, g) for g in projected]
        case = dict(
            config=config_name,
            kv_cache_memory_bytes=budget,
            pipeline_parallel_size=pp,
            max_model_len=m["max_model_len"],
            stage_layers=[len(w) for w in workers],
            groups=[dict(kind=kind_label(g.kv_cache_spec), layers=len(g.layer_names)) for g in groups],
            bytes_per_block=max(bpbs),
            num_blocks=min(budget // b for b in bpbs),
            max_in_flight_tokens=cfg.max_in_flight_tokens,
        )
        try:
            configs_ = P.get_kv_cache_configs(cfg, [dict(w) for w in workers], [budget] * pp, groups)
            assert configs_[0].num_blocks == case["num_blocks"]
            case.update(fits=True, error=None)
        except ValueError as e:
            case.update(fits=False, error=str(e))
        return case

    pp_cases = []
    for config_name in PP_CONFIGS:
        m = resolve_model(configs[config_name])
        for pp in PIPELINE_PARALLEL:
            for budget in BUDGETS:
                pp_cases.append(plan_pp_case(m, config_name, budget, pp))

    cases = []
    for config_name, entry in configs.items():
        m = resolve_model(entry)
        for budget in BUDGETS:
            for kv_cache_dtype in KV_DTYPES:
                for tp in TENSOR_PARALLEL:
                    cases.append(plan_case(m, config_name, budget, kv_cache_dtype, tp))

    # The seed: Qwen2-VL-2B's attention as flags, 2246049792 bytes of KV cache,
    # max_model_len 128000 (no config, so no max_position_embeddings check).
    seed = dict(model_type=None, layers=28, heads=12, kv_heads=2, use_mla=False,
                head_size=128, model_dtype=torch.bfloat16, kinds=[("full", None)] * 28,
                max_model_len=128000)
    seed_case = plan_case(seed, None, 2246049792, "auto", 1)

    json.dump(dict(
        vllm="0.33.0",
        generator="tools/vllm_oracle/gen_plan_fixtures.py",
        command="VLLM_SRC=/work/vllm-ref/src python tools/vllm_oracle/gen_plan_fixtures.py > cli/tests/fixtures/vllm_plan.json",
        block_size=BLOCK_SIZE,
        max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
        assumptions=ASSUMPTIONS,
        stubbed_modules=sorted({s.split(".")[0] for s in STUBBED}),
        seed=seed_case,
        cases=cases,
        pp_cases=pp_cases,
    ), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
