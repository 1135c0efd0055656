"""``python -m tlsgate`` is the ``tlsgate`` command."""

import sys

from tlsgate.cli import main

sys.exit(main())
