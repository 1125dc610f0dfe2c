"""A test track with one vision stage on the vLLM backend (tests/vllm/test_vllm_vision_resume.py): `ingest`
then `look`, which draws a small PNG per passage (its colour from the passage's hash), asks the VLM what
it shows through `ray.data.llm` (models/vllm_vision.vllm_vision_generate, the image column path) and keeps
the raw answer. Passages holding "NOIMAGE" get no image: rejects with `error:image_missing`.

Registered on import; the CLI is started through `ENTRY`, which imports this module first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.columns import set_status
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.scheduling import Phase
from pipeline.stage import Resources, Stage, StageConfig, glue_map
from pipeline.stages.ingest import Ingest
from pipeline.tracks import register_track

TRACK = "test-vision"
ENTRY = ["-c", "import sys, tests.support.vision_track; from pipeline.cli import main; sys.exit(main())"]
IMAGE = "_image"


@dataclass(frozen=True)
class LookConfig(StageConfig):
    vlm: LLMConfig = dataclasses.field(default_factory=lambda: LLMConfig(backend="vllm", model="tiny:qwen2_vl"))
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=2, batch_size=4))


def _png(text: str) -> bytes:
    from PIL import Image

    colour = tuple(hashlib.sha256(text.encode()).digest()[:3])
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buf, format="PNG")
    return buf.getvalue()


def ask_block(table: pa.Table) -> pa.Table:
    """`_messages` (one question) and `_image` (PNG bytes; null for a "NOIMAGE" passage) per row."""
    texts = table["text"].to_pylist()
    messages = [json.dumps([{"role": "user", "content": f"What colour is this? {t[:40]}"}]) for t in texts]
    images = [None if "NOIMAGE" in t else _png(t) for t in texts]
    return table.append_column(MESSAGES, pa.array(messages, pa.string())).append_column(
        IMAGE, pa.array(images, pa.binary()))


def decide_block(table: pa.Table) -> pa.Table:
    """`answer` = the raw text; a row the engine did not answer is a reject with its reason."""
    errors, raws = table[LLM_ERROR].to_pylist(), table[RAW].to_pylist()
    kept = [e in ("", "error:truncated_output") for e in errors]
    out = table.drop_columns([c for c in (MESSAGES, IMAGE, RAW, LLM_ERROR) if c in table.column_names])
    out = out.append_column("answer", pa.array([r if k else None for r, k in zip(raws, kept)], pa.string()))
    return set_status(out, ["ok" if k else "rejected" for k in kept], ["" if k else e for k, e in zip(kept, errors)])


class Look(Stage):
    name: ClassVar[str] = "look"
    config_cls: ClassVar[type] = LookConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "text")
    output_columns: ClassVar[tuple[str, ...]] = ("answer",)

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        self.model_path, self.model_id = resolve_model(self.config.vlm.model, self.context.cache_dir)

    def models(self) -> dict[str, str]:
        return {"vlm": self.model_id}

    def schedule(self) -> tuple[Phase, ...]:
        from pipeline.models.llm import llm_pools

        cfg = self.config
        return (Phase(self.name, llm_pools(cfg.vlm, cfg.resources, self.name, f"{self.name}.vlm", multimodal=True)),)

    def apply(self, ds: Any) -> Any:
        from pipeline.models.vllm_vision import vllm_vision_generate

        cfg = self.config
        ds = glue_map(ds, ask_block)
        ds = vllm_vision_generate(ds, cfg.vlm, self.model_path, None, cfg.resources, self.name, image_column=IMAGE)
        return glue_map(ds, decide_block)


register_track(TRACK, (("ingest", Ingest), ("look", Look)))
