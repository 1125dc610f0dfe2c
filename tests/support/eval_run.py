"""A finished GME run where the right answer is known, for `fusegen eval` tests (real export, no Ray).

Each key doc's passage is its two key words, then a sentence about cooking; each of its queries is the
same two key words inside a long sentence about the sea. Distractor docs are sea sentences with no key
words; every query's hard negatives are distractors and other key docs. A text model that reads topic
(all-MiniLM-L6-v2) ranks the sea distractors above the passage, untuned; a model trained on these
rows with the distractors as negatives learns to match key words and ignore the sea, and that carries to
held-out docs with other key words. `shuffle_train=True` gives the train split's queries another row's
key words (labels that teach nothing), leaving the validation split as it was.
"""

from __future__ import annotations

import glob
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from tests.support.export_run import png, typed_table
from tests.support.gme_run import make_gme_run

ANIMALS = ["giraffe", "penguin", "tiger", "rabbit", "falcon", "dolphin", "camel", "beaver", "owl", "zebra",
           "otter", "parrot", "wolf", "koala", "lizard", "moose", "panda", "hedgehog", "badger", "squirrel"]
THINGS = ["violin", "bicycle", "lantern", "hammer", "telescope", "umbrella", "kettle", "compass", "piano", "ladder",
          "candle", "scissors", "helmet", "anchor", "trumpet", "wallet", "mirror", "blanket", "pencil", "clock"]
SEA = ["The ocean waves crash against the rocky shore while the tide rises under a grey stormy sky",
       "Sailors watch the sea swell and the salty wind push the fishing boats toward the harbour",
       "Deep ocean currents carry cold water along the coast where seagulls circle the surf",
       "A storm over the open sea whips the waves into foam as the lighthouse beam sweeps the water"]
COOKING = ["Simmer the onions in butter, add flour and stir the sauce until it thickens",
           "Knead the dough, let it rise for an hour, then bake the bread in a hot oven",
           "Chop the garlic, fry it gently in olive oil and season the soup with pepper"]


def keyword_upstream(store: ImageStore, docs: range = range(40), queries: int = 2, distractors: int = 24,
                     negatives: int = 4, seed: int = 0, image: bytes | None = None) -> pa.Table:
    """`docs`: the key docs' numbers (their key words follow from the number); `image`: the PNG every
    row shows (a flat colour by default)."""
    rng = random.Random(seed)
    image = store.put(image or png((120, 60, 30), (24, 16)), "png", 24, 16)
    keys = {d: (ANIMALS[d % 20], THINGS[(d * 7 + d // 20) % 20]) for d in docs}
    passages = {f"k{d}": f"{a} and {t}. {COOKING[d % len(COOKING)]}." for d, (a, t) in keys.items()}
    passages.update({f"x{j}": f"{SEA[j % len(SEA)]}, {SEA[(j + 1) % len(SEA)].lower()} ({j})."
                     for j in range(distractors)})
    rows = []
    numbers = list(docs)
    for d, (a, t) in keys.items():
        for i in range(queries):
            sea = SEA[(d + i) % len(SEA)]
            others = [f"k{rng.choice([n for n in numbers if n != d])}"]
            negs = rng.sample([f"x{j}" for j in range(distractors)], negatives - 1) + others
            rows.append({
                "id": f"k{d}-q{i}", "doc_id": f"k{d}", "text": passages[f"k{d}"], "title": "",
                "domain": "test", "image": image, "content_hash": f"h{d}",
                "query": f"{sea} near the {a} with the {t}?", "answer": "-",
                "rewritten_query": f"{sea} near the {a} with the {t}?", "entity": a, "entity_type": "thing",
                "consistency_rank": 1, "consistency_score": 0.5, "query_image": image,
                "image_source": ("doc", "retrieved", "generated")[(d + i) % 3], "image_origin": "store",
                "image_license": "cc0-1.0", "clip_score": 0.3, "instruction": None, "gme_pos_score": 0.6,
                "gme_pos_rank": 1, "neg_ids": negs, "neg_doc_ids": negs, "neg_texts": [passages[n] for n in negs],
                "neg_titles": [""] * negatives, "neg_images": [image] * negatives,
                "neg_scores": [0.5] * negatives, "neg_ranks": list(range(1, negatives + 1)),
                "num_negatives": negatives, "llm_raw": "{}", "entities_raw": "{}",
            })
    types = {"image": IMAGE_REF, "query_image": IMAGE_REF, "neg_images": pa.list_(IMAGE_REF),
             "consistency_rank": pa.int32(), "clip_score": pa.float32(), "gme_pos_score": pa.float32(),
             "neg_scores": pa.list_(pa.float32()), "neg_ranks": pa.list_(pa.int32()), "instruction": pa.string()}
    return typed_table(rows, types)


def make_keyword_run(root: Path, docs: int | range = 40, shuffle_train: bool = False, validation_ratio: float = 0.3,
                     image: bytes | None = None) -> Path:
    run = root / "run"
    table = keyword_upstream(ImageStore(RunFS.from_uri(str(run))), range(docs) if isinstance(docs, int) else docs,
                             image=image)
    make_gme_run(root, validation_ratio=validation_ratio, task="it2t", upstream=table)
    if shuffle_train:
        for path in glob.glob(str(run / "export" / "data" / "train-*.parquet")):
            part = pq.read_table(path)
            texts = part["query_text"].to_pylist()
            random.Random(1).shuffle(texts)
            i = part.schema.get_field_index("query_text")
            pq.write_table(part.set_column(i, part.schema.field(i), pa.array(texts, pa.string())), path)
    return run
