"""A pytest plugin for nbval: keep each notebook's run, so that the notebooks run only once.

`make notebooks` copies this file as conftest.py next to copies of the chapters and runs nbval
there, in a virtual environment where the package is installed from its wheel. With
``--nbval-cache DIR`` every notebook whose cells all passed is stored, with the outputs nbval
received, in the jupyter-cache at DIR: the strict book build (``execute_notebooks: cache``,
which looks a notebook up by its code cells) then renders these outputs instead of running the
notebook a second time.

What nbval keeps of a cell differs a little from a notebook run in Jupyter: its stream outputs
are merged into one per stream, ahead of the cell's other outputs.

``--nbval-expect-package NAME`` (default sagan_tutorial) fails the session at once when NAME
would not be imported from this environment's site-packages, e.g. from a source checkout on the
path.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

try:
    from nbval.plugin import IPyNbCell
except ImportError:  # nbval not installed: this plugin has nothing to do
    IPyNbCell = None

_RUNS: dict[str, dict] = {}


def pytest_addoption(parser):
    group = parser.getgroup("nbval")
    group.addoption(
        "--nbval-cache",
        default=None,
        help="store each notebook that passed, with its outputs, in this jupyter-cache",
    )
    group.addoption(
        "--nbval-expect-package",
        default="sagan_tutorial",
        help="the package that must come from site-packages (empty: no check)",
    )


def pytest_sessionstart(session):
    name = session.config.getoption("--nbval-expect-package")
    if not name:
        return
    spec = importlib.util.find_spec(name)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    if origin is None or site not in origin.parents:
        raise pytest.UsageError(
            f"{name} is not imported from {site} but from {origin}: "
            f"install its wheel into this environment ({sys.prefix}) and run from elsewhere"
        )
    print(f"nbval_cache: {name} from {origin.parent}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if IPyNbCell is None or not isinstance(item, IPyNbCell) or call.when != "call":
        return
    report = outcome.get_result()
    run = _RUNS.setdefault(
        str(item.parent.path),
        {"notebook": item.parent.nb, "outputs": {}, "ok": True, "start": call.start},
    )
    run["stop"] = call.stop
    if report.passed and item.test_outputs is not None:
        run["outputs"][item.cell_num] = item.test_outputs
    else:
        run["ok"] = False


def _executed(notebook: nbformat.NotebookNode, outputs: dict[int, list]) -> nbformat.NotebookNode:
    """The notebook with nbval's outputs in its code cells, numbered as one run top to bottom."""
    notebook = copy.deepcopy(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code):
        cell.outputs = []
        for output in outputs[number]:
            output = nbformat.from_dict(dict(output))
            if output.output_type == "execute_result":
                output.execution_count = number + 1
            cell.outputs.append(output)
        cell.execution_count = number + 1
    return notebook


def pytest_sessionfinish(session, exitstatus):
    target = session.config.getoption("--nbval-cache")
    if not target or not _RUNS:
        return
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(target)
    stored = []
    for path, run in sorted(_RUNS.items()):
        cells = sum(cell.cell_type == "code" for cell in run["notebook"].cells)
        if not run["ok"] or len(run["outputs"]) != cells:
            continue  # a failed or skipped cell: the book build will run this one itself
        notebook = _executed(run["notebook"], run["outputs"])
        cache.cache_notebook_bundle(
            CacheBundleIn(
                notebook,
                path,
                data={"execution_seconds": run["stop"] - run["start"], "by": "nbval"},
            ),
            check_validity=False,
            overwrite=True,
        )
        stored.append(Path(path).name)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"nbval_cache: {len(stored)} of {len(_RUNS)} notebooks stored in {target} "
            f"({time.strftime('%H:%M:%S')})"
        )
