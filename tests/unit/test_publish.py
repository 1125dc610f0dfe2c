"""pipeline/publish.py (`fusegen push`, `card`, `run --push`) against the local Hub server, through the real
huggingface_hub client."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.card import build_card
from pipeline.cli import main
from pipeline.errors import PublishError
from pipeline.io.hub import RetryConfig
from pipeline.publish import PushConfig, batches, local_files, pack_images, push_run
from tests.support.hub_server import TEST_TOKEN as TOKEN
from tests.support.hub_server import Fault

FAST = RetryConfig(max_attempts=4, base_wait_s=0.0)


def push(run_dir: Path, hub, **kw) -> object:
    return push_run(str(run_dir), PushConfig(repo="me/demo", endpoint=hub.endpoint, retry=FAST, **kw))


def local_tree(run_dir: Path) -> dict[str, bytes]:
    return {f.path_in_repo: Path(f.local_path).read_bytes() for f in local_files(str(run_dir / "export"))}


def test_push_uploads_every_file_byte_for_byte_with_the_card_last(run_dir, hub):
    report = push(run_dir, hub, private=True)
    assert hub.files("me/demo") == local_tree(run_dir)
    assert hub.repos["me/demo"].private
    assert hub.commits[-1] == ["README.md"] and report.commits == len(hub.commits)
    assert all(p.startswith(("data/", "assets/", "README.md")) for p in hub.files("me/demo"))


def test_push_survives_429_and_dropped_connections_on_create_and_commit(run_dir, hub):
    hub.fault("POST", "/api/repos/create", Fault(status=429, retry_after="0"), Fault(status=503))
    hub.fault("POST", "/commit/", Fault(status=429, retry_after="0"), Fault(drop=True), Fault(status=500))
    push(run_dir, hub)
    assert hub.files("me/demo") == local_tree(run_dir)


def test_a_commit_whose_answer_was_lost_is_not_sent_twice(run_dir, hub):
    hub.fault("POST", "/commit/", Fault(drop=True, apply=True))
    push(run_dir, hub)
    data_commits = [c for c in hub.commits if any(p.startswith("data/") for p in c)]
    assert len(data_commits) == 1
    assert hub.files("me/demo") == local_tree(run_dir)


def test_an_interrupted_push_resumes_without_resending_finished_files(run_dir, hub):
    # One file per commit: commit 1 lands, then the server fails every commit and the push stops.
    cfg = {"max_commit_files": 1}
    calls = {"n": 0}
    original = hub.commit

    def commit_then_break(**kw):
        calls["n"] += 1
        return original(**kw) if calls["n"] == 1 else (500, {"error": "server down"}, {})

    hub.commit = commit_then_break
    with pytest.raises(PublishError, match=r"commit 2/\d+ failed \(HTTP 500\).*re-run `fusegen push`"):
        push(run_dir, hub, **cfg)
    landed = [p for c in hub.commits for p in c]
    assert landed == ["data/train-00000.parquet"]
    hub.commit = original
    report = push(run_dir, hub, **cfg)
    resent = [p for c in hub.commits[1:] for p in c]
    assert "data/train-00000.parquet" not in resent and "data/train-00000.parquet" in report.unchanged
    assert hub.files("me/demo") == local_tree(run_dir)


def test_a_second_push_of_the_same_run_uploads_nothing(run_dir, hub):
    push(run_dir, hub)
    n = len(hub.commits)
    report = push(run_dir, hub)
    assert (report.uploaded, len(hub.commits)) == ([], n)


def test_push_to_a_branch_creates_it_and_leaves_main_alone(run_dir, hub):
    push(run_dir, hub, revision="v1")
    assert hub.files("me/demo", "v1") == local_tree(run_dir)
    assert hub.files("me/demo", "main") == {}


def test_dry_run_lists_the_files_and_sends_no_write(run_dir, hub):
    report = push(run_dir, hub, dry_run=True)
    assert sorted(report.uploaded) == sorted(local_tree(run_dir))
    assert not [p for m, p, _ in hub.requests if m == "POST"]


def test_without_a_token_push_stops_before_any_request(run_dir, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="no Hugging Face token: export HF_TOKEN"):
        push(run_dir, hub)
    assert hub.requests == []


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "refused the token"),
        (403, "no write access"),
        (404, "repo or revision not found"),
        (429, "kept rate-limiting"),
        (500, "kept failing"),
    ],
)
def test_hub_refusals_become_clear_errors(run_dir, hub, status, hint):
    hub.fault("POST", "/api/repos/create", *[Fault(status=status, retry_after="0")] * FAST.max_attempts)
    with pytest.raises(PublishError, match=hint):
        push(run_dir, hub)
    assert hub.commits == []


def test_a_connection_that_keeps_dropping_ends_in_a_clear_error(run_dir, hub):
    hub.fault("POST", "/commit/", *[Fault(drop=True)] * FAST.max_attempts)
    with pytest.raises(
        PublishError, match=r"commit 1/\d+ failed \(RemoteProtocolError\): the Hub kept failing"
    ):
        push(run_dir, hub)


def test_a_wrong_token_is_refused_by_the_hub(run_dir, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(PublishError, match="refused the token"):
        push(run_dir, hub)


def test_push_refuses_a_run_whose_ledger_does_not_balance(run_dir, hub):
    path = run_dir / "02_doc2query" / "_manifest.json"
    m = json.loads(path.read_text())
    m["rows"]["out"] -= 1
    path.write_text(json.dumps(m))
    with pytest.raises(PublishError, match="doc2query ledger does not balance"):
        push(run_dir, hub)
    assert not [p for m_, p, _ in hub.requests if m_ == "POST"]


class _Keep(logging.Handler):
    """Keeps every formatted record of the loggers it is attached to, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logs():
    """Every log line of fusegen, huggingface_hub and the root logger at DEBUG, for the test's length."""
    keep = _Keep()
    loggers = [logging.getLogger(n) for n in ("pipeline", "huggingface_hub", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(keep)
        lg.setLevel(logging.DEBUG)
    yield keep.lines
    for lg, level in zip(loggers, levels):
        lg.removeHandler(keep)
        lg.setLevel(level)


def test_the_token_never_reaches_a_file_the_run_writes_or_the_logs(run_dir, hub, capfd, debug_logs):
    hub.fault("POST", "/commit/", Fault(status=429, retry_after="0"))
    rc = main(["push", str(run_dir), "--repo", "me/demo"])
    out, err = capfd.readouterr()
    assert rc == 0 and "uploaded: README.md" in out
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)
    # The capture works: it holds the retry warning and the client's debug lines.
    assert any("HTTP 429" in line for line in debug_logs) and any(
        "authenticated: True" in line for line in debug_logs
    )
    assert TOKEN not in out + err + "\n".join(debug_logs)
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert not any(TOKEN.encode() in data for data in hub.files("me/demo").values())


def test_commits_stay_under_the_byte_and_file_limits(run_dir):
    build_card(str(run_dir))
    files = local_files(str(run_dir / "export"))
    limit = max(f.size for f in files if f.path_in_repo.startswith("data/"))
    groups = batches(files, limit, 3)
    assert groups[-1][0].path_in_repo == "README.md"
    assert all(len(g) <= 3 and (len(g) == 1 or sum(f.size for f in g) <= limit) for g in groups)
    assert sorted(f.path_in_repo for g in groups for f in g) == sorted(f.path_in_repo for f in files)


def test_loose_images_travel_in_a_few_deterministic_archives(run_dir):
    build_card(str(run_dir))
    images = run_dir / "export" / "images"
    images.mkdir()
    for i in range(30):
        (images / f"{i:03d}.png").write_bytes(bytes([i]) * 1000)
    pack_images(str(run_dir / "export"), archive_bytes=12_000)
    first = {p.name: p.read_bytes() for p in (run_dir / "export" / "_hub").iterdir()}
    pack_images(str(run_dir / "export"), archive_bytes=12_000)
    again = {p.name: p.read_bytes() for p in (run_dir / "export" / "_hub").iterdir()}
    assert first == again and len(first) == 3
    pack_images(str(run_dir / "export"), archive_bytes=40_000)
    assert [p.name for p in (run_dir / "export" / "_hub").iterdir()] == ["images-00000.tar"]
    paths = [f.path_in_repo for f in local_files(str(run_dir / "export"))]
    assert not any(p.startswith("images/") for p in paths) and "_hub/images-00000.tar" in paths


def test_card_command_writes_the_card_and_a_missing_export_exits_2(run_dir, capsys):
    assert main(["card", str(run_dir), "--seed", "3", "--examples", "2"]) == 0
    assert (run_dir / "export" / "README.md").is_file()
    for f in (run_dir / "export" / "data").iterdir():
        f.unlink()
    assert main(["card", str(run_dir)]) == 2
    assert "no export yet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("repo", "token", "message"),
    [
        ("bad name", "hf_x", "is not a Hub repo id"),
        ("me/demo", None, "no Hugging Face token"),
    ],
)
def test_run_with_push_checks_repo_and_token_before_any_work(
    repo, token, message, monkeypatch, tmp_path, capsys
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    rc = main(["run", "configs/does-not-exist.yaml", "--run-dir", str(tmp_path / "run"), "--push", repo])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_card_metadata_the_hub_refuses_stops_the_push_before_the_card_lands(run_dir, hub):
    from pipeline.card import CardConfig

    cfg = PushConfig(
        repo="me/demo", endpoint=hub.endpoint, retry=FAST, card=CardConfig(license="made-up-license")
    )
    with pytest.raises(PublishError, match="(?s)refused the card.s metadata.*made-up-license"):
        push_run(str(run_dir), cfg)
    assert "README.md" not in hub.files("me/demo")


def test_dry_run_without_a_token_lists_every_file_and_sends_nothing(run_dir, hub, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(run_dir), "--repo", "me/demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload: README.md" in out and "(remote not checked: no token)" in out
    assert hub.requests == []


def test_the_push_after_a_run_uploads_the_export_to_the_default_endpoint(run_dir, hub, capsys):
    from pipeline.cli import _push_to

    assert _push_to(str(run_dir), "me/after-run") == 0
    assert hub.files("me/after-run") == local_tree(run_dir)
    assert 'load_dataset("me/after-run")' in hub.files("me/after-run")["README.md"].decode()


def _reshard(export: Path) -> None:
    """What a re-run with another shard size leaves in export/data: the same rows under other names."""
    import pyarrow.parquet as pq

    for part in sorted((export / "data").glob("train-*.parquet")):
        table = pq.read_table(part)
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), export / "data" / f"train-r{part.stem}-a.parquet")
        pq.write_table(table.slice(half), export / "data" / f"train-r{part.stem}-b.parquet")
        part.unlink()


def test_a_changed_re_push_deletes_remote_data_the_export_no_longer_has(run_dir, hub, tmp_path):
    import datasets

    push(run_dir, hub)
    before = set(hub.files("me/demo"))
    _reshard(run_dir / "export")
    report = push(run_dir, hub)
    remote = hub.files("me/demo")
    assert sorted(report.deleted) == sorted(p for p in before if p.startswith("data/train-"))
    assert {p for p in remote if p.startswith("data/")} == {p for p in local_tree(run_dir) if p.startswith("data/")}
    # Deletions ride in the last commit (the card's, when the card changed): never before the new data.
    deleting = [i for i, c in enumerate(hub.commits) if any(p.startswith("-") for p in c)]
    assert deleting == [len(hub.commits) - 1]
    # The remote data loads as exactly the local rows, no old shard beside the new ones.
    mirror = tmp_path / "mirror"
    for path, data in remote.items():
        if path.startswith("data/"):
            (mirror / path).parent.mkdir(parents=True, exist_ok=True)
            (mirror / path).write_bytes(data)
    got = datasets.load_dataset("parquet", data_dir=str(mirror / "data"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    local = datasets.load_dataset("parquet", data_dir=str(run_dir / "export" / "data"), split="train",
                                  cache_dir=str(tmp_path / "hf2"))
    assert sorted(got["id"]) == sorted(local["id"])


def test_dry_run_lists_what_a_re_push_would_delete_and_deletes_nothing(run_dir, hub, capsys):
    push(run_dir, hub)
    before = hub.files("me/demo")
    _reshard(run_dir / "export")
    assert main(["push", str(run_dir), "--repo", "me/demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete: data/train-00000.parquet" in out
    assert hub.files("me/demo") == before


def test_remote_files_outside_the_mirrored_folders_are_left_alone(run_dir, hub):
    push(run_dir, hub)
    hub.repos["me/demo"].branches["main"]["notes/extra.md"] = b"added by the owner"
    report = push(run_dir, hub)
    assert report.deleted == [] and "notes/extra.md" in hub.files("me/demo")
