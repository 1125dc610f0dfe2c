"""The sample corpus's images: small drawings in the odd modes ingest must convert, and broken files.

These are the parts of the corpus that cannot be text: PNG RGB, palette, RGBA, grayscale L and 16-bit
I;16; JPEG RGB and CMYK; a 3-frame animated GIF; and, for the bad rows, a PNG cut in half, an empty
file and a text file named .png. Deterministic: the only randomness is NumPy's generator with SEED.
The images are CC0. Used by make_sample_corpus.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SEED = 20240601


def _font(size=11):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # very old Pillow (no size argument) / no FreeType
        return ImageFont.load_default()


def _vgradient(w, h, top, bottom):
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    a = np.array(top, float)[None, None, :]
    b = np.array(bottom, float)[None, None, :]
    arr = np.broadcast_to(a + (b - a) * t, (h, w, len(top)))
    return np.ascontiguousarray(arr.round().astype(np.uint8))


def img_eiffel():  # PNG, RGB, 128x96
    w, h = 128, 96
    im = Image.fromarray(_vgradient(w, h, (90, 150, 230), (200, 225, 250)), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 84, w, h], fill=(70, 140, 60))
    c = w // 2
    brown = (110, 80, 50)
    d.polygon(
        [(c - 26, 84), (c - 3, 10), (c + 3, 10), (c + 26, 84), (c + 16, 84), (c, 40), (c - 16, 84)],
        fill=brown,
    )
    d.line([(c, 2), (c, 10)], fill=brown, width=2)
    d.rectangle([c - 14, 56, c + 14, 59], fill=brown)
    d.rectangle([c - 9, 34, c + 9, 36], fill=brown)
    d.arc([c - 14, 66, c + 14, 96], 180, 360, fill=(200, 225, 250), width=2)
    d.text((4, 2), "Paris", fill=(255, 255, 255), font=_font(11))
    return im, "PNG", {}


def img_starry_night():  # PNG, palette "P", 96x96
    w, h = 96, 96
    im = Image.fromarray(_vgradient(w, h, (15, 30, 90), (40, 70, 150)), "RGB")
    d = ImageDraw.Draw(im)
    for i, (x, y, r) in enumerate([(30, 30, 16), (60, 22, 12), (48, 48, 20)]):
        d.arc([x - r, y - r, x + r, y + r], 20 * i, 20 * i + 250, fill=(120, 170, 230), width=3)
    for x, y in [(12, 14), (40, 10), (72, 40), (20, 52), (58, 62)]:
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(250, 220, 70))
    d.ellipse([74, 6, 92, 24], fill=(250, 200, 40))
    d.ellipse([70, 4, 86, 20], fill=(20, 40, 110))
    d.rectangle([0, 78, w, h], fill=(30, 40, 60))
    d.polygon([(8, h), (16, 30), (26, h)], fill=(20, 35, 20))
    for x in range(34, 90, 12):
        d.rectangle([x, 72, x + 8, 80], fill=(60, 60, 80))
        d.point((x + 4, 76), fill=(250, 220, 70))
    im = im.quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return im, "PNG", {}


def img_giant_panda():  # PNG, RGBA with transparency, 80x80
    im = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse([8, 66, 72, 78], fill=(0, 0, 0, 70))  # soft shadow
    d.ellipse([10, 6, 28, 24], fill=(20, 20, 20, 255))
    d.ellipse([52, 6, 70, 24], fill=(20, 20, 20, 255))
    d.ellipse([12, 12, 68, 68], fill=(245, 245, 240, 255), outline=(40, 40, 40, 255))
    d.ellipse([22, 28, 36, 44], fill=(20, 20, 20, 255))
    d.ellipse([44, 28, 58, 44], fill=(20, 20, 20, 255))
    d.ellipse([27, 33, 31, 37], fill=(255, 255, 255, 255))
    d.ellipse([49, 33, 53, 37], fill=(255, 255, 255, 255))
    d.ellipse([35, 46, 45, 53], fill=(20, 20, 20, 255))
    d.arc([32, 50, 48, 60], 20, 160, fill=(20, 20, 20, 255), width=2)
    d.rectangle([60, 58, 78, 64], fill=(90, 170, 70, 160))  # translucent bamboo
    return im, "PNG", {}


def img_neuschwanstein():  # JPEG, RGB, 120x90
    w, h = 120, 90
    im = Image.fromarray(_vgradient(w, h, (120, 170, 230), (225, 235, 245)), "RGB")
    d = ImageDraw.Draw(im)
    d.polygon([(0, 90), (0, 60), (30, 48), (70, 58), (120, 44), (120, 90)], fill=(50, 110, 60))
    d.polygon([(0, 90), (0, 75), (60, 66), (120, 78), (120, 90)], fill=(35, 85, 45))
    white = (235, 232, 225)
    roof = (60, 80, 130)
    d.rectangle([40, 34, 80, 62], fill=white)
    for x0, top in [(36, 22), (56, 14), (78, 26)]:
        d.rectangle([x0, top, x0 + 8, 62], fill=white)
        d.polygon([(x0 - 2, top), (x0 + 4, top - 14), (x0 + 10, top)], fill=roof)
    for x in range(44, 78, 6):
        d.rectangle([x, 42, x + 2, 47], fill=(80, 70, 60))
    return im, "JPEG", {"quality": 85}


def img_mount_everest():  # PNG, grayscale "L", 128x96
    w, h = 128, 96
    g = np.linspace(230, 140, h)[:, None] * np.ones((1, w))
    im = Image.fromarray(g.round().astype(np.uint8), "L")
    d = ImageDraw.Draw(im)
    d.polygon([(0, 96), (0, 70), (30, 50), (52, 58), (78, 12), (102, 46), (128, 38), (128, 96)], fill=90)
    d.polygon([(66, 32), (78, 12), (92, 32), (84, 28), (78, 34), (72, 28)], fill=250)
    d.polygon([(0, 96), (0, 84), (40, 74), (90, 82), (128, 70), (128, 96)], fill=55)
    d.text((4, 2), "8848.86 m", fill=20, font=_font(10))
    return im, "PNG", {}


def img_golden_gate():  # JPEG, RGB, 160x120
    w, h = 160, 120
    im = Image.fromarray(_vgradient(w, h, (170, 195, 220), (230, 230, 235)), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 84, w, h], fill=(40, 90, 140))
    orange = (192, 54, 44)
    for x in (40, 120):
        d.rectangle([x - 3, 20, x + 3, 92], fill=orange)
        d.rectangle([x - 5, 34, x + 5, 37], fill=orange)
        d.rectangle([x - 5, 54, x + 5, 57], fill=orange)
    d.rectangle([0, 70, w, 74], fill=orange)
    d.arc([40, -36, 120, 66], 0, 180, fill=orange, width=2)  # sagging main cable
    d.line([(0, 60), (40, 16)], fill=orange, width=2)
    d.line([(120, 16), (160, 60)], fill=orange, width=2)
    for x in range(48, 116, 8):
        cable_y = 15 + 51 * (1 - ((x - 80) / 40) ** 2) ** 0.5
        d.line([(x, int(cable_y)), (x, 70)], fill=orange)
    d.ellipse([-20, 40, 60, 70], fill=(235, 235, 238))  # fog bank
    return im, "JPEG", {"quality": 80}


def img_titanic():  # JPEG, CMYK, 128x80
    w, h = 128, 80
    im = Image.new("CMYK", (w, h), (40, 5, 0, 0))  # pale sky
    d = ImageDraw.Draw(im)
    d.rectangle([0, 56, w, h], fill=(100, 40, 0, 40))  # sea
    d.polygon([(10, 44), (118, 44), (110, 60), (18, 60)], fill=(0, 0, 0, 230))  # hull
    d.rectangle([22, 36, 106, 44], fill=(0, 0, 5, 0))  # superstructure
    for i, x in enumerate(range(34, 100, 18)):
        d.rectangle([x, 18, x + 9, 36], fill=(0, 35, 80, 5))  # buff funnels
        d.rectangle([x, 18, x + 9, 22], fill=(0, 0, 0, 240))  # black tops
    d.line([(14, 44), (14, 10), (116, 10), (116, 44)], fill=(0, 0, 0, 200))
    return im, "JPEG", {"quality": 85}


def img_sao_paulo():  # PNG, RGB, 112x84
    w, h = 112, 84
    im = Image.fromarray(_vgradient(w, h, (250, 170, 90), (120, 80, 150)), "RGB")
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(SEED)
    x = 0
    while x < w:
        bw = int(rng.integers(8, 16))
        top = int(rng.integers(22, 60))
        shade = int(rng.integers(40, 80))
        d.rectangle([x, top, x + bw - 1, h], fill=(shade, shade, shade + 20))
        for wy in range(top + 3, h - 2, 5):
            for wx in range(x + 2, x + bw - 2, 4):
                if rng.random() < 0.5:
                    d.point((wx, wy), fill=(255, 230, 140))
        x += bw + 1
    d.text((4, 2), "SP", fill=(255, 255, 255), font=_font(12))
    return im, "PNG", {}


def img_voyager():  # PNG, 16-bit grayscale "I;16", 96x96
    n = 96
    rng = np.random.default_rng(SEED + 1)
    arr = np.full((n, n), 1200, np.float64)  # deep-space background
    ys, xs = rng.integers(0, n, 40), rng.integers(0, n, 40)
    arr[ys, xs] = rng.integers(20000, 65535, 40)
    yy, xx = np.mgrid[0:n, 0:n]
    # high-gain antenna: radial gradient disc
    r = np.hypot(xx - 48, yy - 40)
    dish = r < 22
    arr[dish] = 60000 - (r[dish] / 22.0) * 30000
    # bus and magnetometer boom
    arr[58:70, 42:54] = 38000
    arr[62:64, 54:92] = 50000
    arr[68:90, 30:32] = 45000
    im = Image.fromarray(arr.clip(0, 65535).astype(np.uint16))
    assert im.mode == "I;16", im.mode
    return im, "PNG", {}


def img_saturn():  # PNG, RGB, 144x96
    w, h = 144, 96
    im = Image.new("RGB", (w, h), (5, 5, 20))
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(SEED + 2)
    for _ in range(30):
        d.point((int(rng.integers(0, w)), int(rng.integers(0, h))), fill=(220, 220, 255))
    d.ellipse([12, 38, 132, 60], outline=(200, 180, 140), width=3)  # ring, back
    d.ellipse([46, 20, 98, 72], fill=(225, 190, 120))
    for y, col in [(34, (200, 160, 100)), (44, (210, 175, 110)), (56, (190, 150, 95))]:
        d.line([(50, y), (94, y)], fill=col, width=2)
    d.arc([12, 38, 132, 60], 0, 180, fill=(230, 210, 170), width=3)  # ring, front
    return im, "PNG", {}


def img_sagrada():  # JPEG, RGB, 96x120 (portrait)
    w, h = 96, 120
    im = Image.fromarray(_vgradient(w, h, (150, 190, 235), (240, 220, 200)), "RGB")
    d = ImageDraw.Draw(im)
    stone = (200, 170, 120)
    d.rectangle([14, 70, 82, 120], fill=stone)
    for x, top in [(18, 24), (32, 12), (50, 12), (64, 24)]:
        d.polygon([(x, 72), (x + 7, top), (x + 14, 72)], fill=stone)
        d.ellipse([x + 4, top - 4, x + 10, top + 2], fill=(230, 60, 60))
    for x in range(22, 80, 10):
        d.rectangle([x, 82, x + 4, 100], fill=(110, 90, 70))
    d.rectangle([80, 30, 82, 70], fill=(90, 90, 90))  # construction crane
    d.line([(60, 30), (95, 30)], fill=(90, 90, 90), width=2)
    return im, "JPEG", {"quality": 85}


def img_monarch_frames():  # animated GIF, 3 frames, 64x64
    frames = []
    for span in (26, 16, 6):
        im = Image.new("RGB", (64, 64), (200, 235, 200))
        d = ImageDraw.Draw(im)
        c = 32
        for side in (-1, 1):
            tip = c + side * span
            d.polygon([(c, 30), (tip, 12), (tip, 34)], fill=(240, 130, 20), outline=(0, 0, 0))
            d.polygon(
                [(c, 34), (c + side * max(span - 6, 4), 36), (c + side * max(span - 10, 3), 52)],
                fill=(230, 110, 10),
                outline=(0, 0, 0),
            )
        d.line([(c, 24), (c, 48)], fill=(0, 0, 0), width=3)
        d.line([(c, 24), (c - 5, 16)], fill=(0, 0, 0))
        d.line([(c, 24), (c + 5, 16)], fill=(0, 0, 0))
        frames.append(im.quantize(colors=8, dither=Image.Dither.NONE))
    return frames


def write_images(images: Path) -> list[str]:
    """Write every image file under `images` (stale ones removed); return their names."""
    images.mkdir(parents=True, exist_ok=True)
    for p in images.iterdir():  # remove stale outputs of earlier runs
        if p.is_file() and p.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif"}:
            p.unlink()

    makers = {
        "eiffel_tower.png": img_eiffel,
        "starry_night.png": img_starry_night,
        "giant_panda.png": img_giant_panda,
        "neuschwanstein.jpg": img_neuschwanstein,
        "mount_everest.png": img_mount_everest,
        "golden_gate_bridge.jpg": img_golden_gate,
        "rms_titanic.jpg": img_titanic,
        "sao_paulo.png": img_sao_paulo,
        "voyager_1.png": img_voyager,
        "saturn.png": img_saturn,
        "sagrada_familia.jpg": img_sagrada,
    }
    for name, fn in makers.items():
        im, fmt, kw = fn()
        im.save(images / name, fmt, **kw)

    frames = img_monarch_frames()
    frames[0].save(
        images / "monarch_butterfly.gif",
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=150,
        loop=0,
        disposal=1,
    )

    # --- broken image files for the BAD rows ---
    rng = np.random.default_rng(SEED + 3)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    full = buf.getvalue()
    (images / "bad_truncated.png").write_bytes(full[: len(full) // 2])
    (images / "bad_empty.png").write_bytes(b"")
    (images / "bad_not_image.png").write_bytes(
        b"This is not an image. It is a plain text file that happens to have a\n"
        b".png extension, used to test image decoding failures in fusegen.\n"
    )
    # images/missing_photo.png is intentionally never created.
    return sorted(p.name for p in images.iterdir())
