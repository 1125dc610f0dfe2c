"""The whole GME track on the sample corpus, with an OpenAI-compatible server on 127.0.0.1 as the LLM of
doc2query, entities and the image describer (answering from the passage it is sent, and failing now and
then, as real servers do). tests/e2e/conftest.py runs it once per session (`gme_real_run`); the openai
backend, card and publish tests read that run dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from tests.support.grounded_llm import (
    description_reply,
    entity_reply,
    pairs_reply,
    passage_of,
    schema_properties,
)
from tests.support.openai_server import (
    OpenAIServer,
    RecordedRequest,
    Reply,
    disconnect,
    malformed,
    status,
)

SECRET = "sk-test-0123456789-do-not-print"


class FlakyServer:
    """tests/support/grounded_llm.py's answers (so the round-trip filter finds the passage), but: the Titanic
    passage first meets 429, 500 and a dropped connection, then an answer (transient); the Sagrada Família
    passage always gets a malformed body (persistent); the Titanic's queries come back unmasked and the
    Hubble's masked and then named anyway (the entities stage filters both)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def __call__(self, request: RecordedRequest) -> Reply:
        properties = schema_properties(request)
        if "entity" in properties:
            return entity_reply(request, careless_rewrite)
        if "description" in properties:
            return description_reply(request)
        passage = passage_of(request)
        n = self.attempts[passage] = self.attempts.get(passage, 0) + 1
        if "Sagrada" in passage:
            return malformed()
        if "Titanic" in passage and n <= 3:
            return [status(429, retry_after="0"), status(500), disconnect()][n - 1]
        return pairs_reply(passage)


def careless_rewrite(query: str, entity: str, masked: str) -> str:
    if "Titanic" in query:
        return query  # a model that did not rewrite
    if "Hubble" in query:
        return f"{masked} ({entity})"  # a model that masked the name and then said it anyway
    return masked


# Evaluation texts the export's contamination check must keep out: three sample passages, verbatim.
CONTAMINATED = ("eiffel-tower", "giant-panda", "golden-gate-bridge")


def write_eval_file(path: Path, repo: Path) -> Path:
    texts = {}
    for line in (repo / "samples" / "corpus" / "passages.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("doc_id") in CONTAMINATED and row["doc_id"] not in texts:
            texts[row["doc_id"]] = row["text"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts.values()))
    return path


def run(run_dir: Path, server: OpenAIServer, cache: Path, eval_file: Path):
    sets = [
        f"export.contamination.eval_files=[{eval_file}]", "export.validation_ratio=0.3",
        f"cache_dir={cache}", "doc2query.llm.backend=openai", "doc2query.llm.model=served-qwen",
        f"doc2query.llm.base_url={server.base_url}", "doc2query.llm.api_key_env=FUSEGEN_TEST_KEY",
        "doc2query.llm.retry_backoff_s=0.01", "doc2query.llm.max_retries=3", "consistency.top_k=10",
        "entities.llm.backend=openai", "entities.llm.model=served-qwen", f"entities.llm.base_url={server.base_url}",
        # The server's answers are the only rewrites: its unchanged and leaking ones must be rejected.
        "entities.llm.api_key_env=FUSEGEN_TEST_KEY", "entities.repair=none",
        # Rows that reach generation get their image prompt from the served LLM (the others ask nothing).
        "images.generation.describe=llm", "images.generation.llm.backend=openai",
        "images.generation.llm.model=served-qwen", f"images.generation.llm.base_url={server.base_url}",
        "images.generation.llm.api_key_env=FUSEGEN_TEST_KEY",
    ]
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(run_dir))
    return run_pipeline(ctx, build_stages(config, ctx))
