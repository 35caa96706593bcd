"""``python -m cli``: the ``musicinterp`` command without its console script."""

import sys

from cli import main

sys.exit(main())
