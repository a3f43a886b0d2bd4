"""Learning-rate schedules over an optimizer's param groups.

torch's names (``LambdaLR``, ``LinearLR``, ``ConstantLR``, ``CosineAnnealingLR``,
``StepLR``, ``ExponentialLR``) and transformers' (``get_linear_schedule_with_warmup``,
``get_cosine_schedule_with_warmup``, ``get_constant_schedule``,
``get_constant_schedule_with_warmup``, ``get_scheduler``). Every schedule sets each group's
lr to ``initial_lr · factor(step)``, the factor a function of the step count alone, so a
schedule's state is one integer (``last_epoch``) and resuming from ``state_dict()`` gives the
same lrs bit for bit.
"""
from __future__ import annotations

import math

from ..utils.checks import is_finite_real, is_int


class LambdaLR:
    """Sets each group's lr to initial_lr · lr_lambda(step) (as torch's LambdaLR)."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be a function of the step, got {type(lr_lambda).__name__}")
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        self.last_epoch = 0
        self._apply(0)

    def _apply(self, step):
        """Set the lrs for `step`; a factor that is not a finite number >= 0 changes nothing."""
        factor = self.lr_lambda(step)
        if not (is_finite_real(factor) and factor >= 0):
            raise ValueError(f"lr_lambda({step}) returned {factor!r}; expected a finite number >= 0")
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self.last_epoch = step

    def step(self):
        self._apply(self.last_epoch + 1)

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        step = state.get("last_epoch") if isinstance(state, dict) else None
        if not is_int(step) or step < 0:
            raise ValueError(f"not a scheduler state (from state_dict()): {state!r:.100}")
        self._apply(int(step))


def _count(name, value):
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _factor(name, value, lo=0.0, hi=math.inf):
    if not is_finite_real(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


class LinearLR(LambdaLR):
    """torch's LinearLR: the factor goes linearly from start_factor to end_factor over
    total_iters steps, then stays."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        a, b = _factor("start_factor", start_factor, 1e-12, 1.0), _factor("end_factor", end_factor, 0.0, 1.0)
        n = _count("total_iters", total_iters)
        super().__init__(optimizer, lambda s: b if s >= n else a + (b - a) * s / n)


class ConstantLR(LambdaLR):
    """torch's ConstantLR: factor for the first total_iters steps, then 1."""

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5):
        f, n = _factor("factor", factor, 0.0, 1.0), _count("total_iters", total_iters)
        super().__init__(optimizer, lambda s: f if s < n else 1.0)


class StepLR(LambdaLR):
    """torch's StepLR: × gamma every step_size steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if not is_int(step_size) or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        g = _factor("gamma", gamma)
        super().__init__(optimizer, lambda s: g ** (s // step_size))


class ExponentialLR(LambdaLR):
    """torch's ExponentialLR: × gamma every step."""

    def __init__(self, optimizer, gamma):
        g = _factor("gamma", gamma)
        super().__init__(optimizer, lambda s: g ** s)


class CosineAnnealingLR(LambdaLR):
    """torch's CosineAnnealingLR in closed form: eta_min + (lr - eta_min)(1 + cos(π t/T_max))/2
    (per group; eta_min an absolute lr)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if not is_int(T_max) or T_max < 1:
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        self.T_max, self.eta_min = int(T_max), _factor("eta_min", eta_min)
        super().__init__(optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / self.T_max)))

    def _apply(self, step):
        cosine = self.lr_lambda(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.eta_min + (group["initial_lr"] - self.eta_min) * cosine
        self.last_epoch = step


# --------------------------------------------------------------- transformers' schedules


def _steps(num_warmup_steps, num_training_steps):
    if num_training_steps is None:
        return _count("num_warmup_steps", num_warmup_steps), None
    return (_count("num_warmup_steps", num_warmup_steps),
            _count("num_training_steps", num_training_steps))


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    """transformers' schedule: linear warm-up from 0, then linear decay to 0."""
    warmup, total = _steps(num_warmup_steps, num_training_steps)

    def lr_lambda(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(optimizer, lr_lambda)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                    num_cycles=0.5):
    """transformers' schedule: linear warm-up, then a cosine from 1 to 0 over num_cycles
    periods (0.5: half a cosine, down to 0 at the last step)."""
    warmup, total = _steps(num_warmup_steps, num_training_steps)
    cycles = _factor("num_cycles", num_cycles)

    def lr_lambda(step):
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))

    return LambdaLR(optimizer, lr_lambda)


def get_constant_schedule(optimizer):
    return LambdaLR(optimizer, lambda step: 1.0)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps):
    warmup, _ = _steps(num_warmup_steps, None)
    return LambdaLR(optimizer, lambda step: step / max(1, warmup) if step < warmup else 1.0)


SCHEDULES = {"linear": get_linear_schedule_with_warmup,
             "cosine": get_cosine_schedule_with_warmup,
             "constant": lambda opt, num_warmup_steps, num_training_steps: get_constant_schedule(opt),
             "constant_with_warmup": lambda opt, num_warmup_steps, num_training_steps:
                 get_constant_schedule_with_warmup(opt, num_warmup_steps)}


def get_scheduler(name, optimizer, num_warmup_steps=0, num_training_steps=None):
    """transformers' get_scheduler: 'linear', 'cosine', 'constant', 'constant_with_warmup'."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler_type {name!r}; known: {list(SCHEDULES)}")
    if name in ("linear", "cosine") and num_training_steps is None:
        raise ValueError(f"the {name} schedule needs num_training_steps")
    return SCHEDULES[name](optimizer, num_warmup_steps=num_warmup_steps,
                           num_training_steps=num_training_steps)
