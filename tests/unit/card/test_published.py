"""pipeline/card/published.py: the card shows the run config without paths of the machine that ran it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.card import build_card
from pipeline.card.published import LOCAL_ENDPOINT, published_config
from tests.support.run_dir import make_run_dir


def test_machine_local_keys_are_left_out_and_absolute_paths_shortened():
    run_yaml = {
        "name": "demo", "prompts_dir": "/home/ana/fusegen/prompts", "cache_dir": "~/.cache/fusegen",
        "run_dir": "/data/runs/demo", "index_dir": "s3://bucket/idx",
        "ingest": {"path": "/home/ana/corpora/wiki/passages.jsonl", "images": {"check": "structure"}},
        "export": {"contamination": {"eval_files": ["C:\\evals\\mbeir\\queries.jsonl", "evals/local.jsonl"]}},
        "images": {"pool": {"path": "https://example.org/pool.jsonl"}},
    }
    assert published_config(run_yaml) == {
        "name": "demo",
        "ingest": {"path": ".../wiki/passages.jsonl", "images": {"check": "structure"}},
        "export": {"contamination": {"eval_files": [".../mbeir/queries.jsonl", "evals/local.jsonl"]}},
        "images": {"pool": {"path": "https://example.org/pool.jsonl"}},
    }


@given(st.lists(st.text(alphabet="abc/~:\\. ", min_size=1, max_size=12), min_size=1, max_size=5))
def test_no_published_string_starts_like_a_local_absolute_path(segments):
    value = "/" + "/".join(segments)
    shown = published_config({"ingest": {"path": value}, "tags": [value, "~" + value]})
    strings = [shown["ingest"]["path"], *shown["tags"]]
    assert all(not s.startswith(("/", "~")) for s in strings)


def test_the_rendered_card_names_no_path_of_the_machine(tmp_path):
    run = make_run_dir(tmp_path, rows=3)
    card = Path(build_card(str(run))).read_text()
    repo = str(Path(__file__).resolve().parents[3])
    assert "prompts_dir" not in card
    assert repo not in card and str(tmp_path) not in card


@pytest.mark.parametrize(
    "url, local",
    [
        ("http://127.0.0.1:40941/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://10.2.3.4/v1", True),
        ("https://192.168.1.20:8443/v1", True),
        ("http://[::1]:9000/v1", True),
        ("http://169.254.169.254/latest", True),
        ("http://vllm-head:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://8.8.8.8/v1", False),
        ("s3://bucket/prefix", False),
        ("not a url", False),
    ],
)
def test_an_llm_server_on_the_runs_own_network_is_not_published(url, local):
    shown = published_config({"doc2query": {"llm": {"base_url": url}}})["doc2query"]["llm"]["base_url"]
    assert (shown == LOCAL_ENDPOINT) is local
    assert local or shown == url
