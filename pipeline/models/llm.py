"""LLM backends for JSON-producing stages: one interface, chosen in config.

Every backend is a Ray Data transform that reads `_messages` (a JSON list of chat messages) and
adds `_raw` (the model's text) and `_llm_error` ("" or `error:<kind>`), so stages build prompts
and parse outputs the same way whichever backend runs:
- `transformers`: batched HF `generate` in an actor pool, JSON constrained by xgrammar (CPU/tests).
- `vllm`: `ray.data.llm` vLLM engine processor with structured (JSON-schema) output (GPU clusters).
- `openai`: HTTP requests to any OpenAI-compatible chat endpoint (`vllm serve`, a hosted API) with
  JSON-schema structured output; see models/openai_chat.py.
With `guided: false` no backend constrains the output (the stage's parser then meets invalid JSON).
The transformers and openai backends bound every inference call with a watchdog (models/watchdog.py):
a call that hangs gives `error:timeout` rows, and repeated hangs stop the stage.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any, Protocol, Self

import pyarrow as pa

from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.watchdog import Watchdog


class HFChatJSON:
    """Batched chat generation with HF transformers, every output constrained to a JSON schema
    (unless `cfg.guided` is false)."""

    def __init__(self, model_path: str, cfg: LLMConfig, schema: dict) -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.logging import quiet_transformers

        quiet_transformers()
        self.cfg = cfg
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        if cfg.quantize == "int8" and self.device == "cpu":
            self.model = quantize_int8(self.model)
        self.prefix = PrefixCache(self.model, torch) if cfg.prefix_cache else None
        self.grammar = None
        if cfg.guided:
            info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=self.model.config.vocab_size)
            # any_whitespace=False: small models otherwise loop on whitespace and never close the JSON.
            compiler = xgr.GrammarCompiler(info)
            self.grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def generate(
        self, conversations: list[list[dict]], batch_size: int, watchdog: Watchdog | None = None
    ) -> list[tuple[str, str]]:
        """(raw text, error) per conversation; batches are formed in input order (deterministic).
        A conversation that is None (a row that needs no answer) gets ("", "") without a model call.

        With a watchdog, each batch's `generate` runs under it: a hung batch gives `error:timeout` rows.
        """
        asked = [i for i, c in enumerate(conversations) if c is not None]
        prompts = [""] * len(conversations)
        for i in asked:
            prompts[i] = self.tok.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
        lengths = [0] * len(prompts)
        if asked:
            for i, ids in zip(asked, self.tok([prompts[i] for i in asked], add_special_tokens=False)["input_ids"]):
                lengths[i] = len(ids)
        results: list[tuple[str, str]] = [("", "")] * len(prompts)
        todo = [i for i in asked if lengths[i] <= self.cfg.max_input_tokens]
        for i in set(asked) - set(todo):
            results[i] = ("", "error:prompt_too_long")
        generate_by_length({i: prompts[i] for i in todo}, lengths, batch_size, self._generate_batch, watchdog, results)
        return results

    def _generate_batch(
        self, prompts: list[str], cancel: threading.Event | None = None
    ) -> list[tuple[str, str]]:
        from xgrammar.contrib.hf import LogitsProcessor

        processors = [LogitsProcessor([self.grammar] * len(prompts))] if self.grammar is not None else []
        kwargs = generation_kwargs(self.cfg, cancel, self.tok.pad_token_id)
        with self.torch.inference_mode():
            if self.prefix is not None:
                ids = self.tok(prompts, add_special_tokens=False)["input_ids"]
                enc = self.prefix.inputs(ids, self.tok.pad_token_id, self.device)
            else:
                enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            out = self.model.generate(**enc, logits_processor=processors, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        return mark_truncated(texts, new, eos_token_ids(self.model, self.tok))


def quantize_int8(model: Any) -> Any:
    """The model with every `nn.Linear` replaced by torch's dynamically quantised int8 Linear (weights int8,
    activations quantised per batch): CPU only, about 4x fewer weight bytes per decode step."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.14 warns once per layer that quantized tensors are deprecated; said once in docs/benchmarks.md.
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class PrefixCache:
    """The KV cache of the prompt prefix that every row of a stage shares (system prompt and few-shot
    examples), computed once per engine and reused by every batch: each batch then prefills only its rows'
    own tokens. The prefix is the longest common token prefix of the first batch (at least `MIN_TOKENS`);
    a later batch that shares fewer tokens with it uses the part it shares, or, below `MIN_TOKENS`, replaces
    it. Rows are left-padded after the prefix (`[prefix][pad...][row]`); the attention mask hides the pads
    and the position ids count only real tokens, so the model sees what it sees without the cache."""

    MIN_TOKENS = 16

    def __init__(self, model: Any, torch: Any) -> None:
        self.model, self.torch = model, torch
        import inspect

        # transformers renamed `past_key_values` to `cache` (5.2x; the old name warns on every call).
        self.key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.ids: list[int] = []
        self.layers: list[tuple[Any, Any]] = []  # per layer (keys, values), batch 1
        self.hits = 0

    def inputs(self, ids: list[list[int]], pad_id: int, device: str) -> dict[str, Any]:
        """`generate` kwargs for one batch: input_ids and attention_mask of prefix + padded rows, and a
        cache that holds the prefix for every row (no cache where the rows share under MIN_TOKENS)."""
        torch = self.torch
        # One token of each row stays out of the cache: generate needs at least one new input token.
        limit = min(len(r) for r in ids) - 1
        shared = _common_prefix([*ids, self.ids], limit) if self.ids else 0
        if shared >= self.MIN_TOKENS:
            self.hits += 1
        else:
            shared = _common_prefix(ids, limit)
            if shared < self.MIN_TOKENS:
                return _left_padded(torch, ids, pad_id, device)
            self._fill(ids[0][:shared], device)
        n, width = len(ids), max(len(r) for r in ids) - shared
        rest = [r[shared:] for r in ids]
        body = torch.tensor([[pad_id] * (width - len(r)) + r for r in rest], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
        prefix = torch.tensor(ids[0][:shared], device=device).expand(n, shared)
        from transformers import DynamicCache

        cache = DynamicCache(
            [(k[:, :, :shared].expand(n, -1, -1, -1).contiguous(), v[:, :, :shared].expand(n, -1, -1, -1).contiguous())
             for k, v in self.layers],
            config=self.model.config,
        )
        return {
            "input_ids": torch.cat([prefix, body], dim=1),
            "attention_mask": torch.cat([torch.ones(n, shared, dtype=mask.dtype, device=device), mask], dim=1),
            self.key: cache,
        }

    def _fill(self, prefix: list[int], device: str) -> None:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=self.torch.tensor([prefix], device=device), use_cache=True, **{self.key: cache})
        self.ids = list(prefix)
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]


def _common_prefix(rows: list[list[int]], limit: int) -> int:
    """The length of the longest token prefix every row shares, at most `limit`."""
    first, n = rows[0], 0
    while n < limit and n < len(first) and all(n < len(r) and r[n] == first[n] for r in rows[1:]):
        n += 1
    return n


def _left_padded(torch: Any, ids: list[list[int]], pad_id: int, device: str) -> dict[str, Any]:
    width = max(len(r) for r in ids)
    return {
        "input_ids": torch.tensor([[pad_id] * (width - len(r)) + r for r in ids], device=device),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device),
    }


# -- what the transformers text (HFChatJSON) and vision (models/vlm.py HFVisionChat) engines share ------


def generate_by_length(
    prompts: dict[int, Any], lengths: Mapping[int, int] | Sequence[int], batch_size: int, generate_batch: Callable[..., list[tuple[str, str]]],
    watchdog: Watchdog | None, results: list[tuple[str, str]],
) -> None:
    """Set `results[i]` for every index of `prompts` to `generate_batch(batch)`'s (raw text, error), in batches of
    `batch_size` prompts of similar length (`lengths[i]`, in tokens). With a watchdog, each batch runs under it:
    a hung batch gives `error:timeout` rows."""
    # Sorted by length so a batch pads little; the order is fixed by the input (deterministic).
    todo = sorted(prompts, key=lambda i: (lengths[i], i))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        call = partial(generate_batch, [prompts[i] for i in chunk])
        outputs = call() if watchdog is None else watchdog.run_rows(call, len(chunk))
        for i, result in zip(chunk, outputs):
            results[i] = result


def generation_kwargs(cfg: LLMConfig, cancel: threading.Event | None, pad_token_id: int | None) -> dict[str, Any]:
    """`model.generate` sampling and stopping arguments: greedy at temperature 0, else sampling from `cfg.seed`
    (seeded here, per batch, so a retried batch samples the same)."""
    import torch
    from transformers import StoppingCriteriaList

    sample = cfg.temperature > 0
    if sample:
        torch.manual_seed(cfg.seed)
    # An attempt the watchdog abandoned stops at its next token instead of competing with the retry.
    stopping = StoppingCriteriaList([_cancel_criterion(cancel)] if cancel is not None else [])
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": sample,
        "temperature": cfg.temperature if sample else None,
        "top_p": cfg.top_p if sample else None,
        "top_k": None,
        "stopping_criteria": stopping,
        "pad_token_id": pad_token_id,
    }


def eos_token_ids(model: Any, tok: Any) -> set[int]:
    """The ids that end a sequence: the model's generation config's and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}


def mark_truncated(texts: list[str], new_tokens: Any, eos_ids: set[int]) -> list[tuple[str, str]]:
    """(text, error) per generated sequence: `error:truncated_output` where no end-of-sequence token came, as
    `max_new_tokens` cut it off (said so instead of the parser's "invalid JSON")."""
    finished = [bool(eos_ids & set(row.tolist())) for row in new_tokens]
    return [(t, "" if done else "error:truncated_output") for t, done in zip(texts, finished)]


def _cancel_criterion(cancel: threading.Event) -> Any:
    """A transformers stopping criterion that ends every sequence once `cancel` is set."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return Cancelled()


class ChatEngine(Protocol):
    """A transformers engine as its Ray Data UDF calls it (`HFChatJSON`, models/vlm.py `HFVisionChat`)."""

    def generate(
        self, conversations: list[list[dict] | None], batch_size: int, watchdog: Watchdog | None = None
    ) -> list[tuple[str, str]]: ...


class HFGenerateFn:
    """Ray Data UDF (one model per actor): `_messages` in, `_raw` and `_llm_error` out (models/vlm.py's
    `HFVisionGenerateFn` is this around a vision engine).

    Raises:
        InferenceHungError: `max_consecutive_timeouts` batches in a row hung (see models/watchdog.py).
    """

    def __init__(self, model_path: str, cfg: dict, schema: dict, batch_size: int) -> None:
        config = LLMConfig(**cfg)
        self._bind(HFChatJSON(model_path, config, schema), config, batch_size)

    @classmethod
    def from_engine(cls, engine: ChatEngine, cfg: LLMConfig, batch_size: int) -> Self:
        """An instance around an engine that is already built (tests share one loaded model)."""
        fn = cls.__new__(cls)
        fn._bind(engine, cfg, batch_size)
        return fn

    def _bind(self, engine: ChatEngine, cfg: LLMConfig, batch_size: int) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.watchdog = Watchdog(cfg.timeout_s, cfg.max_consecutive_timeouts, cfg.model)

    def __call__(self, table: pa.Table) -> pa.Table:
        conversations = [json.loads(m) if m is not None else None for m in table[MESSAGES].to_pylist()]
        results = self.engine.generate(conversations, self.batch_size, self.watchdog)
        table = table.append_column(RAW, pa.array([r for r, _ in results], pa.string()))
        return table.append_column(LLM_ERROR, pa.array([e for _, e in results], pa.string()))


def llm_pools(cfg: LLMConfig, resources, section: str, llm_key: str, multimodal: bool = False) -> tuple:
    """The Ray worker pools `generate_json` (and models/vlm.py's `generate_text_with_images`, with
    `multimodal`) start for `cfg.backend`, for the plan; `section` names the config section whose
    `resources` they use, `llm_key` the LLM config's key (e.g. `images.generation.llm`)."""
    from pipeline.stage import actor_pool

    if cfg.backend == "vllm":
        from pipeline.models.vllm_backend import replica_pools

        return replica_pools(cfg, resources, section, llm_key, multimodal)
    if cfg.backend == "openai":
        return (actor_pool("OpenAIChatFn", resources, section, num_gpus=0),)
    return (actor_pool("HFVisionGenerateFn" if multimodal else "HFGenerateFn", resources, section),)


def generate_json(ds, cfg: LLMConfig, model_path: str, schema: dict, resources, stage: str = "llm") -> Any:
    """Add `_raw` / `_llm_error` to every row of `ds` with the configured backend.

    `model_path` is what the stage resolved from `cfg.model` (models/sources.py); the openai backend
    ignores it and sends `cfg.model`, the name the server knows, as is. `stage` names the stage in
    errors.

    Raises:
        PipelineConfigError: openai backend with neither `llm.base_url` nor OPENAI_BASE_URL set.
        StageUnschedulableError: no node can hold the model actor within `llm.schedule_grace_s`.
    """

    if cfg.backend == "vllm":
        from pipeline.models.vllm_backend import vllm_generate

        return vllm_generate(ds, cfg, model_path, schema, resources, stage)
    if cfg.backend == "openai":
        from pipeline.models.openai_chat import openai_generate

        return openai_generate(ds, cfg, schema, resources)
    from pipeline.scheduling import wait_until_schedulable
    from pipeline.stage import actor_map

    bundle = {"CPU": float(resources.num_cpus), "GPU": float(resources.num_gpus)}
    wait_until_schedulable(stage, [bundle], cfg.schedule_grace_s, f"{stage}.llm.schedule_grace_s")
    return actor_map(ds, HFGenerateFn, {
        "model_path": model_path, "cfg": asdict(cfg), "schema": schema, "batch_size": resources.batch_size,
    }, resources)
