"""A tiny random Qwen2-VL checkpoint for the vLLM multimodal tests (seeded, built locally, loaded by
vLLM and transformers through `from_pretrained`).

Two layers of text (hidden 128, head_dim 64, M-RoPE sections 8/12/12) and two of vision (embed 64,
patch 14, 2x2 merge), a byte-level BPE with Qwen2-VL's special tokens, the PIL image processor with
small pixel bounds, and a ChatML template that, like Qwen2-VL's,
writes `<|vision_start|><|image_pad|><|vision_end|>` for an image part. Lives with the tests until
pipeline/models/tiny.py gets a Qwen2-VL builder (the GME issue).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url', 'image_pil') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is shown in this picture? A red square on a white page. Describe the image in one sentence.",
    '{"caption": "a small red square", "colour": "red"} You are a helpful assistant.',
    "The quick brown fox jumps over the lazy dog. Photos of bridges, towers, paintings and cities.",
]
# 28 = patch 14 x merge 2: images are resized to multiples of it, between these pixel bounds.
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16


def torchvision_error() -> str:
    """Why vLLM cannot run Qwen2-VL here ("" when it can): the skip reason of the Qwen2-VL tests."""
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means vLLM cannot import its Qwen2-VL model
        return (
            f"vLLM's Qwen2-VL model needs torchvision, which does not load here: "
            f"{type(exc).__name__}: {exc}. "
            "scripts/install_vllm.sh installs PyPI's torchvision==0.28.0 beside PyPI's default torch==2.13.0 "
            "(rerun it; its log says what failed)"
        )
    return ""


def build_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    out = Path(out)
    if (out / "fusegen_tiny.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:],
    )
    fast.chat_template = TEMPLATE
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(fast),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 128,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.eos_token_id, config.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    images = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    images.save_pretrained(out)
    # AutoProcessor reads the processor class and its chat template from here.
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    (out / "chat_template.jinja").write_text(TEMPLATE)
    (out / "fusegen_tiny.json").write_text(json.dumps({"kind": "qwen2-vl", "seed": seed}))
    return out


def cpu_engine(**overrides):
    """The vLLM engine settings the tiny models run with on the CPU build (the tests' shared base)."""
    from pipeline.models.llm import LLMConfig

    base = {"backend": "vllm", "vllm_device": "cpu", "gpu_memory_utilization": 0.05, "enforce_eager": True,
            "dtype": "float32", "schedule_grace_s": 0}
    return LLMConfig(**{**base, **overrides})
