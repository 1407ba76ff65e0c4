"""Serve MathJax from the built site, so that math renders with no network.

Sphinx loads MathJax 3 from a CDN by default. This extension copies MathJax 3.2.2's ES5 build from
the ``django-static-mathjax`` package (a pinned requirement: the files ship under
``mathjax/static/mathjax/es5``) into ``_static/mathjax`` of the HTML output and points
``mathjax_path`` at it (a relative path, which Sphinx takes from ``_static``). MathJax finds the
rest of its files next to the script it was loaded from: the CommonHTML fonts, the TeX extensions
that ``autoload`` fetches on a macro such as ``\\cancel``, and what its context menu can switch on
(the SVG output, the accessibility and speech components).

Registered in ``_config.yml`` under ``sphinx: local_extensions``.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

# The combined component the pages load: TeX input, CommonHTML output, the menu.
COMPONENT = "tex-chtml.js"
# What that component may fetch from its own folder at run time.
FOLDERS = [
    "output",  # chtml/fonts/woff-v2 (the fonts), svg.js and chtml.js (the menu's renderers)
    "input/tex/extensions",  # autoload and \require
    "a11y",  # the menu's accessibility options
    "sre",  # the speech rule engine's locale files (menu: speech, braille)
    "ui",  # menu, lazy typesetting, safe mode
]
TARGET = "mathjax"  # inside _static


def mathjax_root() -> Path:
    """The folder of MathJax's ES5 build inside the installed ``django-static-mathjax``."""
    try:
        root = files("mathjax").joinpath("static", "mathjax", "es5")
    except ModuleNotFoundError as error:
        raise ExtensionError(
            "offline_mathjax: the package django-static-mathjax is not installed "
            "(pip install -r requirements.txt)"
        ) from error
    with as_file(root) as path:  # an installed package is a folder: this is that folder
        path = Path(path)
    if not (path / COMPONENT).is_file():
        raise ExtensionError(f"offline_mathjax: {path / COMPONENT} is missing")
    return path


def set_mathjax_path(app: Sphinx, config: Config) -> None:
    mathjax_root()  # fail early, before reading the sources, when MathJax is not installed
    config.mathjax_path = f"{TARGET}/{COMPONENT}"  # relative: taken from _static


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    root = mathjax_root()
    target = Path(app.outdir) / "_static" / TARGET
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / COMPONENT, target / COMPONENT)
    licence = root.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, target / "LICENSE")
    for folder in FOLDERS:
        # copy only what changed, so that a rebuild stays quick
        shutil.copytree(
            root / folder,
            target / folder,
            dirs_exist_ok=True,
            copy_function=_copy_if_changed,
            ignore=shutil.ignore_patterns("*.map", "__pycache__"),
        )
    logger.info(f"offline_mathjax: MathJax copied into {target}")


def _copy_if_changed(source: str, destination: str) -> str:
    src, dst = Path(source), Path(destination)
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        if dst.stat().st_mtime >= src.stat().st_mtime:
            return destination
    return shutil.copy2(source, destination)


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")  # registers mathjax_path
    app.connect("config-inited", set_mathjax_path, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
