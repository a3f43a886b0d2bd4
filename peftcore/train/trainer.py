"""A small training loop: AdamW + linear warm-up, gradient clipping, tqdm progress, evaluation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..grad_mode import no_grad
from ..optim import AdamW, clip_grad_norm_, get_linear_schedule_with_warmup
from ..utils.checks import is_finite_real, is_int
from .data import iterate_batches


@dataclass
class TrainingArguments:
    learning_rate: float = 5e-4
    num_train_epochs: float = 1.0
    max_steps: int | None = None          # overrides epochs when set
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_steps: int | None = None         # evaluate every n steps (and at the end)
    time_budget: float | None = None      # stop training after this many seconds

    def __post_init__(self):
        _check(self.learning_rate, "learning_rate", "a finite number > 0", is_finite_real, lambda v: v > 0)
        _check(self.per_device_train_batch_size, "per_device_train_batch_size", "an int >= 1",
               is_int, lambda v: v >= 1)
        _check(self.per_device_eval_batch_size, "per_device_eval_batch_size", "an int >= 1",
               is_int, lambda v: v >= 1)
        _check(self.warmup_ratio, "warmup_ratio", "a number in [0, 1]", is_finite_real,
               lambda v: 0 <= v <= 1)
        _check(self.weight_decay, "weight_decay", "a finite number >= 0", is_finite_real,
               lambda v: v >= 0)
        _check(self.seed, "seed", "an int", is_int, lambda v: True)
        for name, what in (("max_steps", "None or an int >= 1"),
                           ("eval_steps", "None or an int >= 1")):
            _check(getattr(self, name), name, what, is_int, lambda v: v >= 1, optional=True)
        _check(self.max_grad_norm, "max_grad_norm", "None, 0 (no clipping) or a finite number > 0",
               is_finite_real, lambda v: v >= 0, optional=True)
        _check(self.time_budget, "time_budget", "None or a finite number of seconds > 0",
               is_finite_real, lambda v: v > 0, optional=True)
        if self.max_steps is None:
            _check(self.num_train_epochs, "num_train_epochs", "a finite number > 0 (or set max_steps)",
                   is_finite_real, lambda v: v > 0)


def _check(value, name, what, kind, ok, optional=False):
    if value is None and optional:
        return
    if not kind(value) or not ok(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)   # (step, metrics)
    examples_per_second: float = 0.0


def _model_inputs(batch):
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])


def evaluate(model, encodings, labels, batch_size: int = 128) -> dict:
    """Accuracy (and F1 of class 1 for binary tasks) in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    predictions = np.empty(len(labels), dtype=np.int64)
    for batch in iterate_batches(encodings, None, batch_size, sort_by_length=True):
        with no_grad():
            logits = model(**_model_inputs(batch)).logits
        predictions[batch["index"]] = logits.argmax(-1)
    model.train(was_training)
    labels = np.asarray(labels)
    metrics = {"accuracy": float((predictions == labels).mean())}
    if labels.max(initial=0) <= 1:
        tp = int(((predictions == 1) & (labels == 1)).sum())
        precision = tp / max(1, int((predictions == 1).sum()))
        recall = tp / max(1, int((labels == 1).sum()))
        metrics["f1"] = 2 * precision * recall / max(1e-12, precision + recall)
    return metrics


def train(model, train_encodings, train_labels, args: TrainingArguments, eval_set=None,
          progress: bool = True) -> TrainResult:
    """Fine-tune the trainable parameters of `model` (a PeftModel or base model)."""
    from tqdm.auto import tqdm

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    n = len(train_labels)
    if n == 0:
        raise ValueError("no training examples: train_labels is empty")
    rows = {k: len(v) for k, v in train_encodings.items()}
    if set(rows.values()) != {n}:
        raise ValueError(f"train_encodings and train_labels must have the same number of rows, "
                         f"got {rows} and {n} labels")
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n]
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = AdamW(groups, lr=args.learning_rate)
    steps_per_epoch = -(-n // args.per_device_train_batch_size)
    total = args.max_steps or max(1, int(steps_per_epoch * args.num_train_epochs))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total), total)

    result = TrainResult(steps=0, train_seconds=0.0)
    model.train()
    bar = tqdm(total=total, disable=not progress, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    seen, smoothed, epoch = 0, None, 0
    while result.steps < total:
        for batch in iterate_batches(train_encodings, train_labels,
                                     args.per_device_train_batch_size, shuffle=True,
                                     seed=args.seed + epoch):
            out = model(**_model_inputs(batch), labels=batch["labels"])
            model.backward()
            if args.max_grad_norm:
                clip_grad_norm_([p for _, p in params], args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            result.steps += 1
            seen += len(batch["labels"])
            result.losses.append(out.loss)
            smoothed = out.loss if smoothed is None else 0.95 * smoothed + 0.05 * out.loss
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{smoothed:.4f}", ex_s=f"{seen / elapsed:.0f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if eval_set is not None and args.eval_steps and result.steps % args.eval_steps == 0:
                result.evals.append((result.steps, evaluate(model, *eval_set,
                                                            args.per_device_eval_batch_size)))
                bar.write(f"step {result.steps}: {result.evals[-1][1]}")
            out_of_time = args.time_budget is not None and elapsed > args.time_budget
            if result.steps >= total or out_of_time:
                break
        epoch += 1
        if args.time_budget is not None and time.perf_counter() - start > args.time_budget:
            break
    bar.close()
    result.train_seconds = time.perf_counter() - start
    result.examples_per_second = seen / max(result.train_seconds, 1e-9)
    if eval_set is not None and (not result.evals or result.evals[-1][0] != result.steps):
        result.evals.append((result.steps, evaluate(model, *eval_set,
                                                    args.per_device_eval_batch_size)))
    model.eval()
    return result
