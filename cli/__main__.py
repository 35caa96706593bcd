"""``python -m musicinterp_cli``: the ``musicinterp`` command without its console script."""

import sys

from musicinterp_cli import main

sys.exit(main())
