"""Optimizers and schedules: AdamW (engine kernel), gradient clipping, and the learning-rate
schedules (transformers' get_*_schedule_with_warmup here and in peftcore.optim.lr_scheduler,
with torch's scheduler classes)."""
from __future__ import annotations

import math

import numpy as np

from .. import _C
from ..models.parameter import Parameter
from ..utils.checks import is_finite_real, is_int


def _tensor_of(p):
    if isinstance(p, Parameter):
        return p.tensor
    if isinstance(p, _C.Tensor):
        return p
    raise TypeError(f"optimizer parameters must be peftcore Parameters, got {type(p).__name__}")


def _checked_hyper_parameters(group: dict, where: str) -> dict:
    """The AdamW settings found in `group`, checked (torch's messages); betas as a tuple."""
    checked = {}
    if "lr" in group:
        if not (is_finite_real(group["lr"]) and group["lr"] >= 0):
            raise ValueError(f"Invalid learning rate{where}: {group['lr']!r}")
        checked["lr"] = group["lr"]
    if "betas" in group:
        betas = group["betas"]
        try:
            pair = tuple(betas)
        except TypeError:
            pair = ()
        if len(pair) != 2 or not all(is_finite_real(b) and 0.0 <= b < 1.0 for b in pair):
            raise ValueError(f"Invalid betas{where}: {betas!r}; expected two numbers in [0, 1)")
        checked["betas"] = pair
    for key, label in (("eps", "epsilon value"), ("weight_decay", "weight_decay value")):
        if key in group:
            if not (is_finite_real(group[key]) and group[key] >= 0):
                raise ValueError(f"Invalid {label}{where}: {group[key]!r}")
            checked[key] = group[key]
    return checked


class AdamW:
    """torch.optim.AdamW's algorithm and interface (decoupled weight decay).

    `params`: an iterable of Parameters (or (name, Parameter) pairs), or of param-group
    dicts {"params": [...], "lr": ..., "weight_decay": ...}. State (exp_avg, exp_avg_sq)
    exists only for parameters with requires_grad, created on their first step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.defaults = _checked_hyper_parameters(
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), "")
        if isinstance(params, (Parameter, _C.Tensor, dict)):
            raise TypeError(f"params must be an iterable of Parameters or of param-group dicts, "
                            f"got a single {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        is_group = [isinstance(p, dict) for p in params]
        if any(is_group) and not all(is_group):
            raise TypeError("params must be all Parameters or all param-group dicts, not a mix")
        groups = params if is_group[0] else [{"params": params}]
        self.param_groups = []
        seen = set()
        for n, group in enumerate(groups):
            if "params" not in group:
                raise ValueError(f"param group {n} has no 'params' entry")
            where = f" in param group {n}"
            group = {**self.defaults, **group, **_checked_hyper_parameters(group, where)}
            members = group["params"]
            if isinstance(members, (Parameter, _C.Tensor)):
                members = [members]
            group["params"] = [_tensor_of(p[1] if isinstance(p, tuple) else p) for p in members]
            for tensor in group["params"]:
                if id(tensor) in seen:
                    raise ValueError(f"a parameter appears more than once{where} or in an "
                                     f"earlier group; each may be given once")
                seen.add(id(tensor))
            group.setdefault("initial_lr", group["lr"])
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # id(tensor) -> {"step", "exp_avg", "exp_avg_sq"}

    def _state_for(self, tensor):
        st = self.state.get(id(tensor))
        if st is None:
            shape = tensor.shape
            st = {"step": 0, "exp_avg": _C.Tensor.zeros(shape), "exp_avg_sq": _C.Tensor.zeros(shape),
                  "param": tensor}
            self.state[id(tensor)] = st
        return st

    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for tensor in group["params"]:
                if not tensor.requires_grad or tensor.grad is None:
                    continue
                st = self._state_for(tensor)
                st["step"] += 1
                _C.adamw_step(tensor, st["exp_avg"], st["exp_avg_sq"], st["step"],
                              float(group["lr"]), float(beta1), float(beta2),
                              float(group["eps"]), float(group["weight_decay"]))

    def zero_grad(self, set_to_none: bool = False):
        for group in self.param_groups:
            for tensor in group["params"]:
                if set_to_none:
                    tensor.grad = None
                else:
                    tensor.zero_grad()

    def state_dict(self) -> dict:
        """Like torch: state keyed by the parameter's position over all groups."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for tensor in group["params"]:
                index.setdefault(id(tensor), len(index))
                ids.append(index[id(tensor)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[k]: {"step": v["step"], "exp_avg": np.array(v["exp_avg"], copy=True),
                            "exp_avg_sq": np.array(v["exp_avg_sq"], copy=True)}
                 for k, v in self.state.items() if k in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        """Take state and group settings from state_dict() output; checked in full first, so
        a refused one changes nothing."""
        try:
            groups, saved_state = state_dict["param_groups"], state_dict["state"]
            if len(groups) != len(self.param_groups) or any(
                    len(g["params"]) != len(s["params"]) for g, s in zip(groups, self.param_groups)):
                raise ValueError("loaded state dict has a different number of parameter groups "
                                 "or parameters than this optimizer")
            tensors = {}
            for saved, group in zip(groups, self.param_groups):
                for i, tensor in zip(saved["params"], group["params"]):
                    tensors[int(i)] = tensor
            settings = [_checked_hyper_parameters(saved, f" in loaded param group {n}")
                        for n, saved in enumerate(groups)]
            new_state = {}
            for i, st in saved_state.items():
                if int(i) not in tensors:
                    raise ValueError(f"state for parameter {i}, which no param group lists")
                tensor = tensors[int(i)]
                m = np.asarray(st["exp_avg"], np.float32)
                v = np.asarray(st["exp_avg_sq"], np.float32)
                if m.shape != tuple(tensor.shape) or v.shape != tuple(tensor.shape):
                    raise ValueError(f"state for parameter {i} has shape {m.shape}, the parameter "
                                     f"{tuple(tensor.shape)}")
                step = st["step"]
                if not is_int(step) or step < 0:
                    raise ValueError(f"state for parameter {i} has step {step!r}; expected an int >= 0")
                mt, vt = _C.Tensor.zeros(tensor.shape), _C.Tensor.zeros(tensor.shape)
                np.asarray(mt)[...] = m
                np.asarray(vt)[...] = v
                new_state[id(tensor)] = {"step": int(step), "exp_avg": mt, "exp_avg_sq": vt,
                                         "param": tensor}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an optimizer state dict (from AdamW.state_dict()): "
                             f"{type(exc).__name__}: {exc}") from exc
        for saved, group, checked in zip(groups, self.param_groups, settings):
            group.update({k: v for k, v in saved.items() if k != "params"}, **checked)
        self.state = new_state


def clip_grad_norm_(parameters, max_norm, eps=1e-6):
    """Scale gradients so their global L2 norm is at most max_norm; returns the norm before."""
    if not (is_finite_real(max_norm) and max_norm >= 0):
        raise ValueError(f"max_norm must be a finite number >= 0, got {max_norm!r}")
    tensors = [_tensor_of(p[1] if isinstance(p, tuple) else p) for p in parameters]
    norm = math.sqrt(_C.grad_sum_squares(tensors))
    coef = float(max_norm) / (norm + eps)
    if coef < 1.0:
        _C.scale_grads(tensors, coef)
    return norm


from .lr_scheduler import (LambdaLR, get_constant_schedule,  # noqa: E402,F401
                           get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                           get_linear_schedule_with_warmup, get_scheduler)
from . import lr_scheduler  # noqa: E402,F401
