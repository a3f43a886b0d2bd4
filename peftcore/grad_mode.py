"""no_grad(): forwards that no backward will follow, so the engine keeps no activations.

As torch.no_grad: inside the block a model's forward reuses one set of buffers for all its
layers (inference memory is a fraction of training memory) and backward() raises.
"""
import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    previous = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous
