"""pipeline/models/openai_chat.py against a scripted OpenAI-compatible server on 127.0.0.1.

`OpenAIChatFn` is called directly on pyarrow tables (no Ray); the server (tests/support/openai_server.py)
plays successes, 429/5xx/4xx, malformed bodies, dropped connections and slow answers, and records what
it received. Backoff is 10 ms, so retries cost little.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
from dataclasses import asdict

import jsonschema
import pyarrow as pa
import pytest

from pipeline.errors import InferenceHungError, PipelineConfigError
from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW, LLMConfig, generate_json
from pipeline.models.openai_chat import (
    BACKOFF_CAP_S,
    RAW_ERROR_CHARS,
    RETRY_AFTER_CAP_S,
    OpenAIChatFn,
    Secret,
    backoff_seconds,
)
from pipeline.stage import Resources
from tests.support.openai_server import (
    OpenAIServer,
    RecordedRequest,
    Reply,
    disconnect,
    malformed,
    ok,
    status,
    truncated,
)

KEY = "sk-test-5ecret-0f-the-user"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12}, "big": {"type": "boolean"}},
    "required": ["city", "big"],
    "additionalProperties": False,
}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment would route 127.0.0.1 away from the test server.
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def make_fn(server):
    made: list[OpenAIChatFn] = []

    def make(api_key: str | None = KEY, **overrides) -> OpenAIChatFn:
        values = {
            "backend": "openai",
            "model": "served-model",
            "base_url": server.base_url,
            "max_retries": 2,
            "retry_backoff_s": 0.01,
            "request_timeout_s": 2.0,
            "timeout_s": 10.0,
            **overrides,
        }
        fn = OpenAIChatFn(asdict(LLMConfig(**values)), SCHEMA, api_key=api_key)
        made.append(fn)
        return fn

    yield make
    for fn in made:
        fn.close()


def table_of(*texts: str) -> pa.Table:
    messages = [
        json.dumps([{"role": "system", "content": "JSON"}, {"role": "user", "content": t}]) for t in texts
    ]
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], MESSAGES: messages})


def run(fn: OpenAIChatFn, *texts: str) -> list[tuple[str, str]]:
    out = fn(table_of(*texts))
    return list(zip(out[RAW].to_pylist(), out[LLM_ERROR].to_pylist()))


# --- success and the request ------------------------------------------------------------------------


def test_success_gives_the_completion_content_and_no_error(server, make_fn):
    ((raw, error),) = run(make_fn(), "Name a city.")
    jsonschema.validate(json.loads(raw), SCHEMA)
    assert error == ""


def test_a_null_messages_row_is_answered_empty_without_a_request(server, make_fn):
    table = table_of("Name a city.")
    table = pa.table({"id": ["skip", "ask"], MESSAGES: [None, table[MESSAGES][0].as_py()]})
    out = make_fn()(table)
    assert (out[RAW][0].as_py(), out[LLM_ERROR][0].as_py()) == ("", "")
    assert out[RAW][1].as_py() and len(server.requests) == 1


def test_output_table_keeps_input_columns_and_adds_raw_and_error(server, make_fn):
    assert make_fn()(table_of("a", "b")).column_names == ["id", MESSAGES, RAW, LLM_ERROR]


def test_request_carries_model_messages_and_sampling_from_config(server, make_fn):
    run(make_fn(max_new_tokens=77, temperature=0.5, top_p=0.9, seed=11), "Name a city.")
    body = server.requests[0].body
    assert (body["model"], body["messages"][-1]["content"], body["max_tokens"], body["temperature"]) == (
        "served-model",
        "Name a city.",
        77,
        0.5,
    )
    assert (body["top_p"], body["seed"]) == (0.9, 11)


def test_request_asks_for_strict_json_schema_output(server, make_fn):
    run(make_fn(), "x")
    assert server.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


def test_guided_false_omits_response_format(server, make_fn):
    run(make_fn(guided=False), "x")
    assert "response_format" not in server.requests[0].body


def test_requests_go_to_base_url_chat_completions(server, make_fn):
    run(make_fn(base_url=server.base_url + "/"), "x")
    assert server.requests[0].path == "/v1/chat/completions"


def test_base_url_comes_from_env_when_config_has_none(server, make_fn, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    assert run(make_fn(base_url=None), "x")[0][1] == ""


def test_missing_base_url_raises_config_error_naming_llm_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PipelineConfigError, match=r"`llm.base_url` is not set.*OPENAI_BASE_URL"):
        OpenAIChatFn(asdict(LLMConfig(backend="openai", model="m")), SCHEMA)


@pytest.mark.parametrize("url", ["localhost:8000/v1", "http://", "http://[::1/v1"])
def test_base_url_from_env_must_be_an_http_url_with_a_host(monkeypatch, url):
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(PipelineConfigError, match=r"\$OPENAI_BASE_URL.*http:// or https://"):
        OpenAIChatFn(asdict(LLMConfig(backend="openai", model="m")), SCHEMA)


def test_404_logs_a_hint_about_base_url_once(server, make_fn, pipeline_log):
    server.default = status(404)
    run(make_fn(), "a", "b", "c")
    hints = [m for m in pipeline_log if "check `llm.base_url`" in m]
    assert len(hints) == 1


# --- retries ------------------------------------------------------------------------------------------


def test_500_then_ok_succeeds_after_one_retry(server, make_fn):
    server.script(status(500), ok('{"city": "Lyon", "big": true}'))
    assert (run(make_fn(), "x"), len(server.requests)) == ([('{"city": "Lyon", "big": true}', "")], 2)


def test_429_with_retry_after_waits_that_long_then_succeeds(server, make_fn):
    server.script(status(429, retry_after="0.3"), ok())
    result = run(make_fn(), "x")
    gap = server.requests[1].at - server.requests[0].at
    assert (result[0][1], gap >= 0.3) == ("", True)


def test_persistent_500_gives_error_http_500_after_max_retries_plus_one_attempts(server, make_fn):
    server.default = status(500, body="upstream model crashed")
    result = run(make_fn(max_retries=3), "x")
    assert (result, len(server.requests)) == ([("upstream model crashed", "error:http_500")], 4)


def test_persistent_429_gives_error_http_429(server, make_fn):
    server.default = status(429, retry_after="0")
    assert run(make_fn(max_retries=1), "x")[0][1] == "error:http_429"


def test_400_is_not_retried(server, make_fn):
    server.script(status(400, body='{"error": {"message": "max context length is 4096"}}'))
    raw, error = run(make_fn(), "x")[0]
    assert (error, len(server.requests), "max context length" in raw) == ("error:http_400", 1, True)


def test_error_body_in_raw_is_truncated(server, make_fn):
    server.script(status(404, body="e" * 10_000))
    assert len(run(make_fn(), "x")[0][0]) == RAW_ERROR_CHARS


def test_closed_connection_is_retried_then_succeeds(server, make_fn):
    server.script(disconnect(), ok())
    assert (run(make_fn(), "x")[0][1], len(server.requests)) == ("", 2)


def test_persistently_closed_connection_gives_error_connection(server, make_fn):
    server.default = disconnect()
    raw, error = run(make_fn(max_retries=2), "x")[0]
    assert (error, len(server.requests), raw.startswith("RemoteProtocolError")) == (
        "error:connection",
        3,
        True,
    )


def test_read_timeout_is_retried_then_succeeds(server, make_fn):
    server.script(ok(delay_s=2.0), ok())
    assert (run(make_fn(request_timeout_s=0.2), "x")[0][1], len(server.requests)) == ("", 2)


def test_refused_connection_gives_error_connection(make_fn):
    # A port that was just free: nothing listens there, so the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert (
        run(make_fn(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1), "x")[0][1] == "error:connection"
    )


# --- bad answers ----------------------------------------------------------------------------------------


def test_malformed_body_gives_bad_response_with_the_body_in_raw(server, make_fn):
    server.script(malformed("<html>gateway says hi</html>"))
    assert (run(make_fn(), "x"), len(server.requests)) == (
        [("<html>gateway says hi</html>", "error:bad_response")],
        1,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"id": "x"},
        {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "no"}}]},
        {"choices": [{"message": {"role": "assistant", "content": ["a", "b"]}}]},
        [1, 2],
    ],
    ids=["empty-choices", "no-choices", "null-content", "list-content", "not-an-object"],
)
def test_body_without_string_content_gives_bad_response(server, make_fn, body):
    server.script(status(200, body=json.dumps(body)))
    assert run(make_fn(), "x")[0][1] == "error:bad_response"


def test_finish_reason_length_gives_truncated_output_and_keeps_raw(server, make_fn):
    server.script(truncated('{"city": "Lyo'))
    assert run(make_fn(), "x") == [('{"city": "Lyo', "error:truncated_output")]


# --- concurrency, order, watchdog -------------------------------------------------------------------------


def test_in_flight_requests_never_exceed_max_concurrent_requests(server, make_fn):
    server.default = ok(delay_s=0.1)
    results = run(make_fn(max_concurrent_requests=3), *[f"q{i}" for i in range(12)])
    assert ([e for _, e in results], server.max_in_flight) == ([""] * 12, 3)


def by_prompt(request: RecordedRequest) -> Reply:
    text = request.last_user_text
    if text.startswith("bad"):
        return status(400, body=f"rejected {text}")
    if text.startswith("cut"):
        return truncated(f"partial {text}")
    if text.startswith("junk"):
        return malformed(f"junk body {text}")
    return ok(f"answer {text}", delay_s=0.05 if text.endswith("0") else 0.0)


def test_rows_keep_input_order_with_mixed_outcomes(server, make_fn):
    server.default = by_prompt
    texts = ["ok0", "bad1", "ok2", "cut3", "junk4", "ok5", "bad6", "ok10"]
    assert run(make_fn(max_concurrent_requests=4), *texts) == [
        ("answer ok0", ""),
        ("rejected bad1", "error:http_400"),
        ("answer ok2", ""),
        ("partial cut3", "error:truncated_output"),
        ("junk body junk4", "error:bad_response"),
        ("answer ok5", ""),
        ("rejected bad6", "error:http_400"),
        ("answer ok10", ""),
    ]


def test_empty_table_gives_empty_columns(server, make_fn):
    assert (make_fn()(table_of()).num_rows, len(server.requests)) == (0, 0)


def test_row_stuck_in_retries_past_timeout_s_gives_error_timeout(server, make_fn):
    # Each attempt fails fast, then the 5 s backoff outlasts the watchdog: abandoned, retried, abandoned.
    server.default = status(503)
    fn = make_fn(retry_backoff_s=5.0, timeout_s=0.3, request_timeout_s=0.3)
    assert (run(fn, "x"), len(server.requests)) == ([("", "error:timeout")], 2)


def test_consecutive_watchdog_timeouts_raise_inference_hung_error(server, make_fn):
    server.default = status(503)
    fn = make_fn(retry_backoff_s=5.0, timeout_s=0.2, request_timeout_s=0.2, max_consecutive_timeouts=1)
    with pytest.raises(InferenceHungError, match="served-model"):
        fn(table_of("x"))


# --- the API key ------------------------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer_header(server, make_fn):
    run(make_fn(), "x")
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_no_authorization_header_without_a_key(server, make_fn):
    run(make_fn(api_key=None), "x")
    assert "authorization" not in server.requests[0].headers


@pytest.fixture
def pipeline_log():
    """Every record the `pipeline` logger emits at DEBUG and above (it does not propagate to root)."""
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("pipeline")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_api_key_never_shows_in_repr_rows_or_logs(server, make_fn, pipeline_log):
    # The 400 echoes the key, as a careless server might.
    server.script(
        status(500), status(400, body=f"invalid key {KEY}"), disconnect(), disconnect(), disconnect()
    )
    fn = make_fn(max_retries=2, max_concurrent_requests=1)
    results = run(fn, "a", "b")
    text = repr(fn) + repr(vars(fn)) + json.dumps(results) + "\n".join(pipeline_log)
    assert (KEY in text, results[0], "***" in text) == (False, ("invalid key ***", "error:http_400"), True)


def test_repr_says_whether_a_key_is_set(make_fn):
    assert ("api_key=set" in repr(make_fn()), "api_key=unset" in repr(make_fn(api_key=None))) == (True, True)


def test_secret_hides_its_value_and_survives_pickling():
    secret = Secret(KEY)
    assert (KEY in repr(secret) + str(secret), pickle.loads(pickle.dumps(secret)).reveal()) == (False, KEY)


# --- backoff ------------------------------------------------------------------------------------------


def test_numeric_retry_after_is_honoured_plus_at_most_base_jitter():
    assert 2.0 <= backoff_seconds(1, "2", 0.5) <= 2.5


def test_huge_retry_after_is_capped():
    assert backoff_seconds(1, "3600", 0.0) == RETRY_AFTER_CAP_S


def test_http_date_retry_after_falls_back_to_exponential_backoff():
    assert 2.0 <= backoff_seconds(3, "Wed, 21 Oct 2015 07:28:00 GMT", 0.5) <= 2.5


def test_exponential_backoff_doubles_and_is_capped():
    waits = [backoff_seconds(n, None, 1.0) for n in (1, 2, 3, 20)]
    assert [int(w) for w in waits] == [1, 2, 4, int(BACKOFF_CAP_S)]


# --- generate_json wiring (a fake dataset records the map_batches call; no Ray cluster) ----------------


class FakeDataset:
    def map_batches(self, fn, **kwargs):
        self.fn, self.kwargs = fn, kwargs
        return self


def test_generate_json_builds_an_actor_pool_of_openai_chat_fn_with_the_key(monkeypatch):
    monkeypatch.setenv("MY_KEY_VAR", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    cfg = LLMConfig(backend="openai", model="served-model", api_key_env="MY_KEY_VAR")
    ds = generate_json(FakeDataset(), cfg, "ignored/path", SCHEMA, Resources(num_cpus=0.5, concurrency=3))
    kw = ds.kwargs
    compute = kw["compute"]
    assert (ds.fn, kw["fn_constructor_kwargs"]["api_key"].reveal(), KEY in repr(kw)) == (
        OpenAIChatFn,
        KEY,
        False,
    )
    assert (compute.min_size, compute.max_size, kw["batch_size"], kw["num_cpus"], kw["num_gpus"]) == (
        3,
        3,
        None,
        0.5,
        0,
    )


def test_generate_json_resolves_base_url_on_the_driver(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    ds = generate_json(FakeDataset(), LLMConfig(backend="openai", model="m"), "x", SCHEMA, Resources())
    assert ds.kwargs["fn_constructor_kwargs"]["cfg"]["base_url"] == "http://127.0.0.1:1/v1"


def test_generate_json_without_base_url_fails_before_any_work(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PipelineConfigError, match="llm.base_url"):
        generate_json(FakeDataset(), LLMConfig(backend="openai", model="m"), "x", SCHEMA, Resources())


def test_generate_json_sends_no_key_when_the_variable_is_unset(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    ds = generate_json(FakeDataset(), LLMConfig(backend="openai", model="m"), "x", SCHEMA, Resources())
    assert ds.kwargs["fn_constructor_kwargs"]["api_key"] is None
