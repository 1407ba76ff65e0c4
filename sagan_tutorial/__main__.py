"""``python -m sagan_tutorial``: see :mod:`sagan_tutorial.cli`."""

import sys

try:
    from .cli import main  # imports torch: seconds, during which Ctrl-C must stay one line
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
