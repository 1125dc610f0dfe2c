"""Build the sample image pool the demo retrieves from: samples/pool/{pool.jsonl, images/, README.md}.

Small CC0 drawings (a coloured scene and a label) with an English caption each, for entities of the
sample corpus that have no image of their own, plus distractors and two broken rows (a truncated PNG,
a missing file) that the pool index must reject with a reason. Deterministic: rerun to rebuild.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from samples.sample_images import _font, _vgradient

HERE = Path(__file__).resolve().parent / "pool"
LICENSE = "CC0-1.0"
# (file stem, caption, sky colour, ground colour, shape colour, shape)
ITEMS = [
    ("blue_whale", "a blue whale swimming in the deep ocean", (20, 60, 140), (10, 30, 80), (70, 110, 170), "ellipse"),
    ("great_wall", "the Great Wall of China winding over green mountains", (150, 190, 230), (80, 130, 70), (150, 140, 120), "wall"),
    ("self_portrait", "a painted self-portrait of a woman with flowers in her hair", (200, 170, 120), (120, 60, 40), (180, 60, 60), "face"),
    ("mona_lisa", "the Mona Lisa portrait painting in a museum", (120, 110, 70), (60, 50, 30), (160, 130, 90), "face"),
    ("axolotl", "a pink axolotl salamander in an aquarium", (120, 190, 200), (60, 120, 110), (240, 160, 180), "ellipse"),
    ("tardigrade", "a microscopic tardigrade water bear under a microscope", (210, 220, 200), (150, 170, 140), (120, 120, 100), "ellipse"),
    ("terracotta_army", "rows of terracotta warrior statues in a pit", (190, 160, 120), (140, 100, 70), (170, 110, 80), "rows"),
    ("space_telescope", "a space telescope orbiting above the Earth", (5, 5, 30), (20, 60, 140), (200, 200, 210), "box"),
    ("rosetta_stone", "a dark granodiorite stone slab carved with inscriptions", (200, 190, 170), (150, 140, 120), (50, 50, 55), "box"),
    ("penicillin_dish", "a petri dish with mould growing in a laboratory", (230, 235, 240), (190, 200, 210), (120, 170, 90), "ellipse"),
    ("machu_picchu", "ancient stone ruins on a mountain ridge in Peru", (160, 200, 240), (70, 120, 60), (150, 150, 140), "rows"),
    ("cyclists", "a pack of road cyclists racing in a mountain stage", (150, 200, 240), (110, 110, 110), (230, 200, 40), "rows"),
    ("football_player", "a football player kicking a ball in a stadium", (120, 170, 230), (40, 140, 50), (250, 250, 250), "ellipse"),
    ("paella", "a large pan of paella with rice, seafood and saffron", (240, 230, 210), (180, 150, 110), (230, 170, 40), "ellipse"),
    ("pizza", "a pizza margherita with tomato, mozzarella and basil", (240, 230, 210), (150, 100, 60), (220, 60, 40), "ellipse"),
    ("roast_duck", "a roast duck with crispy skin sliced on a plate", (240, 230, 210), (160, 120, 90), (170, 80, 30), "ellipse"),
    ("early_computer", "an early room-sized computer with panels of vacuum tubes", (200, 200, 200), (120, 120, 120), (60, 60, 70), "box"),
    ("cipher_machine", "a cipher machine with rotors and a keyboard in a wooden box", (200, 180, 150), (110, 80, 50), (40, 40, 40), "box"),
    ("knight_windmill", "a knight on horseback charging at a windmill", (170, 200, 230), (160, 150, 90), (120, 90, 60), "wall"),
    ("robot_film", "a silent film robot woman in a futuristic city", (60, 60, 60), (30, 30, 30), (190, 170, 100), "face"),
    ("bullet_train", "a white high-speed bullet train passing Mount Fuji", (160, 200, 240), (90, 120, 90), (245, 245, 245), "box"),
    ("scientist_lab", "a scientist working with glassware in a laboratory", (220, 220, 210), (150, 150, 140), (90, 120, 160), "face"),
    ("rainforest_river", "a wide brown river winding through the rainforest", (150, 200, 230), (40, 110, 50), (150, 110, 60), "wall"),
    ("ringed_planet", "a ringed gas giant planet in space", (5, 5, 25), (10, 10, 40), (220, 190, 130), "ellipse"),
    ("red_bus", "a red double-decker bus on a city street", (170, 200, 230), (110, 110, 110), (210, 30, 30), "box"),
    ("sunflowers", "a field of yellow sunflowers under a blue sky", (90, 150, 230), (70, 130, 50), (250, 210, 30), "rows"),
]


def draw(sky, ground, colour, shape, label) -> Image.Image:
    w, h = 96, 72
    im = Image.fromarray(_vgradient(w, h, sky, tuple(int(c * 0.8) for c in sky)), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 54, w, h], fill=ground)
    if shape == "ellipse":
        d.ellipse([24, 20, 72, 52], fill=colour)
    elif shape == "wall":
        d.polygon([(0, 50), (30, 30), (60, 40), (96, 22), (96, 30), (60, 48), (30, 38), (0, 58)], fill=colour)
    elif shape == "face":
        d.ellipse([34, 12, 62, 44], fill=colour)
        d.rectangle([30, 44, 66, 70], fill=colour)
    elif shape == "rows":
        for x in range(6, 90, 14):
            d.rectangle([x, 34, x + 8, 54], fill=colour)
    else:
        d.rectangle([20, 26, 76, 54], fill=colour)
    d.text((3, 2), label[:16], fill=(255, 255, 255), font=_font(9))
    return im


def main() -> None:
    images = HERE / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for stem, caption, sky, ground, colour, shape in ITEMS:
        buf = io.BytesIO()
        draw(sky, ground, colour, shape, stem.replace("_", " ")).save(buf, format="PNG", optimize=False)
        (images / f"{stem}.png").write_bytes(buf.getvalue())
        rows.append({"id": stem, "image": f"images/{stem}.png", "caption": caption, "license": LICENSE})
    # An exact duplicate under another id: retrieval must not return the same image twice for one row.
    rows.append({"id": "blue_whale_copy", "image": "images/blue_whale.png", "caption": "a blue whale in the sea",
                 "license": LICENSE})
    good = (images / "pizza.png").read_bytes()
    (images / "broken_truncated.png").write_bytes(good[: len(good) // 2])
    rows.append({"id": "broken_truncated", "image": "images/broken_truncated.png", "caption": "a cut-off file",
                 "license": LICENSE})
    rows.append({"id": "broken_missing", "image": "images/does_not_exist.png", "caption": "a missing file",
                 "license": LICENSE})
    with open(HERE / "pool.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (HERE / "README.md").write_text(
        "# fusegen sample image pool\n\nGenerated by `samples/make_sample_pool.py` (deterministic; rerun it to "
        "rebuild). `pool.jsonl`: one row per image with `id`, `image` (path relative to this folder), `caption` "
        f"and `license` ({LICENSE}; the drawings are made by the script). {len(ITEMS)} drawings, one exact "
        "duplicate under another id, and two broken rows the pool index rejects: `broken_truncated` "
        "(`error:image_truncated`) and `broken_missing` (`error:image_missing`).\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
