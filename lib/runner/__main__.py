"""``python -m lib.runner``: see :mod:`lib.runner.cli`."""

import sys

from .cli import main

sys.exit(main())
