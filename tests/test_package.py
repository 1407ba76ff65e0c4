"""The package's shape: floors that import only downward, short modules, a light top level."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sagan_tutorial"
# From the ground floor up; a module may import its own floor and the floors below.
FLOORS = [
    {"_checks", "runtime", "attention", "spectral", "models", "losses", "idx", "data", "stats"},
    {"files", "grids", "checkpoint", "restore", "zoo"},
    {"config", "ema", "steps", "distributed", "runlog", "train"},
    {"distances", "digits", "inception", "metrics", "analysis"},
    {
        "viz",
        "drawings",
        "explorer",
        "shapes",
        "bench",
        "bench_attention",
        "gallery",
        "experiments",
        "book",
        "cli",
    },
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def imports(path: Path) -> set[str]:
    """The package modules that ``path`` imports (``from .x import``, ``from . import x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_every_module_has_a_floor_and_imports_only_downward():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(FLOOR), modules ^ set(FLOOR)
    for name in modules:
        upward = [dep for dep in imports(PACKAGE / f"{name}.py") if FLOOR[dep] > FLOOR[name]]
        assert not upward, f"{name} imports {upward} from a floor above its own"


def test_no_module_is_long():
    lengths = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(lengths.values()) <= 420, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


def test_the_top_level_loads_nothing_until_a_name_is_used():
    code = (
        "import sys; before = set(sys.modules); import sagan_tutorial; "
        "print(' '.join(sorted(set(sys.modules) - before))); "
        "import torch; before = set(sys.modules); from sagan_tutorial import *; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    at_import, at_use = (line.split() for line in run.stdout.splitlines())
    assert "torch" not in at_import and not [m for m in at_import if m.count("sagan_tutorial.")]
    heavy = {"matplotlib", "tqdm", "torchmetrics", "tensorboard", "IPython", "pandas"}
    assert not [m for m in at_use if m.split(".")[0] in heavy]
    ours = {m.split(".")[1] for m in at_use if m.startswith("sagan_tutorial.")}
    assert ours and all(FLOOR[m] <= 1 for m in ours), sorted(ours)


def test_every_top_level_name_loads():
    import sagan_tutorial

    for name in sagan_tutorial.__all__:
        assert getattr(sagan_tutorial, name).__name__ == name
    assert set(sagan_tutorial.__all__) <= set(dir(sagan_tutorial))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        sagan_tutorial.nothing  # noqa: B018


def test_every_shipped_data_file_is_in_the_wheel():
    """The chapters read results and weights from the installed package: a file that no
    package-data pattern names is missing from the wheel (and from a reader's install)."""
    import tomllib

    root = PACKAGE.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["sagan_tutorial"]
    shipped = [
        p.relative_to(PACKAGE).as_posix()
        for folder in ("results", "weights")
        for p in (PACKAGE / folder).rglob("*")
        if p.is_file()
    ]
    # as setuptools globs them: "*" does not cross a "/"
    globs = [re.compile(re.escape(p).replace(r"\*", "[^/]*") + "$") for p in patterns]
    missing = [f for f in shipped if not any(g.match(f) for g in globs)]
    assert shipped and not missing, missing
