"""Give every chapter the same first code cell: install the book's package when it is missing.

    python scripts/install_cell.py            # insert or update the cell in book/*.ipynb

The cell installs ``sagan-tutorial`` from the repository named in ``_config.yml`` (the one place
the address is written; ``sagan_tutorial.book.REPOSITORY`` repeats it and a test compares them),
so that a notebook opened in Colab or any fresh Python runs as it does in the book. Where the
package is installed already (the book's own build, a clone) the cell does nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TAG = "install-package"


def repository() -> str:
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    if not match:
        raise SystemExit("_config.yml names no repository url")
    return match.group(1)


def source(url: str) -> str:
    return (
        "# In Colab or a fresh Python: install the book's package first (nothing happens\n"
        "# where it is installed already).\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("sagan_tutorial") is None:\n'
        f'    %pip install --quiet "sagan-tutorial @ git+{url}"'
    )


def update(path: Path, text: str) -> bool:
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if TAG in c.metadata.get("tags", [])]
    if cells:
        changed = cells[0].source != text
        cells[0].source = text
    else:
        cell = nbformat.v4.new_code_cell(text)
        cell.metadata["tags"] = [TAG, "hide-cell"]
        first_code = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
        notebook.cells.insert(first_code, cell)
        changed = True
    if changed:
        nbformat.validator.normalize(notebook)
        nbformat.write(notebook, path)
    return changed


def main() -> int:
    text = source(repository())
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        if update(path, text):
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
