"""peftcore: parameter-efficient fine-tuning on a C engine over BLIS."""
import os as _os

# Idle OpenMP threads of the engine wait spinning for a short while (10,000 rounds, tens of
# microseconds) before they sleep. The engine's parallel regions follow each other closely,
# and sleeping at once (OMP_WAIT_POLICY=PASSIVE) made every region wake its threads: 3-5 %
# of a 2-thread train step. Longer spins steal the cores from other processes: two 2-thread
# trainings sharing 2 cores lost 6 % at 30,000 rounds and 16 % at 100,000 (libgomp's default
# is 300,000), nothing at 10,000.
# The user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; libgomp reads them once, when loaded.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from . import _C  # noqa: E402
from . import functional
from ._C import Tensor

for _note in ("isa_note", "blis_arch_note"):  # PEFTCORE_ISA / BLIS_ARCH_TYPE ignored
    if _C.backend_info()[_note]:
        import warnings as _warnings

        _warnings.warn(_C.backend_info()[_note], RuntimeWarning, stacklevel=2)

# no thread may be inside the engine (or BLIS) when the process forks: a child cannot undo
# a mutex held by a thread it does not have
_os.register_at_fork(before=_C._before_fork, after_in_parent=_C._after_fork_in_parent,
                     after_in_child=_C._after_fork_in_child)


def backend_info():
    """The engine's instruction set (`isa`: baseline, avx2 or avx512, the best this CPU runs
    unless PEFTCORE_ISA names another; `isa_available`: all it runs), BLIS kernel set and
    version, thread count and the CPU's SIMD features (and, in a forked child held to one
    thread, why: fork_note). `gemm` says who packs the operands of matrix products:
    peftcore, feeding BLIS's own micro-kernel, or BLIS itself (PEFTCORE_GEMM=blis)."""
    return _C.backend_info()


def set_num_threads(n):
    """Threads used by BLIS and the engine's own kernels (default: usable cores)."""
    from .utils.checks import is_int

    if not is_int(n):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    if not 1 <= n <= 1024:
        raise ValueError(f"set_num_threads expects an int in [1, 1024], got {n}")
    n = int(n)
    if _C.set_num_threads(n) < n:
        import warnings

        warnings.warn(_C.backend_info()["fork_note"], RuntimeWarning, stacklevel=2)


def get_num_threads():
    return _C.get_num_threads()


def from_numpy(array):
    """Wrap a C-contiguous float32/int32/int64 array as a Tensor without copying."""
    return Tensor(array)


__version__ = "0.1.0"

__all__ = [
    "Tensor", "from_numpy", "functional", "backend_info", "set_num_threads", "get_num_threads",
    "AutoModel", "AutoModelForSequenceClassification", "EncoderConfig", "Parameter", "optim",
    "no_grad", "is_grad_enabled", "PeftConfig", "PeftType", "TaskType", "clip_grad_norm_",
    "PeftModel", "PeftModelForSequenceClassification", "get_peft_model", "LoraConfig",
    "IA3Config", "BitFitConfig", "BnConfig", "SeqBnConfig", "DoubleSeqBnConfig", "manual_seed",
    "UniPELTConfig", "ConfigUnion",
    "PromptTuningConfig", "PromptEncoderConfig", "PrefixTuningConfig",
]


from .models import (AutoModel, AutoModelForSequenceClassification, EncoderConfig,  # noqa: E402
                     Parameter)
from . import optim  # noqa: E402
from .grad_mode import is_grad_enabled, no_grad  # noqa: E402
from .config import PeftConfig, PeftType, TaskType  # noqa: E402
from .optim import clip_grad_norm_  # noqa: E402
from .peft_model import PeftModel, PeftModelForSequenceClassification, get_peft_model  # noqa: E402
from .tuners import (BitFitConfig, BnConfig, DoubleSeqBnConfig, IA3Config, LoraConfig,  # noqa: E402
                     SeqBnConfig)
from .tuners.unipelt import ConfigUnion, UniPELTConfig  # noqa: E402
from .tuners import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig  # noqa: E402
from .utils.random import manual_seed  # noqa: E402
