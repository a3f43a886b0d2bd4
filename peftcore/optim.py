"""Optimizers and schedules: AdamW (engine kernel), linear warm-up schedule, gradient clipping."""
from __future__ import annotations

import math

import numpy as np

from . import _C
from .models.parameter import Parameter


def _tensor_of(p):
    if isinstance(p, Parameter):
        return p.tensor
    if isinstance(p, _C.Tensor):
        return p
    raise TypeError(f"optimizer parameters must be peftcore Parameters, got {type(p).__name__}")


class AdamW:
    """torch.optim.AdamW's algorithm and interface (decoupled weight decay).

    `params`: an iterable of Parameters (or (name, Parameter) pairs), or of param-group
    dicts {"params": [...], "lr": ..., "weight_decay": ...}. State (exp_avg, exp_avg_sq)
    exists only for parameters with requires_grad, created on their first step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid betas: {betas}; each must be in [0, 1)")
        if not eps >= 0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self.defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            group = {**self.defaults, **group}
            group["params"] = [_tensor_of(p[1] if isinstance(p, tuple) else p)
                               for p in group["params"]]
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
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(s["params"]) for g, s in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups or "
                             "parameters than this optimizer")
        tensors = {}
        for saved, group in zip(groups, self.param_groups):
            for i, tensor in zip(saved["params"], group["params"]):
                tensors[i] = tensor
        new_state = {}
        for i, st in state_dict["state"].items():
            tensor = tensors[int(i)]
            m, v = np.asarray(st["exp_avg"], np.float32), np.asarray(st["exp_avg_sq"], np.float32)
            if m.shape != tuple(tensor.shape) or v.shape != tuple(tensor.shape):
                raise ValueError(f"state for parameter {i} has shape {m.shape}, the parameter "
                                 f"{tuple(tensor.shape)}")
            mt, vt = _C.Tensor.zeros(tensor.shape), _C.Tensor.zeros(tensor.shape)
            np.asarray(mt)[...] = m
            np.asarray(vt)[...] = v
            new_state[id(tensor)] = {"step": int(st["step"]), "exp_avg": mt, "exp_avg_sq": vt,
                                     "param": tensor}
        for saved, group in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if k == "betas" else v
        self.state = new_state


class LambdaLR:
    """Sets each group's lr to initial_lr · lr_lambda(step) (as torch's LambdaLR)."""

    def __init__(self, optimizer, lr_lambda):
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        self.last_epoch = 0
        self._apply()

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lr_lambda(self.last_epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    """transformers' schedule: linear warm-up from 0, then linear decay to 0."""
    if num_warmup_steps < 0 or num_training_steps < 0:
        raise ValueError("num_warmup_steps and num_training_steps must be >= 0")

    def lr_lambda(step):
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return LambdaLR(optimizer, lr_lambda)


def clip_grad_norm_(parameters, max_norm, eps=1e-6):
    """Scale gradients so their global L2 norm is at most max_norm; returns the norm before."""
    tensors = [_tensor_of(p[1] if isinstance(p, tuple) else p) for p in parameters]
    norm = math.sqrt(_C.grad_sum_squares(tensors))
    coef = float(max_norm) / (norm + eps)
    if coef < 1.0:
        _C.scale_grads(tensors, coef)
    return norm
