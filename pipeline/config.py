"""Config loading: YAML values over frozen dataclass schemas (STYLE R13-R16).

A YAML file may name a parent with `extends: other.yaml` (resolved relative to the file); values
merge depth-first, then `--set key.sub=value` overrides apply. Unknown keys and values of the wrong
type stop the run before any work, with the dotted key and the file that set it in the message. A key
that was renamed (a config class's `RENAMED`: old key -> new dotted key) or a sub-config that used to be
a single string (its class's `SCALAR_FORM`: the field the string moved to) names the key to write now.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.errors import PipelineConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Return (merged values, origin map dotted-key -> file) following `extends` chains."""
    path = path.resolve()
    if path in seen:
        raise PipelineConfigError(f"config: `extends` loop through {path}")
    if not path.is_file():
        raise PipelineConfigError(f"config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PipelineConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PipelineConfigError(f"config: {path} must hold a mapping at the top level")
    parent = data.pop("extends", None)
    merged: dict = {}
    origins: dict[str, str] = {}
    if parent:
        merged, origins = _load_yaml(path.parent / parent, seen + (path,))
    _merge(merged, data, origins, str(path))
    return merged, origins


def _merge(dst: dict, src: dict, origins: dict[str, str], origin: str, prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, origin, dotted + ".")
        else:
            dst[key] = value
        _mark(origins, dotted, value, origin)


def _mark(origins: dict[str, str], dotted: str, value: Any, origin: str) -> None:
    origins[dotted] = origin
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origins, f"{dotted}.{k}", v, origin)


def apply_overrides(values: dict, origins: dict[str, str], overrides: list[str]) -> None:
    """Apply `--set a.b=value` strings in place; the value is parsed as YAML (`3`, `true`, `[a, b]`)."""
    for item in overrides:
        if "=" not in item:
            raise PipelineConfigError(f"config: --set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PipelineConfigError(f"config: --set {key}: {part} is not a section")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node[parts[-1]] = value
        _mark(origins, key.strip(), value, "--set")


def build(cls: type, values: Any, key: str, origins: dict[str, str]) -> Any:
    """Turn plain YAML values into an instance of dataclass `cls`, checking keys and types."""
    if dataclasses.is_dataclass(cls):
        if values is None:
            values = {}
        if not isinstance(values, dict):
            _not_a_mapping(cls, values, key, origins)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        _check_renamed(cls, values, key, origins)
        unknown = sorted(set(values) - names)
        if unknown:
            bad = f"{key}.{unknown[0]}" if key else unknown[0]
            _fail(bad, origins, f"is not a known key; known keys here: {', '.join(sorted(names))}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {
            name: build(hints[name], _over_default(fields[name], hints[name], values[name]),
                        f"{key}.{name}" if key else name, origins)
            for name in values
        }
        try:
            return cls(**kwargs)
        except PipelineConfigError as exc:
            # A range check names its field: cite where that field was set, not its whole section.
            field = getattr(exc, "field", "")
            where = f"{key}.{field}" if key and field else (field or key)
            # A shared sub-config (resources, index) labels its check with its own name: add the full key.
            named = f"`{where}` " if key and getattr(exc, "section", key) != key else ""
            raise PipelineConfigError(f"{exc} ({named}in {_origin_of(where, origins)})") from None
    return _coerce(cls, values, key, origins)


def _over_default(field: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A mapping for a sub-config whose field default is a customised instance (`default_factory=lambda:
    LLMConfig(model="tiny:qwen2_vl")`) overrides that instance key by key: `vlm: {max_new_tokens: 24}`
    keeps the stage's default model instead of falling back to the sub-config class's own defaults."""
    if (not isinstance(value, dict) or field.default_factory is dataclasses.MISSING
            or not dataclasses.is_dataclass(tp)):
        return value
    return _merged(to_dict(field.default_factory()), value)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_renamed(cls: type, values: dict, key: str, origins: dict[str, str]) -> None:
    """A key the config class lists in `RENAMED` (old key -> new key, relative to the class) stops the
    run with the new key's name, before the unknown-key error would hide what to write instead."""
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    for old in sorted(set(values) & set(renamed)):
        prefix = f"{key}." if key else ""
        _fail(f"{prefix}{old}", origins, f"was renamed: use `{prefix}{renamed[old]}`")


def _not_a_mapping(cls: type, value: Any, key: str, origins: dict[str, str]) -> typing.NoReturn:
    # A config class that was once a single string (`index: ivf`) names the field the string moved to.
    field = getattr(cls, "SCALAR_FORM", "")
    if field and isinstance(value, str):
        _fail(key, origins, f"is a mapping now: use `{key}.{field}: {value}`")
    _fail(key, origins, f"must be a mapping (got {value!r})")


def _coerce(tp: Any, value: Any, key: str, origins: dict[str, str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, origins)
            except PipelineConfigError as exc:
                errors.append(str(exc))
        _fail(key, origins, f"has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            _fail(key, origins, f"must be one of {', '.join(map(repr, args))} (got {value!r})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(key, origins, f"must be a list (got {value!r})")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{key}[{i}]", origins) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, origins, f"must be a mapping (got {value!r})")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, origins)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, origins, f"must be true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, origins, f"must be an integer (got {value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, origins, f"must be a number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, origins, f"must be a string (got {value!r})")
        return value
    return value


def _origin_of(key: str, origins: dict[str, str]) -> str:
    probe = key
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


def _fail(key: str, origins: dict[str, str], message: str) -> typing.NoReturn:
    raise PipelineConfigError(f"config: `{key}` {message} (set in {_origin_of(key, origins)})")


def check(condition: bool, stage: str, field: str, message: str) -> None:
    """`__post_init__` helper (R16): raise a config error naming stage and field."""
    if not condition:
        err = PipelineConfigError(f"{stage}: `{field}` {message}")
        err.field = field
        err.section = stage
        raise err


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
