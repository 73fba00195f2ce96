"""Errors of the simulated platform.

They subclass :class:`~sealing_key_provider.errors.ConfigError` because a missing or damaged state
directory is an operator's configuration problem, and so that a service started on the simulator
reports it with the same machinery as any other bad configuration. Messages name the state directory
and what is wrong with it, never the platform secret or a key.
"""

from __future__ import annotations

from ..errors import ConfigError


class SimStateError(ConfigError):
    """The simulator's state directory is unreadable, inconsistent or was written by someone else."""

    code = "SIM_STATE_INVALID"


class SimStateNotFound(SimStateError):
    """No simulated platform has been initialised in the state directory yet."""

    code = "SIM_STATE_NOT_FOUND"
