"""The ``sealing-key-provider`` command line: the top of the import graph and its composition root.

One module per command group (:mod:`.quote`, :mod:`.collateral`, :mod:`.sim`, :mod:`.serve`,
:mod:`.get_key`, :mod:`.demo`), dispatched by :mod:`.dispatch`. Only here (and in the demo) are the edges
chosen: Gramine or the simulator for ``serve``, configfs-tsm, ``/dev/tdx_guest`` or the simulator for
``get-key``.
"""

from __future__ import annotations

from .dispatch import build_parser, main

__all__ = ["build_parser", "main"]
