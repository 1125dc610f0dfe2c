"""Every module imports on its own, and no import chain leads back to where it started: module-level and
function-level imports alike (a lazy import only hides a cycle until the function runs)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "pipeline").rglob("*.py")
)


def module_imports(name: str) -> set[str]:
    """`pipeline.*` modules the module imports anywhere: at module level or inside a function."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / name.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle():
    graph = {m: module_imports(m) for m in MODULES}
    # Package __init__ files import their children by design; a child importing its package is not a cycle.
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    saved = {k: v for k, v in sys.modules.items() if k == "pipeline" or k.startswith("pipeline.")}
    for key in saved:
        del sys.modules[key]
    try:
        importlib.import_module(module)
    finally:
        for key in [k for k in sys.modules if k == "pipeline" or k.startswith("pipeline.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def test_importing_one_stage_imports_no_other_stage():
    """A Ray worker that unpickles one stage's function pays for that stage's imports only."""
    import subprocess

    code = ("import sys, pipeline.stages.doc2query; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.stages.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split("\n")[0] == "['pipeline.stages.doc2query']"


def test_stages_lists_every_stage_class_under_its_own_name():
    from pipeline.stages import STAGES
    from pipeline.tracks import TRACKS

    assert all(cls.name == name for name, cls in STAGES.items())
    # STAGES holds every track's stage classes and nothing else; a track may register a subclass of a
    # listed stage under the same name (the megapairs track's MegaPairsExport is an Export).
    # (Tests register tracks of their own; the shipped ones are gme and megapairs.)
    in_tracks = {cls for track in ("gme", "megapairs") for _, cls in TRACKS[track]}
    assert all(cls in STAGES.values() or issubclass(cls, STAGES[cls.name]) for cls in in_tracks)
    assert set(STAGES.values()) <= in_tracks
