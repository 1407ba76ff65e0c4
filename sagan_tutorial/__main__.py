"""``python -m sagan_tutorial``: see :mod:`sagan_tutorial.cli`."""

from .cli import main

raise SystemExit(main())
