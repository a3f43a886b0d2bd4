"""peftcore: parameter-efficient fine-tuning on a C engine over BLIS."""
from . import _C
from . import functional
from ._C import Tensor


def backend_info():
    """BLIS kernel set and version, thread count and the CPU's SIMD features."""
    return _C.backend_info()


def set_num_threads(n):
    """Threads used by BLIS and the engine's own kernels (default: usable cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads():
    return _C.get_num_threads()


def from_numpy(array):
    """Wrap a C-contiguous float32/int32/int64 array as a Tensor without copying."""
    return Tensor(array)


__version__ = "0.1.0"


from .models import (AutoModel, AutoModelForSequenceClassification, EncoderConfig,  # noqa: E402
                     Parameter)
