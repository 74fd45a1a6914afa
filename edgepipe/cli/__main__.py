"""``python -m edgepipe.cli``."""

import sys

from . import main

sys.exit(main())
