"""Parameters: NumPy views of engine memory that carry the engine's requires_grad flag."""
from __future__ import annotations

import numpy as np

from .. import _C


class Parameter(np.ndarray):
    """A float32 ndarray viewing an engine tensor, plus `requires_grad` and `grad`.

    Writing into it (``p[...] = values``) writes the engine's weights. Arithmetic on it
    returns plain ndarrays.
    """

    def __new__(cls, tensor: _C.Tensor):
        view = np.asarray(tensor).view(cls)
        view._tensor = tensor
        return view

    def __array_finalize__(self, obj):
        # slices and other derived arrays are plain views without the engine link
        if not hasattr(self, "_tensor"):
            self._tensor = None

    def __array_wrap__(self, array, context=None, return_scalar=False):
        plain = array.view(np.ndarray)
        return plain[()] if return_scalar else plain

    def _require_tensor(self):
        if self._tensor is None:
            raise AttributeError("this array is derived from a parameter, not a parameter")
        return self._tensor

    @property
    def requires_grad(self) -> bool:
        return self._require_tensor().requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {type(value).__name__}")
        self._require_tensor().requires_grad = bool(value)

    def requires_grad_(self, value: bool = True) -> "Parameter":
        self.requires_grad = value
        return self

    @property
    def grad(self):
        """The accumulated gradient (a NumPy view of engine memory), or None."""
        return self._require_tensor().grad

    @grad.setter
    def grad(self, value):
        self._require_tensor().grad = value

    @property
    def tensor(self) -> _C.Tensor:
        return self._require_tensor()

    def numel(self) -> int:
        return int(self.size)

    def __reduce__(self):
        return (np.array, (np.asarray(self).copy(),))

    def __repr__(self):
        body = np.array2string(self.view(np.ndarray), threshold=6, edgeitems=2)
        return f"Parameter({body}, requires_grad={self.requires_grad})"
