"""A Trainer in the spirit of transformers' Trainer / TrainingArguments (same argument names
where the meaning is the same), for any peftcore model: a PeftModel of any method, or a base
model whose parameters all train (full fine-tuning).

One optimisation step: ``gradient_accumulation_steps`` micro-batches of
``per_device_train_batch_size`` rows, each forward → loss → backward, the loss of each
micro-batch weighted so the accumulated gradient is the large batch's (the mean over all its
rows, or over their class weights); then the gradient norm (clipped to ``max_grad_norm``),
AdamW (no weight decay on biases and LayerNorm), the schedule. Then, when due: a log line,
an evaluation (early stopping, best model), a checkpoint.

Data order: epoch e's rows are ``default_rng([seed, e])``'s permutation (after oversampling,
drawn from the same generator), so the order depends on the seed alone, not on the batch
size or on where a run was resumed.

Checkpoints (``output_dir/checkpoint-<step>/``): the trainable parameters, the optimizer's
state, the schedule's step, the model's dropout stream position, the data position, the best
metric so far and early stopping's count, the adapter (HF PEFT files); ``trainer_state.json``
lists every file's SHA-256 and is written last. The folder is written under a temporary name
and renamed into place, so a kill at any moment leaves the last complete checkpoint as it
was. Resuming restores all of it: the run continues bit for bit as if never stopped (same
thread count and instruction set).

Logs: ``output_dir/log.jsonl``, one JSON object per optimisation step (step, epoch, loss,
learning_rate, grad_norm) and per evaluation (step, eval metrics), plus a tqdm bar.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import _C
from ..grad_mode import no_grad
from ..optim import AdamW, clip_grad_norm_
from ..optim.lr_scheduler import SCHEDULES, get_scheduler
from ..utils.checks import is_finite_real, is_int
from ..utils.io import atomic_write_bytes, read_safetensors, save_safetensors
from .data import iterate_batches

_STRATEGIES = ("no", "steps", "epoch")


@dataclass
class TrainingArguments:
    """transformers' names, where the meaning is the same. Additions: early_stopping_patience
    / early_stopping_threshold (transformers' EarlyStoppingCallback's), class_weights,
    oversample, time_budget."""

    output_dir: str | None = None
    learning_rate: float = 5e-4
    num_train_epochs: float = 1.0
    max_steps: int | None = None          # overrides epochs when set
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"     # linear, cosine, constant, constant_with_warmup
    warmup_ratio: float = 0.06
    warmup_steps: int = 0                 # > 0 overrides warmup_ratio
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    seed: int = 42
    eval_strategy: str | None = None      # no, steps, epoch; None: steps if eval_steps else no
    eval_steps: int | None = None         # evaluate every n steps (train() also at the end)
    save_strategy: str = "no"             # no, steps, epoch
    save_steps: int | None = None         # default: eval_steps
    save_total_limit: int | None = None   # older checkpoints deleted; the best one is kept
    logging_steps: int = 1
    metric_for_best_model: str | None = None   # e.g. "accuracy" or "eval_accuracy"
    greater_is_better: bool | None = None      # default: True, False for a loss
    load_best_model_at_end: bool = False
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    class_weights: object = None          # None, "balanced" or one weight per class
    oversample: bool = False              # repeat rare classes' rows up to the largest class
    disable_tqdm: bool = False
    time_budget: float | None = None      # stop after this many seconds (resumes included)

    def __post_init__(self):
        _check(self.learning_rate, "learning_rate", "a finite number > 0", is_finite_real, lambda v: v > 0)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "logging_steps"):
            _check(getattr(self, name), name, "an int >= 1", is_int, lambda v: v >= 1)
        _check(self.warmup_ratio, "warmup_ratio", "a number in [0, 1]", is_finite_real,
               lambda v: 0 <= v <= 1)
        _check(self.warmup_steps, "warmup_steps", "an int >= 0", is_int, lambda v: v >= 0)
        _check(self.weight_decay, "weight_decay", "a finite number >= 0", is_finite_real,
               lambda v: v >= 0)
        _check(self.seed, "seed", "an int", is_int, lambda v: True)
        if self.max_steps == -1:  # transformers' "unset"
            self.max_steps = None
        for name, what in (("max_steps", "None or an int >= 1"),
                           ("eval_steps", "None or an int >= 1"),
                           ("save_steps", "None or an int >= 1"),
                           ("save_total_limit", "None or an int >= 1"),
                           ("early_stopping_patience", "None or an int >= 1")):
            _check(getattr(self, name), name, what, is_int, lambda v: v >= 1, optional=True)
        _check(self.max_grad_norm, "max_grad_norm", "None, 0 (no clipping) or a finite number > 0",
               is_finite_real, lambda v: v >= 0, optional=True)
        _check(self.time_budget, "time_budget", "None or a finite number of seconds > 0",
               is_finite_real, lambda v: v > 0, optional=True)
        _check(self.early_stopping_threshold, "early_stopping_threshold", "a finite number >= 0",
               is_finite_real, lambda v: v >= 0)
        if self.max_steps is None:
            _check(self.num_train_epochs, "num_train_epochs", "a finite number > 0 (or set max_steps)",
                   is_finite_real, lambda v: v > 0)
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {list(SCHEDULES)}, got "
                             f"{self.lr_scheduler_type!r}")
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_steps else "no"
        for name in ("eval_strategy", "save_strategy"):
            if getattr(self, name) not in _STRATEGIES:
                raise ValueError(f"{name} must be one of {list(_STRATEGIES)}, got "
                                 f"{getattr(self, name)!r}")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy='steps' needs eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            if self.eval_steps is None:
                raise ValueError("save_strategy='steps' needs save_steps (or eval_steps)")
            self.save_steps = self.eval_steps
        if self.save_strategy != "no" and self.output_dir is None:
            raise ValueError(f"save_strategy={self.save_strategy!r} needs an output_dir")
        needs_eval = [name for name in ("load_best_model_at_end", "early_stopping_patience")
                      if getattr(self, name)]
        if needs_eval and self.eval_strategy == "no":
            raise ValueError(f"{needs_eval[0]} needs evaluations: set eval_strategy "
                             f"('steps' with eval_steps, or 'epoch')")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise ValueError(f"class_weights must be None, 'balanced' or one weight per class, "
                             f"got {self.class_weights!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.class_weights, np.ndarray):
            d["class_weights"] = self.class_weights.tolist()
        return d


def _check(value, name, what, kind, ok, optional=False):
    if value is None and optional:
        return
    if not kind(value) or not ok(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass
class EarlyStoppingCallback:
    """transformers' EarlyStoppingCallback, accepted by Trainer(callbacks=[...]): sets
    args.early_stopping_patience and early_stopping_threshold."""

    early_stopping_patience: int = 1
    early_stopping_threshold: float = 0.0


@dataclass
class TrainResult:
    steps: int
    train_seconds: float   # the whole run's, a resumed one's counted from its checkpoint's
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)   # (step, metrics)
    examples_per_second: float = 0.0
    stopped_early: bool = False
    best_metric: float | None = None
    best_step: int | None = None


def _model_inputs(batch):
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def predict_logits(model, encodings, batch_size: int = 128) -> np.ndarray:
    """Logits of every row (in row order), in eval mode under no_grad; restores the mode."""
    was_training = model.training
    model.eval()
    n = len(encodings["input_ids"])
    logits = None
    for batch in iterate_batches(encodings, None, batch_size, sort_by_length=True):
        with no_grad():
            out = model(**_model_inputs(batch)).logits
        if logits is None:
            logits = np.empty((n, out.shape[1]), np.float32)
        logits[batch["index"]] = out
    model.train(was_training)
    return logits


def evaluate(model, encodings, labels, batch_size: int = 128) -> dict:
    """Accuracy (and F1 of class 1 for binary tasks) in eval mode; restores the mode."""
    return _accuracy_f1(predict_logits(model, encodings, batch_size), np.asarray(labels))


# ------------------------------------------------------------------ losses


class _Loss:
    """The training loss of a problem type, as sums the Trainer can split over micro-batches:
    each row's weight (1, or its class weight) and the loss's gradient w.r.t. the logits."""

    def __init__(self, problem_type: str, num_labels: int, class_weights=None):
        self.problem_type = problem_type
        self.num_labels = num_labels
        self.weights = None if class_weights is None else np.asarray(class_weights, np.float32)

    def target(self, labels):
        if self.problem_type == "single_label_classification":
            return np.asarray(labels, np.int64).reshape(-1)
        return np.asarray(labels, np.float32).reshape(len(labels), -1)

    def denominator(self, labels) -> float:
        """What the mean divides by over these rows."""
        t = self.target(labels)
        if self.problem_type != "single_label_classification":
            return float(t.size)
        counted = t[t != -100]
        if self.weights is None:
            return float(len(counted))
        return float(self.weights[counted].astype(np.float64).sum())

    def forward_backward(self, logits, labels, scale):
        """(mean loss over these rows, its gradient times `scale`)."""
        t = self.target(labels)
        if self.problem_type == "regression":
            return _C.mse_forward(logits, t), _C.mse_backward(logits, t, scale)
        if self.problem_type == "multi_label_classification":
            return (_C.bce_with_logits_forward(logits, t),
                    _C.bce_with_logits_backward(logits, t, scale))
        return (_C.cross_entropy_forward(logits, t, -100, self.weights),
                _C.cross_entropy_backward(logits, t, -100, scale, self.weights))


def balanced_class_weights(labels, num_labels: int) -> np.ndarray:
    """scikit-learn's 'balanced': n / (num_labels · count of the class); a class absent from
    `labels` gets weight 1."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_labels).astype(np.float64)
    weights = np.ones(num_labels)
    present = counts > 0
    weights[present] = counts.sum() / (num_labels * counts[present])
    return weights.astype(np.float32)


# ------------------------------------------------------------------ checkpoints


CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run of another model, method or task."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX) or not path.is_dir():
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(output_dir) -> list[Path]:
    """Complete-looking checkpoint folders in output_dir, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(s, p) for p in folder.iterdir() if (s := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def read_checkpoint_state(path) -> dict:
    """trainer_state.json of a checkpoint, every file checked against its SHA-256; a
    truncated, missing or altered file raises ValueError naming it."""
    path = Path(path)
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {STATE_NAME})")
    try:
        state = json.loads(state_file.read_text())
        files = state["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{state_file}: corrupted ({type(exc).__name__}: {exc})") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f}: missing from the checkpoint")
        if _sha256(f) != digest:
            raise ValueError(f"{f}: corrupted or truncated (its SHA-256 differs from the one "
                             f"{STATE_NAME} records)")
    return state


def latest_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint in output_dir that reads whole; newer broken ones are skipped
    with a warning (and left as they are)."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            read_checkpoint_state(path)
        except ValueError as exc:
            warnings.warn(f"skipping checkpoint {path.name}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


# ------------------------------------------------------------------ the Trainer


class Trainer:
    """trainer = Trainer(model, args, train_dataset=(encodings, labels),
    eval_dataset=(encodings, labels) or {name: (encodings, labels)}, task="RTE")
    trainer.train(resume_from_checkpoint=None | True | path); trainer.evaluate().

    `task` (a GLUE task name) gives the official metrics and the problem type; else
    `compute_metrics(logits, labels) -> dict` (default: accuracy, or MSE for regression).
    Metrics are named as compute_metrics names them, plus "loss"; with several eval sets,
    those after the first carry the set's name as a prefix (e.g. "mismatched_accuracy").
    `run_identity` (a dict) is stored in checkpoints and must match on resume."""

    def __init__(self, model, args: TrainingArguments, train_dataset, eval_dataset=None,
                 task=None, compute_metrics=None, run_identity=None, callbacks=()):
        from .glue import get_task

        for callback in callbacks:
            if not isinstance(callback, EarlyStoppingCallback):
                raise TypeError(f"callbacks: only EarlyStoppingCallback is supported, got "
                                f"{type(callback).__name__}")
            args.early_stopping_patience = callback.early_stopping_patience
            args.early_stopping_threshold = callback.early_stopping_threshold
            args.__post_init__()

        self.model, self.args = model, args
        self.task = None if task is None else get_task(task)
        self.compute_metrics = compute_metrics
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.train_encodings, self.train_labels = self._check_dataset(train_dataset, "train")
        self.eval_sets = self._eval_sets(eval_dataset)
        config = model.config
        self.num_labels = config.num_labels
        if self.task is not None:
            if self.task.num_labels != self.num_labels:
                raise ValueError(f"{self.task.name} has {self.task.num_labels} label(s), the "
                                 f"model's head {self.num_labels}")
            problem = self.task.problem_type
        elif config.problem_type is not None:
            problem = config.problem_type
        elif self.num_labels == 1:
            problem = "regression"
        elif self.train_labels.dtype.kind in "iu":
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
        self.problem_type = problem
        if args.oversample and problem != "single_label_classification":
            raise ValueError(f"oversample applies to single-label classification, not {problem}")
        self.class_weights = self._class_weights()
        self.loss = _Loss(problem, self.num_labels, self.class_weights)
        self.metric_names = self._metric_names()
        self.best_metric_name = self._best_metric_name()
        self.greater_is_better = (args.greater_is_better if args.greater_is_better is not None
                                  else not self.best_metric_name.endswith("loss"))
        self.identity = self._identity(run_identity)
        self.output_dir = None if args.output_dir is None else Path(args.output_dir)

    # ------------------------------------------------------------ set-up checks

    @staticmethod
    def _check_dataset(dataset, what):
        try:
            encodings, labels = dataset
        except (TypeError, ValueError):
            raise TypeError(f"{what}_dataset must be (encodings, labels)") from None
        labels = np.asarray(labels)
        n = len(labels)
        if n == 0:
            raise ValueError(f"no {'training' if what == 'train' else what} examples: "
                             f"{what} labels are empty")
        rows = {k: len(v) for k, v in encodings.items()}
        if set(rows.values()) != {n}:
            raise ValueError(f"{what} encodings and labels must have the same number of rows, "
                             f"got {rows} and {n} labels")
        return encodings, labels

    def _eval_sets(self, eval_dataset):
        if eval_dataset is None:
            if self.args.eval_strategy != "no":
                raise ValueError(f"eval_strategy={self.args.eval_strategy!r} needs an eval_dataset")
            return {}
        if isinstance(eval_dataset, dict):
            if not eval_dataset:
                raise ValueError("eval_dataset is an empty dict")
            return {name: self._check_dataset(d, f"eval ({name})") for name, d in eval_dataset.items()}
        return {"eval": self._check_dataset(eval_dataset, "eval")}

    def _class_weights(self):
        w = self.args.class_weights
        if w is None:
            return None
        if self.problem_type != "single_label_classification":
            raise ValueError(f"class_weights apply to single-label classification, not "
                             f"{self.problem_type}")
        if isinstance(w, str):  # "balanced" (checked by TrainingArguments)
            return balanced_class_weights(self.train_labels, self.num_labels)
        w = np.asarray(w, np.float64)
        if w.shape != (self.num_labels,) or not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"class_weights must be {self.num_labels} finite numbers >= 0, "
                             f"got {self.args.class_weights!r}")
        return w.astype(np.float32)

    def _metric_names(self) -> list[str]:
        if self.task is not None:
            base = list(self.task.metrics)
        elif self.compute_metrics is not None:
            base = None  # known after the first evaluation
        else:
            base = ["mse"] if self.problem_type == "regression" else ["accuracy"]
        if base is None:
            return None
        names = []
        for i, name in enumerate(self.eval_sets or {"eval": None}):
            prefix = "" if i == 0 else f"{name}_"
            names += [prefix + m for m in [*base, "loss"]]
        return names

    def _best_metric_name(self) -> str:
        name = self.args.metric_for_best_model
        if name is None:
            if self.metric_names is None:
                return "loss"
            return self.metric_names[0]
        name = name.removeprefix("eval_")
        if self.metric_names is not None and name not in self.metric_names:
            whose = self.task.name if self.task is not None else "this run"
            raise ValueError(f"metric_for_best_model {self.args.metric_for_best_model!r} is not "
                             f"a metric of {whose}; its metrics: {self.metric_names}")
        return name

    def _identity(self, extra) -> dict:
        model = self.model
        config = model.config
        if hasattr(model, "peft_config"):
            method = {name: {k: v for k, v in c.to_dict().items()
                             if k not in ("inference_mode", "base_model_name_or_path", "revision")}
                      for name, c in model.peft_config.items()}
        else:
            method = "full fine-tuning"
        emb = next(p for n, p in model.named_parameters() if n.endswith("word_embeddings.weight"))
        fingerprint = hashlib.sha256(np.ascontiguousarray(np.asarray(emb)[:256]).tobytes())
        return {"model": {"model_type": config.model_type, "hidden_size": config.hidden_size,
                          "num_hidden_layers": config.num_hidden_layers,
                          "vocab_size": config.vocab_size, "num_labels": config.num_labels,
                          "word_embeddings_sha256": fingerprint.hexdigest()},
                "method": json.loads(json.dumps(method, default=str)),
                "task": self.task.name if self.task is not None else None,
                "trainable": {n: list(p.shape) for n, p in self.params},
                **({"run": json.loads(json.dumps(extra, default=str))} if extra else {})}

    # ------------------------------------------------------------ data order

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.args.seed, epoch])
        rows = np.arange(len(self.train_labels))
        if self.args.oversample:
            rows = oversample_indices(self.train_labels, rng)
        return rows[rng.permutation(len(rows))]

    def _epoch_rows(self) -> int:
        if self.args.oversample:
            counts = np.unique(self.train_labels, return_counts=True)[1]
            return int(counts.max()) * len(counts)
        return len(self.train_labels)

    def _steps_per_epoch(self) -> int:
        batches = -(-self._epoch_rows() // self.args.per_device_train_batch_size)
        return -(-batches // self.args.gradient_accumulation_steps)

    def _batch(self, rows):
        enc = self.train_encodings
        width = int(enc["attention_mask"][rows].sum(axis=1).max())
        batch = {k: v[rows, :width] for k, v in enc.items()}
        batch["labels"] = self.train_labels[rows]
        return batch

    # ------------------------------------------------------------ evaluation

    def evaluate(self) -> dict:
        """Every eval set's metrics (and loss), named as in metric_names."""
        out = {}
        for i, (name, (enc, labels)) in enumerate(self.eval_sets.items()):
            logits = predict_logits(self.model, enc, self.args.per_device_eval_batch_size)
            if self.task is not None:
                from .metrics import compute_metrics
                metrics = compute_metrics(self.task, logits, labels)
            elif self.compute_metrics is not None:
                metrics = dict(self.compute_metrics(logits, labels))
            elif self.problem_type == "regression":
                metrics = {"mse": float(np.mean((logits.reshape(labels.shape) - labels) ** 2))}
            else:
                metrics = {"accuracy": float((logits.argmax(-1) == labels).mean())}
            loss = self.loss.forward_backward(logits, labels, 0.0)[0]
            metrics["loss"] = float(loss)
            prefix = "" if i == 0 else f"{name}_"
            out.update({prefix + k: float(v) for k, v in metrics.items()})
        if self.metric_names is None:  # custom compute_metrics: check the name now
            self.metric_names = list(out)
            self.best_metric_name = self._best_metric_name()
            if self.args.greater_is_better is None:
                self.greater_is_better = not self.best_metric_name.endswith("loss")
        return out

    # ------------------------------------------------------------ checkpoints

    def _trainable_state(self) -> dict:
        return {n: np.array(p, copy=True) for n, p in self.params}

    def _load_trainable(self, tensors: dict, where):
        missing = [n for n, _ in self.params if n not in tensors]
        if missing:
            raise CheckpointMismatch(f"{where}: lacks trainable parameters {missing[:3]}")
        for n, p in self.params:
            if tuple(tensors[n].shape) != tuple(p.shape):
                raise CheckpointMismatch(f"{where}: {n} has shape {tuple(tensors[n].shape)}, "
                                         f"the model's {tuple(p.shape)}")
        for n, p in self.params:
            p[...] = tensors[n]

    def _save_checkpoint(self, state: dict) -> Path:
        step = state["global_step"]
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_safetensors(tmp / "trainable.safetensors", self._trainable_state(), metadata={})
        opt = self.optimizer.state_dict()
        arrays = {}
        for i, st in opt["state"].items():
            arrays[f"{i}.exp_avg"] = st["exp_avg"]
            arrays[f"{i}.exp_avg_sq"] = st["exp_avg_sq"]
        save_safetensors(tmp / "optimizer.safetensors", arrays, metadata={})
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(tmp)   # the adapter, as HF PEFT files
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        full = {**state, "identity": self.identity, "files": files,
                "optimizer": {"steps": {str(i): st["step"] for i, st in opt["state"].items()},
                              "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                               | {"params": g["params"]}
                                               for g in opt["param_groups"]]},
                "scheduler": self.scheduler.state_dict(),
                "model_forwards": _base(self.model)._forwards,
                "args": self.args.to_dict()}
        atomic_write_bytes(tmp / STATE_NAME, json.dumps(full, indent=1, default=str).encode())
        if final.exists():  # a broken one of the same step (skipped on resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        from ..utils.io import _fsync_dir
        _fsync_dir(str(self.output_dir))
        self._rotate_checkpoints(state.get("best_checkpoint"))
        return final

    def _rotate_checkpoints(self, best):
        limit = self.args.save_total_limit
        if limit is None:
            return
        checkpoints = list_checkpoints(self.output_dir)
        keep = set(checkpoints[-limit:])
        if best is not None:
            keep.add(Path(best))
            if len(keep) > limit and limit >= 1:  # the best counts towards the limit
                keep = {Path(best), *checkpoints[-max(limit - 1, 1):]}
        for path in checkpoints:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def _resume(self, path):
        """Load a checkpoint into the model, optimizer and schedule -> the trainer state."""
        if path is True:
            if self.output_dir is None:
                raise ValueError("resume_from_checkpoint=True needs args.output_dir")
            path = latest_checkpoint(self.output_dir)
            if path is None:
                raise ValueError(f"no complete checkpoint in {self.output_dir} to resume from")
        path = Path(path)
        state = read_checkpoint_state(path)
        self._check_identity(state.get("identity", {}), path)
        tensors = read_safetensors(path / "trainable.safetensors")
        arrays = read_safetensors(path / "optimizer.safetensors")
        opt = state["optimizer"]
        opt_state = {int(i): {"step": step, "exp_avg": arrays[f"{i}.exp_avg"],
                              "exp_avg_sq": arrays[f"{i}.exp_avg_sq"]}
                     for i, step in opt["steps"].items()}
        # everything is read and checked before anything changes
        self._load_trainable(tensors, path)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": opt["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        _base(self.model)._forwards = int(state["model_forwards"])
        return state, path

    def _check_identity(self, saved: dict, path):
        for key, what in (("task", "task"), ("method", "PEFT method and settings"),
                          ("model", "model"), ("trainable", "trainable parameters"),
                          ("run", "run settings")):
            if saved.get(key) != self.identity.get(key):
                raise CheckpointMismatch(
                    f"{path} was written for another {what}: it has {_brief(saved.get(key))}, "
                    f"this run {_brief(self.identity.get(key))}")

    # ------------------------------------------------------------ the loop

    def _optimizer(self):
        decay = [p for n, p in self.params if not (n.endswith("bias") or "LayerNorm" in n)]
        no_decay = [p for n, p in self.params if n.endswith("bias") or "LayerNorm" in n]
        groups = [g for g in ({"params": decay, "weight_decay": self.args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        return AdamW(groups, lr=self.args.learning_rate)

    def _log(self, record: dict):
        if self.output_dir is not None:
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int):
        """Drop log lines after `step` (the run resumes from there)."""
        path = self.output_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                break  # a line cut by the kill: the rest is gone
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def _improved(self, value, best) -> bool:
        if best is None:
            return True
        if self.greater_is_better:
            return value > best and abs(value - best) > self.args.early_stopping_threshold
        return value < best and abs(value - best) > self.args.early_stopping_threshold

    def train(self, resume_from_checkpoint=None, progress: bool | None = None) -> TrainResult:
        from tqdm.auto import tqdm

        args = self.args
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        steps_per_epoch = self._steps_per_epoch()
        total = args.max_steps or max(1, math.ceil(steps_per_epoch * args.num_train_epochs))
        warmup = args.warmup_steps or int(args.warmup_ratio * total)
        self.optimizer = self._optimizer()
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, warmup, total)
        self.total_steps = total

        state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
                 "best_step": None, "best_checkpoint": None, "patience_count": 0,
                 "evals": [], "losses": [], "stopped_early": False, "train_seconds": 0.0}
        best_params = None
        if resume_from_checkpoint not in (None, False):
            saved, path = self._resume(resume_from_checkpoint)
            state.update({k: saved[k] for k in state if k != "train_seconds"})
            # the time trained up to the checkpoint (older checkpoints did not keep it: 0)
            state["train_seconds"] = float(saved.get("train_seconds", 0.0))
            if self.output_dir is not None:
                self._truncate_log(state["global_step"])
            if args.load_best_model_at_end and state["best_checkpoint"]:
                best = Path(state["best_checkpoint"])
                if best.is_dir():
                    read_checkpoint_state(best)
                    best_params = read_safetensors(best / "trainable.safetensors")
        result = TrainResult(steps=state["global_step"], train_seconds=0.0,
                             losses=list(state["losses"]),
                             evals=[tuple(e) for e in state["evals"]])
        show = not args.disable_tqdm if progress is None else progress
        bar = tqdm(total=total, initial=state["global_step"], disable=not show, unit="step",
                   dynamic_ncols=True)
        model = self.model
        model.train()
        before = state["train_seconds"]   # a resumed run's time counts what came before
        start = time.perf_counter()
        seen, smoothed = 0, None
        accum, bs = args.gradient_accumulation_steps, args.per_device_train_batch_size
        tensors = [p for _, p in self.params]
        stop = state["global_step"] >= total
        last_eval = None
        while not stop:
            order = self._epoch_order(state["epoch"])
            micro = [order[i:i + bs] for i in range(0, len(order), bs)]
            while state["batch_in_epoch"] < len(micro) and not stop:
                group = micro[state["batch_in_epoch"]:state["batch_in_epoch"] + accum]
                step_rows = np.concatenate(group)
                denominator = self.loss.denominator(self.train_labels[step_rows])
                step_loss = 0.0
                for rows in group:
                    batch = self._batch(rows)
                    out = model(**_model_inputs(batch))
                    share = (self.loss.denominator(batch["labels"]) / denominator
                             if denominator else 0.0)
                    loss, grad = self.loss.forward_backward(out.logits, batch["labels"], share)
                    if share:
                        step_loss += float(loss) * share
                    model.backward(grad)
                    seen += len(rows)
                if args.max_grad_norm:
                    grad_norm = clip_grad_norm_(tensors, args.max_grad_norm)
                else:
                    grad_norm = math.sqrt(_C.grad_sum_squares([p.tensor for p in tensors]))
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                state["global_step"] += 1
                state["batch_in_epoch"] += len(group)
                step = state["global_step"]
                result.losses.append(step_loss)
                state["losses"].append(step_loss)
                epoch_float = state["epoch"] + state["batch_in_epoch"] / len(micro)
                if step % args.logging_steps == 0 or step == total:
                    self._log({"step": step, "epoch": round(epoch_float, 6), "loss": step_loss,
                               "learning_rate": lr, "grad_norm": grad_norm})
                smoothed = step_loss if smoothed is None else 0.95 * smoothed + 0.05 * step_loss
                elapsed = before + time.perf_counter() - start
                postfix = {"loss": f"{smoothed:.4f}", "lr": f"{lr:.2e}"}
                if last_eval is not None:
                    postfix[self.best_metric_name] = f"{last_eval:.4f}"
                bar.set_postfix(postfix)
                bar.update(1)
                end_of_epoch = state["batch_in_epoch"] >= len(micro)
                if end_of_epoch:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                out_of_time = args.time_budget is not None and elapsed > args.time_budget
                last = step >= total or out_of_time
                # as transformers: a run ending mid-epoch ends its epoch there
                due_eval = self.eval_sets and (
                    (args.eval_strategy == "steps" and step % args.eval_steps == 0) or
                    (args.eval_strategy == "epoch" and (end_of_epoch or last)))
                if due_eval:
                    metrics = self.evaluate()
                    model.train()
                    result.evals.append((step, metrics))
                    state["evals"].append([step, metrics])
                    self._log({"step": step, "eval": metrics})
                    value = metrics[self.best_metric_name]
                    last_eval = value
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    if self._improved(value, state["best_metric"]):
                        state.update(best_metric=value, best_step=step, patience_count=0)
                        if args.load_best_model_at_end:
                            best_params = self._trainable_state()
                    else:
                        state["patience_count"] += 1
                    if (args.early_stopping_patience is not None and
                            state["patience_count"] >= args.early_stopping_patience):
                        state["stopped_early"] = True
                        last = True
                due_save = args.save_strategy != "no" and (
                    (args.save_strategy == "steps" and step % args.save_steps == 0) or
                    (args.save_strategy == "epoch" and (end_of_epoch or last)))
                if due_save:
                    state["train_seconds"] = before + time.perf_counter() - start
                    if state["best_step"] == step:
                        state["best_checkpoint"] = str(self.output_dir / f"{CHECKPOINT_PREFIX}{step}")
                    self._save_checkpoint(state)
                if last:
                    stop = True
                if end_of_epoch:
                    break
        bar.close()
        result.steps = state["global_step"]
        run_seconds = time.perf_counter() - start
        result.train_seconds = state["train_seconds"] = before + run_seconds
        result.examples_per_second = seen / max(run_seconds, 1e-9)
        result.stopped_early = state["stopped_early"]
        result.best_metric, result.best_step = state["best_metric"], state["best_step"]
        if args.load_best_model_at_end and best_params is not None:
            self._load_trainable(best_params, "the best model")
        self.state = state
        return result


def _brief(value) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 300 else text[:297] + "..."


def oversample_indices(labels, rng) -> np.ndarray:
    """Row indices with every class's rows repeated (drawn with replacement from `rng`, beyond
    one copy of each) up to the largest class's count."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    parts = []
    for c, n in zip(classes, counts):
        rows = np.flatnonzero(labels == c)
        parts.append(rows)
        if n < target:
            parts.append(rng.choice(rows, target - n, replace=True))
    return np.concatenate(parts)


def train(model, train_encodings, train_labels, args: TrainingArguments, eval_set=None,
          progress: bool = True) -> TrainResult:
    """Fine-tune the trainable parameters of `model` (a PeftModel or base model); evaluates
    `eval_set` (accuracy, F1) every args.eval_steps and at the end. Leaves the model in eval
    mode."""
    if eval_set is None and args.eval_strategy != "no":
        args.eval_strategy = "no"
    trainer = Trainer(model, args, (train_encodings, train_labels), eval_dataset=eval_set,
                      compute_metrics=_accuracy_f1 if eval_set is not None else None)
    result = trainer.train(progress=progress)
    if eval_set is not None and (not result.evals or result.evals[-1][0] != result.steps):
        result.evals.append((result.steps, evaluate(model, *eval_set,
                                                    args.per_device_eval_batch_size)))
    model.eval()
    return result


def _accuracy_f1(logits, labels):
    """Accuracy of logits' argmax against labels, and F1 of class 1 for binary labels."""
    predictions = logits.argmax(-1)
    metrics = {"accuracy": float((predictions == labels).mean())}
    if labels.max(initial=0) <= 1:
        tp = int(((predictions == 1) & (labels == 1)).sum())
        precision = tp / max(1, int((predictions == 1).sum()))
        recall = tp / max(1, int((labels == 1).sum()))
        metrics["f1"] = 2 * precision * recall / max(1e-12, precision + recall)
    return metrics
