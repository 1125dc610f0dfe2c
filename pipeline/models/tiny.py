"""Offline tiny-model factory: seeded random checkpoints saved and reloaded through `from_pretrained`.

Model hubs are unreachable on CI and on a laptop demo, so tests and the demo build tiny models here.
Each builder writes a real checkpoint directory (config, weights, tokenizer) that the backends load
with the same `from_pretrained` code they use for real models. Builders are deterministic: the same
seed gives byte-identical weights, so fingerprints and outputs are reproducible.

- `qwen2`: a causal LM with a ChatML tokenizer (the LLM backends).
- `gme`: a Qwen2-VL saved the way the released gme-Qwen2-VL checkpoints are (flat config.json,
  top-level `visual.*` / `model.*` weights, no LM head) plus its processor, so the GME embedder's
  load path (transformers converting the old layout) runs on every test machine.
- `qwen2_vl`: a Qwen2-VL generator (tied LM head, PIL image processor with small pixel bounds) for
  the VLM describe path (`AutoModelForImageTextToText` + `AutoProcessor`).
- `dinov2`: a 2-layer DINOv2 with the released checkpoints' image processor settings (the MegaPairs
  `dino` view), loaded by `AutoModel` / `AutoImageProcessor`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.logging import get_logger

log = get_logger(__name__)

# Written last into a finished checkpoint folder.
MARKER = "fusegen_tiny.json"

# ChatML, the template Qwen2 models ship; kept here (not in prompts/) because it belongs to the model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2-VL's vision markers, in the order (and so with the relative ids) the real tokenizer has them.
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat template, images and text only: a content list puts an image placeholder where an
# image item is; the processor expands each placeholder to the image's token count.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The generator's template: like the real Qwen2-VL one, it also takes OpenAI-style `image_url` parts (what
# ray.data.llm's chat-template stage passes on) and `image_pil` parts.
QWEN2VL_GEN_TEMPLATE = QWEN2VL_CHAT_TEMPLATE.replace(
    "item['type'] == 'image'", "item['type'] in ('image', 'image_url', 'image_pil')"
)

# Qwen2-VL-Instruct's preprocessor_config.json (CLIP normalisation, 4..16384 image tokens of 28 x 28 pixels).
QWEN2VL_PREPROCESSOR = {
    "min_pixels": 4 * 28 * 28,
    "max_pixels": 16384 * 28 * 28,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

# Training text for the byte-level BPE: enough English and JSON shapes that encodings are short.
_TOKENIZER_CORPUS = [
    '{"pairs": [{"query": "What is the name of this bridge?", "answer": "It is the Golden Gate."}]}',
    '{"entity": "Eiffel Tower", "entity_type": "tower", "query": "When was this tower built?"}',
    "The quick brown fox jumps over the lazy dog. A passage about history, science, art and music.",
    "Who painted this painting? Where is this city located? When did this composer write the symphony?",
    "You are a helpful assistant. Write questions that the passage answers. Return JSON only.",
    "der die das und ist ein eine von zu mit auf für 的 是 在 一 了 和 中国 城市 历史",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_qwen2(out_dir: str | Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """Write a 2-layer random Qwen2 (head_dim 64, which vLLM kernels accept) causal LM with a ChatML tokenizer to `out_dir`.

    Returns the directory, which `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` load as they would a hub checkpoint.
    """
    return _build_once(out_dir, "Qwen2", _write_tiny_qwen2, seed, vocab_size)


def _build_once(out_dir: str | Path, what: str, write: Callable[..., None], *args: Any) -> Path:
    """`out_dir`, after `write(folder, *args)` built the model there unless a complete build already is."""
    out = Path(out_dir)
    if _complete(out):
        return out  # before importing torch: a no-op re-run should not pay for it
    with _building(out) as tmp:
        write(tmp, *args)
    log.info("built tiny %s in %s", what, out)
    return out


def _complete(out: Path) -> bool:
    return (out / MARKER).exists()


@contextlib.contextmanager
def _building(out: Path):
    """Build in a temporary sibling folder and rename it into place: a crash or a concurrent builder
    never leaves a half-written checkpoint that the next run would take for a finished one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists() and not _complete(out):
            shutil.rmtree(out)  # a checkpoint left half-written by an older version
        try:
            os.rename(tmp, out)
        except OSError:
            if not _complete(out):  # another process won the race with a complete build: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tiny_qwen2(out: Path, seed: int, vocab_size: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    tok = _train_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"kind": "qwen2-causal-lm", "seed": seed}))


def build_tiny_gme(out_dir: str | Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """Write a random 2-layer Qwen2-VL (1 vision block) in the released gme-Qwen2-VL layout to `out_dir`.

    The folder holds what the real checkpoint does: a flat Qwen2-VL `config.json` (text settings at the
    top level, `rope_scaling` of type mrope), `model.safetensors` with top-level `visual.*` and
    `model.*` keys and no `lm_head`, the tokenizer with its chat template, and a Qwen2-VL
    `preprocessor_config.json`, from which `AutoProcessor` builds a `Qwen2VLProcessor`.
    """
    return _build_once(out_dir, "GME (Qwen2-VL)", _write_tiny_gme, seed, vocab_size)


def released_gme_key(key: str) -> str | None:
    """Map a current transformers Qwen2-VL weight name to the released GME layout (None: not saved)."""
    if key.startswith("model.visual."):
        return "visual." + key.removeprefix("model.visual.")
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("lm_head."):
        return None  # GME ships no LM head: it embeds, it never decodes
    raise ValueError(f"unexpected Qwen2-VL weight {key!r}")


def _write_tiny_gme(out: Path, seed: int, vocab_size: int) -> None:
    import torch
    from safetensors.torch import save_file
    from tokenizers import AddedToken
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    tok = _train_tokenizer(vocab_size)
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS], special_tokens=True
    )
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    # Left, so an embedder that forgets the GME recipe's right padding fails its batch tests; an init kwarg
    # is what save_pretrained writes to tokenizer_config.json.
    tok.padding_side = tok.init_kwargs["padding_side"] = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    head_dim = 32
    # Flat, as the released config.json (transformers 4.4x era) is: current transformers nests it on load.
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "vocab_size": len(tok),
        "hidden_size": 2 * head_dim,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        # Temporal/height/width sections of the rotary half-dimension, as [16, 24, 24] is for head_dim 128.
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 2,
        # As gme-Qwen2-VL-7B: an untied LM head, absent from the checkpoint, reported missing on load.
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "torch_dtype": "float32",
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": 2 * head_dim,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_pretrained(out))
    weights = {}
    for key, tensor in model.state_dict().items():
        if (name := released_gme_key(key)) is not None:
            weights[name] = tensor.contiguous()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(out)
    # Written as the released checkpoint has it, not through Qwen2VLProcessor.save_pretrained: that needs
    # torchvision (for the video processor), which the vLLM test venv, building every tiny model, lacks.
    (out / "preprocessor_config.json").write_text(json.dumps(QWEN2VL_PREPROCESSOR, indent=2))
    (out / MARKER).write_text(json.dumps({"kind": "gme-qwen2-vl", "layout": "released", "seed": seed}))


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """Write a random 2-layer Qwen2-VL generator (head_dim 64, which vLLM kernels accept; 2 vision blocks;
    tied LM head) with its processor to `out_dir`: `AutoModelForImageTextToText` / `AutoProcessor` and
    vLLM load it as a Qwen2-VL-Instruct checkpoint. Images are bounded to 4..16 image tokens so a prompt
    with two images stays short."""
    return _build_once(out_dir, "Qwen2-VL", _write_tiny_qwen2_vl, seed, vocab_size)


def _write_tiny_qwen2_vl(out: Path, seed: int, vocab_size: int) -> None:
    import torch
    from tokenizers import AddedToken
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    tok = _train_tokenizer(vocab_size)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS], special_tokens=True)
    tok.chat_template = QWEN2VL_GEN_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
            "eos_token_id": eos, "pad_token_id": pad, "bos_token_id": None,
        },
        vision_config={
            "depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.eos_token_id, config.pad_token_id = eos, pad
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # The PIL image processor (no torchvision needed), written as a released preprocessor_config.json.
    pre = {**QWEN2VL_PREPROCESSOR, "min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28,
           "image_processor_type": "Qwen2VLImageProcessorPil"}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    (out / "chat_template.jinja").write_text(QWEN2VL_GEN_TEMPLATE)
    (out / MARKER).write_text(json.dumps({"kind": "qwen2-vl-generator", "seed": seed}))


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip model (32-pixel ViT, 1-layer text tower, 32-d embeddings) that
    `open_clip.create_model_and_transforms("local-dir:<out_dir>")` loads. It keeps open_clip's real
    tokenizer (the BPE vocabulary ships inside the open_clip package)."""
    return _build_once(out_dir, "CLIP", _write_tiny_clip, seed)


_TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _write_tiny_clip(out: Path, seed: int) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**_TINY_CLIP_CFG)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": _TINY_CLIP_CFG, "preprocess_cfg": preprocess}))
    (out / MARKER).write_text(json.dumps({"kind": "open-clip", "seed": seed}))


def build_tiny_diffusion(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion pipeline (UNet, VAE, CLIP text encoder, DDIM) that
    `diffusers.DiffusionPipeline.from_pretrained` loads; it draws 64x64 images by default."""
    return _build_once(out_dir, "diffusion pipeline", _write_tiny_diffusion, seed)


def _write_tiny_diffusion(out: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    tok = _train_tokenizer(600)
    tok.model_max_length = 77
    tok.chat_template = None
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=0,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"kind": "stable-diffusion", "seed": seed}))


def build_tiny_dinov2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random DINOv2 (28-pixel crops of 7-pixel patches, 2 layers, 32-d) with a
    `BitImageProcessor` config as facebook/dinov2-* ship it, for `AutoModel.from_pretrained`."""
    return _build_once(out_dir, "DINOv2", _write_tiny_dinov2, seed)


# facebook/dinov2-base's preprocessor_config.json at a tiny size (resize 32, crop 28).
_TINY_DINOV2_PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True, "size": {"shortest_edge": 32}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 28, "width": 28},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
}


def _write_tiny_dinov2(out: Path, seed: int) -> None:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=28, patch_size=7)
    Dinov2Model(config).save_pretrained(out)
    # Written as the released checkpoints have it: saving a processor object may need torchvision.
    (out / "preprocessor_config.json").write_text(json.dumps(_TINY_DINOV2_PREPROCESSOR, indent=2))
    (out / MARKER).write_text(json.dumps({"kind": "dinov2", "seed": seed}))


TINY_BUILDERS = {
    "qwen2": build_tiny_qwen2, "gme": build_tiny_gme, "qwen2_vl": build_tiny_qwen2_vl, "clip": build_tiny_clip,
    "diffusion": build_tiny_diffusion, "dinov2": build_tiny_dinov2,
}


# The package a builder needs beyond torch and transformers (the vLLM test venv has neither).
REQUIRES = {"clip": "open_clip", "diffusion": "diffusers"}


def build_all(root: str | Path, seed: int = 0, skip_unavailable: bool = False) -> dict[str, Path]:
    """Build every tiny model under `root/<name>`; existing checkpoints are reused. With
    `skip_unavailable`, models whose library is not installed are left out instead of failing."""
    import importlib.util

    root = Path(root)
    out = {}
    for name, fn in TINY_BUILDERS.items():
        if skip_unavailable and name in REQUIRES and importlib.util.find_spec(REQUIRES[name]) is None:
            log.info("tiny %s skipped: %s is not installed", name, REQUIRES[name])
            continue
        out[name] = fn(root / name, seed=seed)
    return out
