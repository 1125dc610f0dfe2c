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
