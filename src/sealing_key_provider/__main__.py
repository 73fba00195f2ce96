"""``python -m sealing_key_provider``: the same CLI as the ``sealing-key-provider`` script (used by Gramine)."""

import sys

from .cli import main

sys.exit(main())
