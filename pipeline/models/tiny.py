"""Offline tiny-model factory: seeded random checkpoints saved and reloaded through `from_pretrained`.

Model hubs are unreachable on CI and on a laptop demo, so tests and the demo build tiny models here.
Each builder writes a real checkpoint directory (config, weights, tokenizer) that the backends load
with the same `from_pretrained` code they use for real models. Builders are deterministic: the same
seed gives byte-identical weights, so fingerprints and outputs are reproducible.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

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
    out = Path(out_dir)
    if _complete(out):
        return out  # before importing torch: a no-op re-run should not pay for it
    with _building(out) as tmp:
        _write_tiny_qwen2(tmp, seed, vocab_size)
    log.info("built tiny Qwen2 in %s", out)
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


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip model (32-pixel ViT, 1-layer text tower, 32-d embeddings) that
    `open_clip.create_model_and_transforms("local-dir:<out_dir>")` loads. It keeps open_clip's real
    tokenizer (the BPE vocabulary ships inside the open_clip package)."""
    out = Path(out_dir)
    if _complete(out):
        return out
    with _building(out) as tmp:
        _write_tiny_clip(tmp, seed)
    log.info("built tiny CLIP in %s", out)
    return out


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
    out = Path(out_dir)
    if _complete(out):
        return out
    with _building(out) as tmp:
        _write_tiny_diffusion(tmp, seed)
    log.info("built tiny diffusion pipeline in %s", out)
    return out


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


TINY_BUILDERS = {"qwen2": build_tiny_qwen2, "clip": build_tiny_clip, "diffusion": build_tiny_diffusion}


def build_all(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build every tiny model under `root/<name>`; existing checkpoints are reused."""
    root = Path(root)
    return {name: fn(root / name, seed=seed) for name, fn in TINY_BUILDERS.items()}
