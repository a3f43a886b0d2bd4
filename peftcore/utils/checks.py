"""Type checks for settings: ints and finite reals, NumPy scalars included, bools excluded."""
from __future__ import annotations

import math
import numbers


def is_int(x) -> bool:
    """An integer (int or NumPy integer), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_finite_real(x) -> bool:
    """A real number (int, float or NumPy scalar), not a bool, neither NaN nor infinite."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
