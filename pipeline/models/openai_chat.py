"""The `openai` LLM backend: one chat-completions request per row to any OpenAI-compatible endpoint.

`OpenAIChatFn` reads `_messages` (a JSON list of chat messages) and adds `_raw` and `_llm_error`,
rows in input order, like the other backends (models/llm.py). It POSTs {base_url}/chat/completions
per row, at most `llm.max_concurrent_requests` at once, with JSON-schema structured output (what
`vllm serve` and OpenAI accept) unless `llm.guided` is false. 429, 5xx, connection errors and
timeouts are retried with exponential backoff and jitter (a numeric Retry-After wins, capped);
other 4xx are not. A row never raises; its `_llm_error` is "" or one of `error:truncated_output`,
`error:http_<status>`, `error:connection`, `error:bad_response`, `error:timeout` (watchdog), and for
errors `_raw` keeps the start of the response (or the connection error) for debugging. The API key
is read from `$<llm.api_key_env>` on the driver and handed to each actor wrapped in `Secret`, so it
never shows in a repr, a log line or a row.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from typing import Any

import httpx
import pyarrow as pa
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from pipeline.errors import PipelineConfigError
from pipeline.logging import get_logger
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.watchdog import TIMED_OUT, TIMEOUT_ERROR, Watchdog

log = get_logger(__name__)

BASE_URL_ENV = "OPENAI_BASE_URL"
# Characters of an error response (or connection error) kept in `_raw`.
RAW_ERROR_CHARS = 2000
RETRY_AFTER_CAP_S = 60.0
BACKOFF_CAP_S = 60.0
BAD_RESPONSE = "error:bad_response"
# Timeouts, refused/reset connections and a server that closes without answering are worth a retry;
# other transport errors (a malformed request on our side) are not.
RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class Secret:
    """A string that never shows itself in repr/str (the API key on its way to the actors)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class _RetryableStatus(Exception):
    """A 429 or 5xx answer; retried, and turned into `error:http_<status>` when retries run out."""

    def __init__(self, status: int, text: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.text, self.retry_after = status, text, retry_after


class _Abandoned(Exception):
    """The watchdog gave up on this row's attempt: make no further request for it."""


def resolve_base_url(cfg: LLMConfig) -> str:
    """`llm.base_url`, else $OPENAI_BASE_URL, without a trailing slash.

    Raises:
        PipelineConfigError: neither is set, or the value is not an http(s) URL with a host.
    """
    url = cfg.base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if not url:
        raise PipelineConfigError(
            f"llm: `llm.base_url` is not set and neither is the environment variable {BASE_URL_ENV}; "
            "the openai backend needs the endpoint's base URL: set `llm.base_url` in the stage's config "
            "(e.g. http://localhost:8000/v1 for `vllm serve`) or export OPENAI_BASE_URL"
        )
    try:
        host = httpx.URL(url).host if url.startswith(("http://", "https://")) else ""
    except httpx.InvalidURL:
        host = ""
    if not host:
        source = "`llm.base_url`" if cfg.base_url else f"${BASE_URL_ENV}"
        raise PipelineConfigError(
            f"llm: `llm.base_url` (from {source}) must be an http:// or https:// URL with a host, "
            f"e.g. http://localhost:8000/v1 (got {url!r})"
        )
    return url.rstrip("/")


def chat_request(cfg: LLMConfig, schema: dict, messages: list[dict]) -> dict:
    """The JSON body of one chat-completions request."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": messages,
        "max_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        # Greedy decoding ignores it; with sampling it makes a server that honours seeds repeatable.
        "seed": cfg.seed,
    }
    if cfg.guided:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    return body


def parse_completion(text: str) -> tuple[str, str]:
    """(raw, error) for the body of a 2xx chat-completions answer; a bad body is returned whole."""
    try:
        body = json.loads(text)
    except ValueError:
        return text, BAD_RESPONSE
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return text, BAD_RESPONSE
    if choice.get("finish_reason") == "length":
        return content, "error:truncated_output"
    return content, ""


def backoff_seconds(attempt: int, retry_after: str | None, base_s: float) -> float:
    """Wait before retry `attempt` (1 = first retry): a numeric Retry-After (capped), else
    `base_s * 2**(attempt-1)` (capped), plus up to `base_s` of jitter so rows do not retry in lockstep.
    An HTTP-date Retry-After is ignored (the exponential wait applies)."""
    jitter = random.uniform(0, base_s)
    try:
        server_wait = float(retry_after) if retry_after is not None else math.nan
    except ValueError:
        server_wait = math.nan
    if math.isfinite(server_wait) and server_wait >= 0:
        return min(server_wait, RETRY_AFTER_CAP_S) + jitter
    return min(base_s * 2 ** (attempt - 1), BACKOFF_CAP_S) + jitter


class OpenAIChatFn:
    """Ray Data UDF (one HTTP client per actor): `_messages` in, `_raw` and `_llm_error` out.

    Args:
        cfg: `LLMConfig` as a dict; `base_url` unset means $OPENAI_BASE_URL on this process.
        schema: the JSON schema every completion must follow (sent unless `guided` is false).
        api_key: sent as `Authorization: Bearer`; None sends no Authorization header.

    Raises:
        PipelineConfigError: no base URL (constructor).
        InferenceHungError: `max_consecutive_timeouts` rows in a row hit the watchdog (`__call__`).
    """

    def __init__(self, cfg: dict, schema: dict, api_key: Secret | str | None = None) -> None:
        self.cfg = LLMConfig(**cfg)
        self.schema = schema
        self.url = f"{resolve_base_url(self.cfg)}/chat/completions"
        self._key = Secret(api_key) if isinstance(api_key, str) else api_key
        headers = {"User-Agent": "fusegen"}
        if self._key is not None and self._key.reveal():
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        n = self.cfg.max_concurrent_requests
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.cfg.request_timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )
        # The pool bounds rows in progress; the semaphore bounds requests on the wire, also counting
        # attempts the watchdog abandoned that are still waiting for their answer.
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fusegen-openai")
        self._slots = threading.BoundedSemaphore(n)
        self.watchdog = Watchdog(self.cfg.timeout_s, self.cfg.max_consecutive_timeouts, self.cfg.model)
        self._warned: set[int] = set()

    def __repr__(self) -> str:
        key = "set" if self._key is not None and self._key.reveal() else "unset"
        return (
            f"OpenAIChatFn(model={self.cfg.model!r}, url={self.url!r}, api_key={key}, "
            f"max_concurrent_requests={self.cfg.max_concurrent_requests})"
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        # A null `_messages` is a row that needs no answer: ("", "") without a request.
        conversations = [json.loads(m) if m is not None else None for m in table[MESSAGES].to_pylist()]
        futures = [self._pool.submit(self._row, c) for c in conversations]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            # InferenceHungError (or a bug): do not send the rows still queued.
            for f in futures:
                f.cancel()
            raise
        table = table.append_column(RAW, pa.array([r for r, _ in results], pa.string()))
        return table.append_column(LLM_ERROR, pa.array([e for _, e in results], pa.string()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _row(self, messages: list[dict] | None) -> tuple[str, str]:
        if messages is None:
            return "", ""
        result = self.watchdog.run(partial(self._request, messages))
        return ("", TIMEOUT_ERROR) if result is TIMED_OUT else result

    def _request(self, messages: list[dict], cancel: threading.Event) -> tuple[str, str]:
        """One row: POST with retries; (raw, error), never raises for an HTTP or network failure."""
        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type((_RetryableStatus, *RETRYABLE_TRANSPORT)),
            before_sleep=self._log_retry,
            # Wake from the backoff when the watchdog abandons this attempt (then _post stops).
            sleep=cancel.wait,
            reraise=True,
        )
        payload = chat_request(self.cfg, self.schema, messages)
        try:
            response = retrying(self._post, payload, cancel)
        except _RetryableStatus as exc:
            return self._scrub(exc.text), f"error:http_{exc.status}"
        except _Abandoned:
            return "", TIMEOUT_ERROR
        except httpx.DecodingError as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}"), BAD_RESPONSE
        except httpx.HTTPError as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}"), "error:connection"
        if not 200 <= response.status_code < 300:
            self._warn_if_misconfigured(response.status_code)
            return self._scrub(response.text), f"error:http_{response.status_code}"
        raw, error = parse_completion(response.text)
        return (self._scrub(raw), error) if error == BAD_RESPONSE else (raw, error)

    def _post(self, payload: dict, cancel: threading.Event) -> httpx.Response:
        if cancel.is_set():
            raise _Abandoned
        with self._slots:
            response = self._client.post(self.url, json=payload)
        if response.status_code == 429 or response.status_code >= 500:
            raise _RetryableStatus(response.status_code, response.text, response.headers.get("retry-after"))
        return response

    def _warn_if_misconfigured(self, status: int) -> None:
        """Once per status: 401/403/404 usually fail every row alike, so point at the likely fix."""
        if status in (401, 403, 404) and status not in self._warned:
            self._warned.add(status)
            log.warning(
                "%s answered HTTP %d; every row will likely fail the same way: check `llm.base_url` "
                "(OpenAI-compatible servers usually end in /v1), `llm.model` (%s) and the API key in $%s",
                self.url,
                status,
                self.cfg.model,
                self.cfg.api_key_env,
            )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, _RetryableStatus) else None
        return backoff_seconds(state.attempt_number, retry_after, self.cfg.retry_backoff_s)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.debug(
            "%s: attempt %d of %d failed (%s); retrying in %.2f s",
            self.url,
            state.attempt_number,
            self.cfg.max_retries + 1,
            type(exc).__name__ if exc else "?",
            wait,
        )

    def _scrub(self, text: str) -> str:
        """Error text for `_raw`: the key blanked out (a server may echo headers), then truncated."""
        key = self._key.reveal() if self._key is not None else ""
        if key:
            text = text.replace(key, "***")
        return text[:RAW_ERROR_CHARS]


def openai_generate(ds: Any, cfg: LLMConfig, schema: dict, resources: Any) -> Any:
    """The openai branch of `generate_json`: an actor pool of `OpenAIChatFn`.

    The base URL and the key are resolved here, on the driver, because Ray workers do not inherit
    the driver's environment; the key travels as a `Secret` constructor argument.
    """

    base_url = resolve_base_url(cfg)
    key = os.environ.get(cfg.api_key_env) or None
    log.info(
        "llm: openai backend, model %s at %s, API key from $%s (%s)",
        cfg.model,
        base_url,
        cfg.api_key_env,
        "set" if key else "not set; sending no Authorization header",
    )
    from pipeline.stage import actor_map

    kwargs = {"cfg": asdict(replace(cfg, base_url=base_url)), "schema": schema, "api_key": Secret(key) if key else None}
    # An HTTP client needs no GPU, whatever resources.num_gpus says.
    return actor_map(ds, OpenAIChatFn, kwargs, resources, num_gpus=0)
