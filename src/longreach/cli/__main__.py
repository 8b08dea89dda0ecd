"""``python -m longreach.cli``: the ``longreach`` command."""

import sys

from longreach.cli import main

sys.exit(main())
