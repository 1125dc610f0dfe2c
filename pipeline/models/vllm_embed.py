"""GME embeddings through vLLM: `ray.data.llm`'s vLLM engine processor with `task_type="embed"`.

The GPU counterpart of the transformers `GmeEmbedder` (models/gme.py), with the same recipe: the prompt
is exactly `gme.render_text` of the row's input (instruction, image placeholder, text, the assistant turn
opened and `<|endoftext|>`), images are sized by `gme.resize_for_gme` before the engine sees them, the
pooler takes the last token's hidden state and L2-normalises it (vLLM `pooler_config` LAST with
`use_activation`, set engine-wide), and prompts are cut at `gme.max_length` tokens. Ray's chat-template,
tokenize and detokenize stages are off: vLLM tokenises the prompt string itself, so both backends see the
same tokens. The sized image goes to the engine as a PIL image (`multimodal_data`; through the object
store as the smaller of its pixels and its encoded file, vllm_vision.EngineImage); Ray's
prepare-multimodal stage is off too, so the engine is the processor's only stage.

Positions are GME's: `GmeEmbedder` runs the language model with plain sequential positions, as the
released GME script did, while vLLM's Qwen2-VL applies M-RoPE (3D positions for image tokens, and text
after an image shifted by the image's extent). The engine is started with `hf_overrides=
sequential_positions`, which drops `mrope_section` from the checkpoint's rope parameters: vLLM then
builds the plain rotary embedding and feeds 1D positions 0..n-1 (`ModelConfig.uses_mrope` is false), which
is exactly M-RoPE with the three position rows equal, i.e. what GmeEmbedder computes. No model code is
replaced; the vision tower (its own 2D rotary) is untouched. tests/vllm/test_vllm_embed.py checks parity
with GmeEmbedder per input kind (text, image, fused).

Input columns (names set by `EmbedColumns`): text, optionally title, image and instruction (null: the
candidate default). Output: every input column plus `_embedding` (float32 list of unit length; null for a
reject) and `_embed_error` ("" or one fixed reason): `error:empty_input` (no text, title or image),
`error:image_<kind>` (io/images.decode_image: not a valid image), `resize_for_gme`'s reasons
(`error:image_too_small`, `error:image_aspect_ratio`) -- these send only a one-token stand-in to the engine -- and `error:prompt_too_long` /
`error:inference_failed` for rows the engine failed on, whose message goes into `_embed_detail`.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipeline.errors import PipelineConfigError
from pipeline.models.gme import FACTOR, GmeConfig, GmeImageError, GmeInput, render_text, resize_for_gme
from pipeline.models.llm_config import LLMConfig
from pipeline.models.vllm_backend import (
    CARRY,
    ERROR_TEXT_CHARS,
    check_engine_fits,
    error_kind,
    row_map_kwargs,
    vllm_processor_config,
)
from pipeline.models.vllm_vision import for_engine, image_bytes

EMBEDDING, EMBED_ERROR, EMBED_DETAIL = "_embedding", "_embed_error", "_embed_detail"
EMPTY_INPUT, IMAGE_UNREADABLE = "error:empty_input", "error:image_unreadable"
# vLLM's pooler for GME: the last token's hidden state, normalised (for `embed`, the pooler's
# "activation" is the L2 normalisation). vLLM 0.29 takes it as `pooler_config`; Ray 2.60's own
# `override_pooler_config` conversion targets the older name, which 0.29 no longer accepts.
POOLER = {"pooling_type": "LAST", "use_activation": True}
# Set on rows GME cannot embed: their reason. The processor has no way to let a row bypass the engine
# (and two branches of one lazy plan would run the preparation twice), so such a row sends a one-token
# stand-in prompt and its answer is dropped, as the vllm backend does for rows with nothing to ask.
_SKIP_REASON = "_skip_reason"
STAND_IN = "."


@dataclass(frozen=True)
class EmbedColumns:
    """Where a row's GME input lives; None: the row has no such column."""

    text: str = "text"
    title: str | None = None
    image: str | None = None
    # Per-row instruction (queries); None or a null value: the candidate default instruction.
    instruction: str | None = None


# --- row helpers (run inside Ray Data tasks) -------------------------------------------------------


def row_input(row: dict, columns: EmbedColumns, image: Any = None) -> GmeInput:
    """The GmeInput a row stands for (the image already loaded and sized)."""

    def get(name: str | None) -> Any:
        return row.get(name) if name is not None else None

    return GmeInput(
        text=get(columns.text), title=get(columns.title), image=image, instruction=get(columns.instruction)
    )


def load_row_image(
    value: Any, gme: GmeConfig, load_image: Callable[[Any], bytes | None] | None
) -> tuple[Any, bytes | None, str]:
    """(the sized RGB PIL image, its encoded bytes, "") / (None, None, "") for no image / (None, None,
    reason) for one GME cannot take. A failing read in `load_image` propagates (R35): only bytes that are
    not a valid image are a reason."""
    from pipeline.io.images import ImageError

    if value is None:
        return None, None, ""
    data = load_image(value) if load_image is not None else image_bytes(value)
    if data is None:
        return None, None, ""
    try:
        return gme_image(data, gme.min_image_tokens, gme.max_image_tokens), data, ""
    except ImageError as exc:
        return None, None, f"error:image_{exc.kind}"
    except GmeImageError as exc:
        return None, None, exc.reason


def gme_image(data: bytes, min_tokens: int, max_tokens: int) -> Any:
    """Encoded bytes -> the image GME sees: io/images.decode_image, then `resize_for_gme`.

    Raises:
        ImageError: not a valid image. GmeImageError: one GME cannot take.
    """
    from pipeline.io.images import decode_image

    return resize_for_gme(decode_image(data), min_tokens, max_tokens)


def prompt_max_tokens(gme: GmeConfig, image: Any) -> int:
    """Tokens to cut the prompt at, as vLLM counts them: before the image placeholder is expanded.

    `GmeEmbedder` truncates after expansion (one `<|image_pad|>` becomes one token per 28 x 28 pixels), so
    an image row keeps `max_length - (image tokens - 1)` tokens here; `max_length` leaves room for the
    largest image (GmeConfig), so only text is ever cut.
    """
    if image is None:
        return gme.max_length
    return gme.max_length - (image.width * image.height // FACTOR**2 - 1)


def embed_request(row: dict, columns: EmbedColumns, gme: GmeConfig, load_image: Callable | None) -> dict:
    """The processor's input row: the GME prompt string (and image) or the reason it has none."""
    carry = dict(row)
    image, data, reason = load_row_image(row.get(columns.image) if columns.image else None, gme, load_image)
    inp = row_input(row, columns, image)
    if not reason and image is None and not (inp.text or "").strip() and not (inp.title or "").strip():
        reason = EMPTY_INPUT
    request = {
        "prompt": render_text(inp) if not reason else STAND_IN,
        "tokenization_kwargs": {
            "truncation": True,
            "max_length": prompt_max_tokens(gme, image),
            "truncation_side": "right",
        },
        CARRY: pickle.dumps(carry),
        _SKIP_REASON: reason,
    }
    if columns.image is not None:
        # The sized image goes to the engine (vLLM takes PIL images as `multi_modal_data`) as the smaller of
        # its pixels and its file (vllm_vision.for_engine): no data URL, no prepare-multimodal stage.
        request["multimodal_data"] = (
            {"image": for_engine(image, data, gme_image, gme.min_image_tokens, gme.max_image_tokens)}
            if image is not None
            else None
        )
    return request


def unit_vector(values: Any) -> list[float]:
    """float32, L2-normalised again (the engine's vector may be bf16-rounded or unnormalised)."""
    vec = np.asarray(values, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"embedding has norm {norm}")
    return (vec / norm).astype(np.float32).tolist()


def embed_postprocess_row(row: dict) -> dict:
    """A processor success row -> the carried columns, the skip reason and the embedding (error rows
    bypass this)."""
    return {CARRY: row[CARRY], _SKIP_REASON: row.get(_SKIP_REASON, ""), "embeddings": row.get("embeddings")}


def embed_restore_row(row: dict) -> dict:
    """The input row back, plus `_embedding`, `_embed_error` and `_embed_detail`."""
    out = pickle.loads(row[CARRY])
    vector, reason, detail = None, str(row.get(_SKIP_REASON) or ""), ""
    message = str(row.get("__inference_error__") or "")
    if reason:
        pass  # the stand-in's answer (or error) is dropped
    elif message:
        reason, detail = error_kind(message), message[:ERROR_TEXT_CHARS]
    else:
        try:
            vector = unit_vector(row.get("embeddings"))
        except (TypeError, ValueError) as exc:
            reason, detail = error_kind(str(exc)), f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_CHARS]
    out[EMBEDDING], out[EMBED_ERROR], out[EMBED_DETAIL] = vector, reason, detail
    return out


def typed_batch(table: Any) -> Any:
    """`_embedding` as list<float32> (rows came back as Python floats, or all null in a reject block)."""
    import pyarrow as pa

    from pipeline.columns import set_column

    return set_column(table, EMBEDDING, table[EMBEDDING].cast(pa.list_(pa.float32())))


# --- processor config ----------------------------------------------------------------------------


def sequential_positions(config: Any) -> Any:
    """vLLM `hf_overrides` for GME: the HF config without M-RoPE (see the module docstring).

    vLLM calls it on the loaded config in the engine's process; it must be a module-level function so
    the engine arguments pickle by reference. A config without `mrope_section` (a text model) is
    returned as is.
    """
    for part in (config, config.get_text_config()):
        params = getattr(part, "rope_parameters", None)
        if not isinstance(params, dict) or "mrope_section" not in params:
            continue
        plain = {k: v for k, v in params.items() if k not in ("mrope_section", "mrope_interleaved")}
        if plain.get("rope_type") == "mrope":  # the released configs' legacy name for default + sections
            plain["rope_type"] = "default"
        part.rope_parameters = plain
    return config



def check_lengths(cfg: LLMConfig, gme: GmeConfig, stage: str) -> None:
    """Every GME prompt, cut at `gme.max_length`, must fit the engine (vLLM refuses the cut otherwise).

    Raises:
        PipelineConfigError: `max_model_len` is below `gme.max_length`.
    """
    if cfg.max_model_len < gme.max_length:
        raise PipelineConfigError(
            f"{stage}: `llm.max_model_len` must be >= `gme.max_length` (got {cfg.max_model_len} < "
            f"{gme.max_length}); raise max_model_len or lower max_length in the stage's config"
        )


def embed_processor_config(cfg: LLMConfig, model_path: str, resources: Any) -> Any:
    """The `ray.data.llm` config for embeddings (no engine starts here): the vllm backend's engine,
    bundles and CPU settings, `task_type="embed"` with GME's pooler, the prompt and images taken as
    given (the engine is the processor's only stage)."""
    return vllm_processor_config(
        # No JSON grammar: nothing is generated.
        dataclasses.replace(cfg, guided=False),
        model_path,
        resources,
        task_type="embed",
        engine_kwargs={"pooler_config": dict(POOLER), "hf_overrides": sequential_positions},
        prepare_multimodal_stage={"enabled": False},
        chat_template_stage={"enabled": False},
        tokenize_stage={"enabled": False},
        detokenize_stage={"enabled": False},
    )


def vllm_embed(
    ds: Any,
    cfg: LLMConfig,
    model_path: str,
    gme: GmeConfig,
    resources: Any,
    stage: str,
    columns: EmbedColumns = EmbedColumns(),
    load_image: Callable[[Any], bytes | None] | None = None,
) -> Any:
    """Add `_embedding` / `_embed_error` / `_embed_detail` to every row of `ds` through vLLM (lazily).

    Args:
        cfg: the engine settings (the vllm backend's fields of LLMConfig: device, dtype, max_model_len,
            memory share ...); generation fields are unused. `max_model_len` must hold `gme.max_length`.
        gme: the GME recipe (instructions are per row; `max_length` and the image token bounds are used).
        columns: which columns hold the text, title, image and instruction.
        load_image: resolves an image-column value (a reference into the run's image store) to encoded
            bytes in the worker; None reads HF image structs or raw bytes.

    Raises:
        PipelineConfigError: `cfg.max_model_len` is below `gme.max_length`, or no node can hold the engine.
    """
    from ray.data.llm import build_processor

    check_lengths(cfg, gme, stage)
    check_engine_fits(cfg, resources, stage)
    light = row_map_kwargs(resources)
    prepared = ds.map(partial(embed_request, columns=columns, gme=gme, load_image=load_image), **light)
    processor = build_processor(
        embed_processor_config(cfg, model_path, resources),
        preprocess=None,  # the rows are already requests (only their columns: no second copy of the row)
        postprocess=embed_postprocess_row,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    embedded = processor(prepared).map(embed_restore_row, **light)
    return embedded.map_batches(typed_batch, batch_format="pyarrow", **light)
