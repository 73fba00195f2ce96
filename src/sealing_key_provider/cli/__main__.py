"""``python -m sealing_key_provider.cli``: the same command line as the ``sealing-key-provider`` script."""

import sys

from .dispatch import main

sys.exit(main())
