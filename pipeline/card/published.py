"""The run config as a published card shows it: no path of the machine that ran it.

`run.yaml` records where the run read and wrote on its machine (the prompts folder, caches, index and
run dirs, often absolute). A card is public: those keys are left out, and any other value that is an
absolute local path (a corpus file, an image pool, an evaluation file) keeps only its last two
components behind `.../`. A URL naming a machine of the run's own network (an LLM server's `base_url` on
localhost, a private or link-local address, a host name without a dot) becomes `LOCAL_ENDPOINT`: a reader
cannot reach it and the run's network layout is not the reader's business. Relative paths and other URIs
(`s3://...`, `https://api.example.com/...`) are shown as they are.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

# Where the run read or wrote on its machine: nothing a reader of the card can use.
LOCAL_KEYS = frozenset({"prompts_dir", "cache_dir", "run_dir", "index_dir"})
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local_path(value: str) -> bool:
    """An absolute or home-relative path of this machine (POSIX, `~`, a Windows drive or share)."""
    return bool(_ABSOLUTE.match(value)) and not _URI.match(value)


LOCAL_ENDPOINT = "(an endpoint of the run's own network)"


def is_local_endpoint(value: str) -> bool:
    """An http(s) URL whose host is loopback, private, link-local or unqualified (no dot)."""
    if not re.match(r"^https?://", value, re.IGNORECASE):
        return False
    try:
        host = (urlsplit(value).hostname or "").rstrip(".")
    except ValueError:
        return True  # not a URL a reader could use either
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(".localhost") or "." not in host
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified


def short_path(value: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", value) if p and p != "~"]
    return ".../" + "/".join(parts[-2:]) if parts else "..."


def published_config(run_yaml: Any) -> Any:
    """`run_yaml` without machine-local keys, absolute paths shortened (recursively)."""
    if isinstance(run_yaml, dict):
        return {k: published_config(v) for k, v in run_yaml.items() if k not in LOCAL_KEYS}
    if isinstance(run_yaml, list):
        return [published_config(v) for v in run_yaml]
    if isinstance(run_yaml, str) and is_local_path(run_yaml):
        return short_path(run_yaml)
    if isinstance(run_yaml, str) and is_local_endpoint(run_yaml):
        return LOCAL_ENDPOINT
    return run_yaml
