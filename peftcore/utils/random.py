"""The package's random stream for initialisation (seed it with peftcore.manual_seed)."""
import numpy as np

from .checks import is_int

_generator = np.random.default_rng(0)


def manual_seed(seed: int):
    """Seed the generator used for adapter and model initialisation."""
    global _generator
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    _generator = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    return _generator
