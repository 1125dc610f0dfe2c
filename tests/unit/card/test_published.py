"""pipeline/card/published.py: the card shows the run config without paths of the machine that ran it."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.card import build_card
from pipeline.card.published import published_config
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
