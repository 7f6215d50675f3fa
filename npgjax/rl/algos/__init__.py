"""Policy-update rules behind one interface (:class:`Algorithm`), in a registry.

``ALGORITHMS`` maps a name to its :class:`Algorithm`; :func:`register_algorithm` adds
your own, which ``get_config`` and ``make_trainer`` then accept like the built-in ones.
"""

from __future__ import annotations

from npgjax.rl.algos.base import (
    DIAGNOSTICS,
    Algorithm,
    PolicyModel,
    PolicyUpdate,
    UpdateData,
    traced_fields,
)
from npgjax.rl.algos.enac import ENAC, ENACOptions
from npgjax.rl.algos.npg import NPG, NPGOptions
from npgjax.rl.algos.trpo import TRPO, TRPOOptions
from npgjax.rl.algos.vpg import VPG, VPGOptions

__all__ = [
    "ALGORITHMS",
    "DIAGNOSTICS",
    "Algorithm",
    "ENACOptions",
    "NPGOptions",
    "PolicyModel",
    "PolicyUpdate",
    "TRPOOptions",
    "UpdateData",
    "VPGOptions",
    "register_algorithm",
    "traced_fields",
]

#: The algorithms ``make_trainer`` knows, by name.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (NPG, TRPO, VPG, ENAC)}


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to :data:`ALGORITHMS` (replacing one of the same name).

    Args:
      algorithm: an :class:`Algorithm`.

    Returns:
      ``algorithm``, so this can be used as ``MY_ALGO = register_algorithm(...)``.

    Examples:
      >>> from npgjax.rl.algos import ALGORITHMS, register_algorithm
      >>> register_algorithm(ALGORITHMS["npg"]._replace(name="npg2")).name
      'npg2'
      >>> _ = ALGORITHMS.pop("npg2")
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"expected an Algorithm, got {type(algorithm).__name__}.")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm
