"""Execute chapters of the book in place, top to bottom, and store them clean.

    python scripts/execute_notebooks.py book/07-three-ways.ipynb [more notebooks]

Runs each notebook in full mode (``SAGAN_TUTORIAL_QUICK`` unset) in a fresh kernel whose working
folder is the repository root, as the book build runs it, then removes what would change at
every run without changing the content: the per-cell execution timestamps. Stream outputs are
merged as Jupyter shows them (carriage returns of progress bars resolved).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _resolve_carriage_returns(text: str) -> str:
    """What a terminal shows for text with \\r: each line keeps what was written last."""
    return "\n".join(line.split("\r")[-1] for line in text.split("\n"))


def clean(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged = []
        for output in cell.outputs:
            if output.output_type == "stream" and merged and merged[-1].output_type == "stream" \
                    and merged[-1].name == output.name:  # fmt: skip
                merged[-1].text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = _resolve_carriage_returns(
                    re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output.text)
                )
        cell.outputs = merged


def execute(path: Path, timeout: int) -> None:
    notebook = nbformat.read(path, as_version=4)
    env_quick = os.environ.pop("SAGAN_TUTORIAL_QUICK", None)
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()  # fmt: skip
    finally:
        if env_quick is not None:
            os.environ["SAGAN_TUTORIAL_QUICK"] = env_quick
    clean(notebook)
    nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"executing {path}", file=sys.stderr, flush=True)
        execute(path, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
