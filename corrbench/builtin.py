"""The core's own hook implementations, registered as one plugin named ``corrbench``.

Readouts (:mod:`corrbench.builtin_readouts`) and protocol presets (:mod:`corrbench.protocols`) go through
exactly the hooks a third-party plugin uses, so the core has no private path to its registries.
"""

from .builtin_readouts import register_readouts  # noqa: F401  (hook implementations found by pluggy)
from .protocols import register_protocols  # noqa: F401
