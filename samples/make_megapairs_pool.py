"""Build the MegaPairs demo's image pool: samples/megapairs/{pool.jsonl, images/, README.md}.

Ten scenes, each drawn five times with one attribute changed from the scene's first drawing (the
colour of the house, a second tree, a night sky, a red or a blue car...), so that image-similarity
views find real pairs between variants of one scene, while scenes differ in layout and colours. Every
image has a caption naming what it shows, and the CC0-1.0 license (the drawings are made here). Plus
one exact duplicate under another id (`filter:duplicate_image`) and one truncated PNG
(`error:image_truncated`). Deterministic: rerun `python -m samples.make_megapairs_pool` to rebuild.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from samples.make_sample_pool import LICENSE
from samples.sample_images import SEED, _vgradient

HERE = Path(__file__).resolve().parent / "megapairs"
W, H = 192, 144
RGB = {"red": (200, 40, 40), "blue": (40, 80, 200), "yellow": (235, 200, 40), "green": (50, 150, 60),
       "white": (245, 245, 245), "purple": (130, 60, 160), "orange": (240, 140, 30), "grey": (120, 120, 125)}
SKIES = {"day": ((110, 170, 235), (200, 225, 250)), "night": ((10, 15, 45), (35, 45, 90)),
         "sunset": ((250, 150, 80), (120, 70, 140)), "storm": ((80, 85, 95), (150, 150, 160))}
SKY_WORDS = {"day": "a clear day sky", "night": "a night sky with a moon and stars",
             "sunset": "an orange sunset sky", "storm": "a grey stormy sky"}
COUNT = {1: "one", 2: "two"}


def sky(kind: str, horizon: int = H) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A W x H canvas with the sky drawn down to `horizon` (stars and a moon at night)."""
    im = Image.fromarray(_vgradient(W, H, *SKIES[kind]), "RGB")
    d = ImageDraw.Draw(im)
    if kind == "night":
        rng = np.random.default_rng(SEED)
        for x, y in zip(rng.integers(0, W, 25), rng.integers(0, horizon, 25)):
            d.point((int(x), int(y)), fill=(240, 240, 200))
        d.ellipse([150, 12, 170, 32], fill=(240, 235, 190))
    return im, d


def pine(d, x: int, base: int, colour=(30, 100, 45)) -> None:
    d.rectangle([x - 3, base - 10, x + 3, base], fill=(100, 70, 40))
    d.polygon([(x - 16, base - 8), (x, base - 52), (x + 16, base - 8)], fill=colour)


def house(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 112, W, H], fill=(70, 140, 60))
    d.rectangle([40, 66, 110, 114], fill=RGB[a["house"]])
    d.polygon([(32, 68), (75, 34), (118, 68)], fill=(110, 60, 40))
    d.rectangle([68, 88, 82, 114], fill=RGB["green"])
    d.rectangle([48, 76, 60, 86], fill=(250, 230, 150) if a["sky"] == "night" else (180, 210, 240))
    for x in (150, 176)[: a["trees"]]:
        pine(d, x, 114)
    return im


def car(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 96, W, H], fill=(80, 150, 70))
    d.rectangle([0, 104, W, 132], fill=(90, 90, 95))
    d.rectangle([0, 117, W, 119], fill=(230, 230, 230))
    body = RGB[a["car"]]
    d.rectangle([50, 96, 140, 116], fill=body)
    d.polygon([(66, 96), (78, 80), (116, 80), (128, 96)], fill=body)
    d.polygon([(72, 95), (81, 84), (113, 84), (121, 95)], fill=(170, 210, 235))
    for x in (68, 122):
        d.ellipse([x - 9, 108, x + 9, 126], fill=(25, 25, 25))
    if a["light"]:
        d.rectangle([165, 50, 168, 104], fill=(60, 60, 60))
        d.rectangle([159, 36, 174, 64], fill=(30, 30, 30))
        d.ellipse([162, 39, 171, 48], fill=(230, 40, 40))
    return im


def boat(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    sea = (40, 80, 130) if a["sky"] != "storm" else (60, 75, 90)
    d.rectangle([0, 100, W, H], fill=sea)
    for x, s in ((80, 1.0), (150, 0.6))[: a["boats"]]:
        d.polygon([(x - 34 * s, 100), (x + 34 * s, 100), (x + 24 * s, 112), (x - 24 * s, 112)], fill=(90, 50, 30))
        d.line([(x, 100), (x, 100 - 70 * s)], fill=(60, 40, 30), width=2)
        d.polygon([(x + 2, 100 - 66 * s), (x + 2, 96), (x + 40 * s, 96)], fill=RGB[a["sail"]])
    return im


def lighthouse(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 118, W, H], fill=(40, 90, 140))
    d.polygon([(50, 144), (70, 108), (130, 104), (150, 144)], fill=(90, 85, 80))
    for i, y in enumerate(range(40, 110, 14)):
        d.rectangle([88 - i, y, 112 + i, y + 14], fill=RGB[a["stripes"]] if i % 2 == 0 else RGB["white"])
    d.rectangle([86, 26, 114, 40], fill=(250, 230, 120) if a["sky"] == "night" else (60, 60, 60))
    d.polygon([(82, 26), (100, 12), (118, 26)], fill=(40, 40, 40))
    if a["sky"] == "night":
        d.polygon([(86, 30), (0, 14), (0, 44)], fill=(200, 190, 120))
    for x in (30, 150)[: a["gulls"]]:
        d.arc([x - 8, 60, x, 68], 200, 340, fill=(250, 250, 250), width=2)
        d.arc([x, 60, x + 8, 68], 200, 340, fill=(250, 250, 250), width=2)
    return im


def lake(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.polygon([(0, 96), (50, 30), (100, 96)], fill=(110, 110, 130))
    d.polygon([(70, 96), (130, 20), (192, 96)], fill=(95, 95, 115))
    if a["snow"]:
        d.polygon([(40, 43), (50, 30), (60, 43)], fill=RGB["white"])
        d.polygon([(118, 35), (130, 20), (142, 35)], fill=RGB["white"])
    if a["sun"]:
        d.ellipse([20, 10, 44, 34], fill=(250, 220, 80))
    d.rectangle([0, 96, W, H], fill=(50, 110, 160))
    for x in (14, 34, 160, 180):
        pine(d, x, 112, RGB["orange"] if a["season"] == "autumn" else (30, 100, 45))
    if a["cabin"]:
        d.rectangle([120, 98, 140, 112], fill=(120, 80, 50))
        d.polygon([(116, 99), (130, 88), (144, 99)], fill=(80, 40, 30))
    return im


def fruit(a: dict) -> Image.Image:
    im = Image.new("RGB", (W, H), (235, 225, 205))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 96, W, H], fill=(60, 90, 170) if a["cloth"] == "blue" else (205, 180, 140))
    colour = {"red apples": (200, 30, 40), "green apples": (120, 190, 60), "oranges": (245, 150, 30)}[a["fruit"]]
    for x, y in ((70, 70), (96, 66), (122, 70), (84, 54), (110, 54)):
        d.ellipse([x - 14, y - 14, x + 14, y + 14], fill=colour)
    d.chord([50, 50, 146, 120], 0, 180, fill=(150, 100, 60))
    if a["banana"]:
        d.arc([120, 40, 180, 110], 20, 120, fill=(245, 220, 60), width=10)
    return im


def balloon(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 126, W, H], fill=(90, 140, 70))
    c1, c2 = (RGB[c] for c in a["colours"].split("-"))
    for x, s in ((80, 1.0), (156, 0.6))[: a["count"]]:
        r = 30 * s
        d.ellipse([x - r, 40 - r, x + r, 40 + r], fill=c1)
        d.rectangle([x - r / 3, 40 - r, x + r / 3, 40 + r], fill=c2)
        d.line([(x - r / 2, 40 + r * 0.9), (x - 6 * s, 80)], fill=(60, 40, 30))
        d.line([(x + r / 2, 40 + r * 0.9), (x + 6 * s, 80)], fill=(60, 40, 30))
        d.rectangle([x - 7 * s, 80, x + 7 * s, 80 + 12 * s], fill=(130, 90, 50))
    return im


def snowman(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 110, W, H], fill=(235, 240, 250))
    for box in ([66, 80, 126, 136], [76, 50, 116, 88], [82, 24, 110, 54]):
        d.ellipse(box, fill=(250, 250, 252), outline=(180, 190, 210))
    d.polygon([(96, 38), (112, 41), (96, 43)], fill=(240, 130, 30))
    d.rectangle([80, 52, 112, 58], fill=RGB[a["scarf"]])
    d.rectangle([104, 56, 110, 72], fill=RGB[a["scarf"]])
    if a["hat"]:
        d.rectangle([80, 22, 112, 26], fill=(20, 20, 20))
        d.rectangle([86, 4, 106, 24], fill=(20, 20, 20))
    return im


def windmill(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 100, W, H], fill=(60, 130, 50))
    for y in range(106, H, 8):
        for x in range(4 + (y % 16), W, 12):
            d.ellipse([x, y, x + 6, y + 6], fill=RGB[a["tulips"]])
    for x, s in ((70, 1.0), (150, 0.6))[: a["mills"]]:
        d.polygon([(x - 14 * s, 104), (x - 8 * s, 104 - 56 * s), (x + 8 * s, 104 - 56 * s), (x + 14 * s, 104)],
                  fill=(150, 90, 60))
        hub = (x, 104 - 52 * s)
        for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            d.line([hub, (x + dx * 34 * s, hub[1] + dy * 34 * s)], fill=(235, 235, 225), width=max(2, int(6 * s)))
    return im


def rocket(a: dict) -> Image.Image:
    im, d = sky(a["sky"])
    d.rectangle([0, 124, W, H], fill=(110, 110, 110))
    d.rectangle([60, 40, 68, 124], fill=(90, 90, 95))
    body = RGB[a["body"]]
    d.rectangle([84, 40, 108, 108], fill=body)
    d.polygon([(84, 40), (96, 12), (108, 40)], fill=(200, 40, 40) if a["body"] == "white" else (245, 245, 245))
    d.polygon([(84, 92), (72, 112), (84, 108)], fill=(60, 60, 70))
    d.polygon([(108, 92), (120, 112), (108, 108)], fill=(60, 60, 70))
    if a["flame"]:
        d.polygon([(86, 108), (96, 140), (106, 108)], fill=(250, 170, 40))
    return im


# scene -> (drawing, caption, first drawing's attributes, [(variant name, the one change)] * 4)
SCENES = {
    "house": (house, lambda a: f"a small {a['house']} house with a green door beside {COUNT[a['trees']]} pine "
              f"tree{'s' * (a['trees'] > 1)} under {SKY_WORDS[a['sky']]}",
              {"house": "red", "trees": 1, "sky": "day"},
              [("blue", {"house": "blue"}), ("yellow", {"house": "yellow"}), ("two_trees", {"trees": 2}),
               ("night", {"sky": "night"})]),
    "car": (car, lambda a: f"a {a['car']} car driving on a grey road beside green grass"
            f"{' and a traffic light' if a['light'] else ''} under {SKY_WORDS[a['sky']]}",
            {"car": "red", "light": False, "sky": "day"},
            [("blue", {"car": "blue"}), ("green", {"car": "green"}), ("traffic_light", {"light": True}),
             ("night", {"sky": "night"})]),
    "boat": (boat, lambda a: f"{COUNT[a['boats']]} sailing boat{'s' * (a['boats'] > 1)} with a {a['sail']} sail "
             f"on the sea under {SKY_WORDS[a['sky']]}",
             {"boats": 1, "sail": "white", "sky": "day"},
             [("red_sail", {"sail": "red"}), ("two_boats", {"boats": 2}), ("sunset", {"sky": "sunset"}),
              ("storm", {"sky": "storm"})]),
    "lighthouse": (lighthouse, lambda a: f"a {a['stripes']} and white striped lighthouse on grey rocks by the sea"
                   f"{' with two seagulls' if a['gulls'] else ''} under {SKY_WORDS[a['sky']]}"
                   f"{', its lamp shining' if a['sky'] == 'night' else ''}",
                   {"stripes": "red", "gulls": 0, "sky": "day"},
                   [("blue", {"stripes": "blue"}), ("green", {"stripes": "green"}), ("gulls", {"gulls": 2}),
                    ("night", {"sky": "night"})]),
    "lake": (lake, lambda a: f"a blue mountain lake below {'snow-capped' if a['snow'] else 'bare grey'} peaks with "
             f"{'orange autumn' if a['season'] == 'autumn' else 'green'} pine trees on the shore"
             f"{' and a wooden cabin' if a['cabin'] else ''}{' and a bright sun' if a['sun'] else ''} "
             f"under {SKY_WORDS[a['sky']]}",
             {"snow": True, "season": "summer", "cabin": False, "sun": False, "sky": "day"},
             [("no_snow", {"snow": False}), ("autumn", {"season": "autumn"}), ("cabin", {"cabin": True}),
              ("sun", {"sun": True})]),
    "fruit": (fruit, lambda a: f"a brown bowl of {a['fruit']}{' with a banana' if a['banana'] else ''} on a "
              f"{a['cloth']} tablecloth",
              {"fruit": "red apples", "banana": False, "cloth": "beige"},
              [("green_apples", {"fruit": "green apples"}), ("oranges", {"fruit": "oranges"}),
               ("banana", {"banana": True}), ("blue_cloth", {"cloth": "blue"})]),
    "balloon": (balloon, lambda a: f"{COUNT[a['count']]} {a['colours'].replace('-', ' and ')} striped hot-air "
                f"balloon{'s' * (a['count'] > 1)} over green fields under {SKY_WORDS[a['sky']]}",
                {"colours": "red-yellow", "count": 1, "sky": "day"},
                [("blue_white", {"colours": "blue-white"}), ("purple_green", {"colours": "purple-green"}),
                 ("two", {"count": 2}), ("sunset", {"sky": "sunset"})]),
    "snowman": (snowman, lambda a: f"a snowman with a carrot nose and a {a['scarf']} scarf"
                f"{' and a black top hat' if a['hat'] else ''} in the snow under {SKY_WORDS[a['sky']]}",
                {"scarf": "red", "hat": True, "sky": "day"},
                [("green_scarf", {"scarf": "green"}), ("blue_scarf", {"scarf": "blue"}), ("no_hat", {"hat": False}),
                 ("night", {"sky": "night"})]),
    "windmill": (windmill, lambda a: f"{COUNT[a['mills']]} brown windmill{'s' * (a['mills'] > 1)} in a field of "
                 f"{a['tulips']} tulips under {SKY_WORDS[a['sky']]}",
                 {"mills": 1, "tulips": "red", "sky": "day"},
                 [("yellow_tulips", {"tulips": "yellow"}), ("purple_tulips", {"tulips": "purple"}),
                  ("two", {"mills": 2}), ("sunset", {"sky": "sunset"})]),
    "rocket": (rocket, lambda a: f"a {a['body']} rocket on a launch pad beside its tower"
               f"{' lifting off on a bright flame' if a['flame'] else ''} under {SKY_WORDS[a['sky']]}",
               {"body": "white", "flame": False, "sky": "day"},
               [("red", {"body": "red"}), ("grey", {"body": "grey"}), ("launch", {"flame": True}),
                ("night", {"sky": "night"})]),
}
DUPLICATE = ("house_base_copy", "house_base")  # (id of the copy, id of the original)
BROKEN = "broken_truncated"


def drawings() -> list[tuple[str, str, dict, Image.Image, str]]:
    """(id, scene, attributes, image, caption) of every drawing, scenes in order, the first drawing first."""
    out = []
    for scene, (draw, caption, base, variants) in SCENES.items():
        for name, change in [("base", {})] + variants:
            attrs = {**base, **change}
            out.append((f"{scene}_{name}", scene, attrs, draw(attrs), caption(attrs)))
    return out


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def build(root: Path = HERE) -> dict[str, int]:
    """Write pool.jsonl, images/ (stale files removed) and README.md under `root`; return the counts."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        stale.unlink()
    rows, data = [], {}
    for pool_id, scene, _, im, caption in drawings():
        data[pool_id] = png(im)
        rows.append({"id": pool_id, "image": f"images/{pool_id}.png", "caption": caption, "license": LICENSE,
                     "scene": scene})
    copy, original = DUPLICATE
    data[copy] = data[original]
    rows.append({**next(r for r in rows if r["id"] == original), "id": copy, "image": f"images/{copy}.png"})
    data[BROKEN] = data["fruit_base"][: len(data["fruit_base"]) // 2]
    rows.append({"id": BROKEN, "image": f"images/{BROKEN}.png", "caption": "a bowl of fruit cut off halfway",
                 "license": LICENSE, "scene": "fruit"})
    for pool_id, blob in data.items():
        (images / f"{pool_id}.png").write_bytes(blob)
    with open(root / "pool.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts = {"rows": len(rows), "scenes": len(SCENES), "drawings": len(rows) - 2}
    (root / "README.md").write_text(readme(counts), encoding="utf-8")
    return counts


def readme(counts: dict[str, int]) -> str:
    per = counts["drawings"] // counts["scenes"]
    return (
        "# fusegen MegaPairs sample pool\n\n"
        "Generated by `samples/make_megapairs_pool.py` (deterministic; rebuild with "
        "`python -m samples.make_megapairs_pool`). The image pool of the MegaPairs demo: "
        f"{counts['scenes']} scenes drawn {per} times each, the scene's first drawing (`<scene>_base`) and "
        f"{per - 1} variants that change ONE attribute of it (a colour, a second object, a night or sunset sky), "
        "so that the similarity views find pairs between variants of a scene; scenes differ in layout and "
        "colours.\n\n"
        "`pool.jsonl`: one row per image with `id`, `image` (path relative to this folder), `caption` (what the "
        f"drawing shows), `license` ({LICENSE}; the drawings are made by the script) and `scene` (ignored by the "
        "reader; which rows are variants of each other).\n\n"
        "| rows | what | `pool` stage verdict |\n|---|---|---|\n"
        f"| {counts['drawings']} | drawings ({counts['scenes']} scenes x {per}) | kept |\n"
        f"| 1 | `{DUPLICATE[0]}`: the same bytes as `{DUPLICATE[1]}` | `filter:duplicate_image` |\n"
        f"| 1 | `{BROKEN}`: a PNG cut in half | `error:image_truncated` |\n\n"
        f"In all {counts['rows']} rows: {counts['drawings']} kept, 1 filtered, 1 rejected.\n\n"
        "Scenes: " + ", ".join(f"`{s}` ({', '.join(['base'] + [v for v, _ in SCENES[s][3]])})" for s in SCENES)
        + ".\n"
    )


if __name__ == "__main__":
    print(build())
