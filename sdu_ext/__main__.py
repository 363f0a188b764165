"""``python -m sdu_ext``: the ``sdu-ext`` command (see :mod:`sdu_ext.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
