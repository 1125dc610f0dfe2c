"""Near-duplicate images for the contamination check: 64-bit difference hashes (dHash) and their lookup.

dHash as the `imagehash` library computes it (`imagehash.dhash`, hash_size 8): the image in grey,
resized to 9x8 with Lanczos, one bit per pixel that is brighter than its right neighbour, row by row.
Written here with Pillow and NumPy because `imagehash` is not in the project's environment (it would
add PyWavelets for a 10-line function). Two images are near-duplicates when their hashes differ in at
most `distance` bits (re-encoding, resizing and small crops stay within a few bits; a different picture
differs in about half of 64).

Evaluation files name their images in the fields of `EVAL_IMAGE_FIELDS`: a path (relative to the
file's folder, or to `contamination.image_root`), an HF image struct `{bytes, path}`, or a list of these.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pipeline.errors import PipelineConfigError

EVAL_IMAGE_FIELDS = (
    "image", "images", "img_path", "query_img_path", "qry_image_path", "qry_img_path", "tgt_img_path",
    "pos_image_path", "neg_image_path", "query_image", "pos_image", "neg_images", "image_path",
)


def dhash(data: bytes) -> int | None:
    """The image's 64-bit dHash, or None when the bytes do not decode as an image."""
    from pipeline.io.images import ImageError, decode_image

    try:
        # The one loader: allowed formats only, EXIF orientation and first frame as every model sees them.
        grey = decode_image(data).convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    except ImageError:
        return None
    px = np.asarray(grey, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def within(hashes: np.ndarray, value: int, distance: int) -> bool:
    """Whether any of `hashes` (uint64) is within `distance` bits of `value`."""
    if not len(hashes):
        return False
    xor = np.bitwise_xor(hashes, np.uint64(value))
    return bool((np.bitwise_count(xor) <= distance).any())


def record_images(record: dict, folder: str, where: str) -> list[bytes]:
    """The image bytes a record names; PipelineConfigError for a path that does not exist."""
    out = []
    for field in EVAL_IMAGE_FIELDS:
        value = record.get(field)
        for item in value if isinstance(value, list) else [value]:
            data = _image_bytes(item, folder, where, field)
            if data is not None:
                out.append(data)
    return out


def _image_bytes(item, folder: str, where: str, field: str) -> bytes | None:
    if isinstance(item, dict):
        if item.get("bytes"):
            return item["bytes"]
        item = item.get("path")
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if not isinstance(item, str) or not item.strip():
        return None
    path = item if os.path.isabs(item) else os.path.join(folder, item)
    if not os.path.isfile(path):
        raise PipelineConfigError(
            f"{where}: `{field}` names image {item!r}, not found at {path}; set `contamination.image_root` to "
            "the folder its paths are relative to, or `contamination.image_distance: null` to check texts only"
        )
    with open(path, "rb") as f:
        return f.read()


def eval_image_hashes(blobs: list[bytes], where: str) -> np.ndarray:
    """Unique dHashes of the evaluation images; PipelineConfigError naming the file when one is no image."""
    hashes = set()
    for no, data in enumerate(blobs):
        h = dhash(data)
        if h is None:
            raise PipelineConfigError(f"{where}: image {no} of the file does not decode")
        hashes.add(h)
    return np.array(sorted(hashes), dtype=np.uint64)


def rows_with_near_duplicates(table, columns: tuple[str, ...], store, eval_set, skip: list[str]) -> list[bool]:
    """Per row: whether an image it references in `columns` (image refs or lists of them, read through
    `store.get`) is a near-duplicate of an evaluation image. Rows with a reason in `skip` are not read;
    each distinct image is read and hashed once. A failing store read raises (the shard is retried)."""
    names = [c for c in columns if c in table.column_names]
    seen: dict[str, bool] = {}
    out = []
    for i, reason in enumerate(skip):
        hit = False
        if not reason:
            for name in names:
                value = table[name][i].as_py()
                for ref in value if isinstance(value, list) else [value]:
                    if ref is None:
                        continue
                    key = ref.get("sha256") or str(ref)
                    if key not in seen:
                        seen[key] = eval_set.near_duplicate(store.get(ref))
                    hit = hit or seen[key]
        out.append(hit)
    return out
