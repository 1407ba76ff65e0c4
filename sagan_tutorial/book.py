"""Small helpers the book's notebooks share: figure style, numbers glued into the prose,
highlighted package source, Markdown tables.

They keep the notebooks runnable anywhere: :func:`glue` is ``myst_nb.glue`` when the book is
built and does nothing in a plain Jupyter or Colab session, where ``myst_nb`` is not installed.
"""

from __future__ import annotations

import inspect

__all__ = ["REPOSITORY", "glue", "markdown_table", "show_source", "style"]

# The one place the repository's address is written; the notebooks' install cell uses it too
# (tests/test_project.py checks that every notebook's first cell names this address).
REPOSITORY = "https://github.com/sagan-tutorial/sagan-tutorial"


def style() -> None:
    """Figures for the book: sharp on high-density screens, text at 9 pt or more."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "font.size": 10,
            "axes.titlesize": 10,
            "axes.labelsize": 10,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "legend.fontsize": 9,
            "figure.titlesize": 11,
        }
    )
    try:  # inline figures at twice the resolution (PNG, half the width attribute)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    except ImportError:  # not in a notebook
        pass


def glue(name: str, value, display: bool = False) -> None:
    """``myst_nb.glue(name, value, display)`` when building the book; a no-op elsewhere."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)


def show_source(obj) -> object:
    """The source of a package function or class, highlighted in a notebook (plain text
    elsewhere): what the book shows is the package's code as it is now."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def markdown_table(header: list[str], rows: list[list]) -> object:
    """A Markdown table that a notebook (and the built book) renders as a table."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))
