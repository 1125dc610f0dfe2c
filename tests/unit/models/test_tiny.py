"""pipeline/models/tiny.py: deterministic tiny checkpoints that load through from_pretrained."""

from __future__ import annotations

import json

from pipeline.models.tiny import MARKER, build_tiny_qwen2


def test_same_seed_gives_byte_identical_weights(tiny_cache, tmp_path):
    again = build_tiny_qwen2(tmp_path / "qwen2", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_cache / "tiny" / "qwen2" / "model.safetensors").read_bytes()


def test_checkpoint_loads_through_from_pretrained_with_a_chat_template(tiny_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_cache / "tiny" / "qwen2"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_half_written_folder_without_the_marker_is_rebuilt(tmp_path):
    out = tmp_path / "qwen2"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a crash mid-build used to leave
    build_tiny_qwen2(out)
    assert json.loads((out / MARKER).read_text())["seed"] == 0
    assert (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["qwen2"]  # no temporary folder left behind


def test_gme_same_seed_gives_byte_identical_weights_and_another_seed_does_not(tiny_cache, tmp_path):
    from pipeline.models.tiny import build_tiny_gme

    cached = (tiny_cache / "tiny" / "gme" / "model.safetensors").read_bytes()
    assert (build_tiny_gme(tmp_path / "same", seed=0) / "model.safetensors").read_bytes() == cached
    assert (build_tiny_gme(tmp_path / "other", seed=1) / "model.safetensors").read_bytes() != cached


def test_gme_checkpoint_is_saved_in_the_released_layout(tiny_cache):
    from safetensors import safe_open

    path = tiny_cache / "tiny" / "gme"
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"visual", "model"}
    assert not [k for k in keys if k.startswith(("lm_head", "model.visual.", "model.language_model."))]
    config = json.loads((path / "config.json").read_text())
    # Flat like the released config.json: text settings at the top level, M-RoPE as rope_scaling.
    assert config["hidden_size"] == config["vision_config"]["hidden_size"]
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [4, 6, 6]}
    assert "text_config" not in config
    assert json.loads((path / "preprocessor_config.json").read_text())["max_pixels"] == 16384 * 28 * 28


def test_gme_processor_knows_the_vision_tokens_and_renders_qwen2vl_chat(tiny_cache):
    from transformers import AutoProcessor

    path = tiny_cache / "tiny" / "gme"
    processor = AutoProcessor.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert processor.image_token_id == config["image_token_id"]
    assert processor.tokenizer.convert_tokens_to_ids("<|vision_start|>") == config["vision_start_token_id"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
