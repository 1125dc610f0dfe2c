"""The folder an exporter writes: its ownership marker, image files written once, atomic text files.

`_fusegen_export.json` names the run, the format and the options, and lists the files written. It is
written first with `status: writing` (a crashed export is still recognisably ours) and last with
`status: complete` plus the row counts `fusegen validate` compares with the run. An out dir that holds
another run's or another format's export, or files no fusegen export wrote, is refused unless
`force`; exporting the same run in the same format again rewrites it and removes what the earlier
export wrote and this one did not.

Images are files named by content, `images/<aa>/<sha256[:32]>.<ext>`, each written once however many
rows use it, and referenced by that path relative to the out dir. Which images this export wrote is
remembered on disk (`DiskKeys`, a scratch file removed at the end), not in a set that grows with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable

from pipeline import __version__
from pipeline.errors import ExportError
from pipeline.io.disk_keys import DiskKeys
from pipeline.logging import get_logger

log = get_logger(__name__)

MARKER = "_fusegen_export.json"
IMAGES = "images"
_SEEN = ".fusegen-images.sqlite"  # scratch: the images this export wrote
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"))


def image_ext(data: bytes, path: str | None = None) -> str:
    """File extension from the image's magic bytes (the stored name's extension as a fallback)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    suffix = os.path.splitext(path or "")[1].lstrip(".").lower()
    return suffix or "img"


def read_marker(folder: str) -> dict | None:
    path = os.path.join(folder, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class OutDir:
    """One export's target folder (local path)."""

    def __init__(self, path: str, run_root: str, fmt: str, options: dict, force: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.run_root, self.fmt, self.options = run_root, fmt, options
        self.previous = self._claim(force)
        self.files: list[str] = []
        self.image_count = 0
        self.image_bytes = 0
        self._write_marker({"status": "writing"})
        self.images = DiskKeys(self.rel(_SEEN))

    def _claim(self, force: bool) -> dict | None:
        """The previous export's marker when the folder may be written, else ExportError."""
        if not os.path.isdir(self.path) or not os.listdir(self.path):
            return None
        old = read_marker(self.path)
        if old is None:
            problem = "holds files that no fusegen export wrote"
        elif old.get("run_dir") != self.run_root or old.get("format") != self.fmt:
            problem = f"holds the {old.get('format')} export of run {old.get('run_dir')}"
        else:
            return old
        if not force:
            raise ExportError(
                f"out dir {self.path} {problem}; choose another --out, or pass --force to write over it"
            )
        return old

    def rel(self, name: str) -> str:
        return os.path.join(self.path, name)

    def inside(self, name: str) -> str | None:
        """The path of `name` when it is a relative name that resolves inside the out dir (no absolute
        path, no `..`, no link leading out), else None."""
        parts = name.replace("\\", "/").split("/")
        if not name or os.path.isabs(name) or name.startswith(("~", "\\")) or ".." in parts or "\0" in name:
            return None
        path = self.rel(name)
        root = os.path.realpath(self.path)
        real = os.path.realpath(os.path.dirname(path))
        return path if real == root or real.startswith(root + os.sep) else None

    def image(self, struct: dict | None) -> str | None:
        """Write an HF image struct's bytes once; its path relative to the out dir (None stays None)."""
        if struct is None or struct.get("bytes") is None:
            return None
        data = struct["bytes"]
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{IMAGES}/{sha[:2]}/{sha[:32]}.{image_ext(data, struct.get('path'))}"
        if self.images.add(rel.encode()):
            self.image_count += 1
            if not os.path.isfile(self.rel(rel)):
                self._atomic(rel, lambda f: f.write(data))
            self.image_bytes += len(data)
        return rel

    def write_lines(self, name: str, records: Iterable[dict]) -> int:
        """JSONL, one record a line (UTF-8, not ASCII-escaped); returns the number of lines."""
        count = 0

        def write(f) -> None:
            nonlocal count
            for record in records:
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1

        self.write_with(name, write)
        return count

    def write_text(self, name: str, text: str) -> None:
        self.write_with(name, lambda f: f.write(text.encode("utf-8")))

    def write_with(self, name: str, write) -> None:
        """`write(binary file)` fills `name` (a temporary name first, renamed when done); recorded."""
        self._atomic(name, write)
        self.files.append(name)

    def copy(self, src_fs, src: str, name: str) -> None:
        """A run file into the out dir as `name`: hard-linked when both sit on one local disk (the data
        files are never modified in place), else copied; recorded."""
        final = self.rel(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{os.getpid()}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            with src_fs.open_input_stream(src) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, final)
        self.files.append(name)

    def _atomic(self, name: str, write) -> None:
        final = self.rel(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, final)

    def finish(self, summary: dict) -> dict:
        """Remove what an earlier export of this run wrote and this one did not; mark complete."""
        listed = (self.previous or {}).get("files", [])
        stale = {n for n in listed if isinstance(n, str)} - set(self.files) if isinstance(listed, list) else set()
        for name in stale:
            # The marker is a file in a folder anyone may have written: only names that stay inside
            # the out dir are removed, whatever the marker says.
            path = self.inside(name)
            if path is None:
                log.warning("export: %s names %r, which is not a file inside %s; left alone", MARKER, name, self.path)
            elif os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
        if self.previous is not None:
            self._remove_stale_images()
        self.images.close()
        return self._write_marker({"status": "complete", **summary})

    def abandon(self) -> None:
        """The export failed: drop the scratch (the marker still says `writing`; a re-run redoes it)."""
        self.images.close()

    def _remove_stale_images(self) -> None:
        root = self.rel(IMAGES)
        for folder, _, names in os.walk(root):
            for name in names:
                rel = os.path.relpath(os.path.join(folder, name), self.path).replace(os.sep, "/")
                if rel.encode() not in self.images:
                    os.remove(os.path.join(folder, name))

    def _write_marker(self, extra: dict) -> dict:
        marker = {
            "format": self.fmt, "run_dir": self.run_root, "fusegen_version": __version__,
            "options": self.options, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": list(self.files), "images": self.image_count, **extra,
        }
        os.makedirs(self.path, exist_ok=True)
        self._atomic(MARKER, lambda f: f.write((json.dumps(marker, indent=2) + "\n").encode("utf-8")))
        return marker

