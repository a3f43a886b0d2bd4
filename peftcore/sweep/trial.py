"""One trial: load the task's data (K examples drawn with the seed), build the model, add the
method, train with the Trainer (checkpoints in the trial's folder), evaluate on dev.

With ``few_shot_dev: rest`` the trial follows the low-resource protocol of UniPELT (Mao et al.,
2022): the checkpoint is chosen on rows of the rest of train, and the score is the official
dev split's, which the training never saw. A trial whose model has gates (UniPELT, or
``use_gating``) also records their mean over the scored rows.

``run_trial`` runs in a process of its own (a spawned child of the local driver, or a Ray
worker) and returns plain data; the driver writes it to the database. A trial whose folder
holds a checkpoint resumes from it: the run continues bit for bit (same thread count and
instruction set), so its results equal an uninterrupted run's.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path


LOG_NAME = "trial.log"


def _rows(split, rows):
    a, b, y = split
    return [a[i] for i in rows], (None if b is None else [b[i] for i in rows]), y[rows]


def load_splits(task, data: dict, k, seed: int) -> tuple[dict, dict, dict]:
    """{"train": (a, b, y), dev name: (a, b, y), ...} for one trial (the dev sets choose the
    best checkpoint), the test sets {official dev name: (a, b, y)} when the dev rows come from
    the rest of train (else {}: the official dev sets are the dev sets), and the full train
    split (the tokenizer of a random model is built from it, the same for every trial)."""
    from ..train import glue, sampling

    spec = glue.get_task(task)
    if data["glue_dir"] is not None:
        splits = glue.load_glue(data["glue_dir"], spec, ["train", *spec.validation_splits])
    else:
        splits = glue.load_glue_from_datasets(spec, ["train", *spec.validation_splits])
    full = splits["train"]
    out = {}
    stratify = not spec.is_regression
    if k == "all":
        out["train"] = full
        dev_rows = None
        if data["few_shot_dev"] == "rest":
            raise ValueError("few_shot_dev 'rest' needs K < all (no rest of train is left)")
    else:
        rows, dev_rows = sampling.few_shot_split(full[2], int(k), seed, dev=data["few_shot_dev"],
                                                 dev_size=data["few_shot_dev_size"],
                                                 stratify=stratify)
        out["train"] = _rows(full, rows)
    official = {}
    for name in spec.validation_splits:
        split = splits[name]
        cap = data["max_dev_samples"]
        if cap is not None and cap < len(split[2]):  # the same rows for every trial
            split = _rows(split, sampling.sample_k(split[2], cap, 0, stratify))
        official[name] = split
    if dev_rows is None:
        return {**out, **official}, {}, full
    out["validation"] = _rows(full, dev_rows)
    return out, official, full


def _model_and_tokenizer(model_spec, full_train, max_length, num_labels, seed):
    from ..models import AutoModelForSequenceClassification, EncoderConfig
    from ..train import data

    if "path" in model_spec:
        path = model_spec["path"]
        tokenizer = data.load_tokenizer(path, max_length)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        return model, tokenizer
    opts = dict(model_spec["random"])
    a, b, _ = full_train
    texts = list(a) + (list(b) if b is not None else [])
    tokenizer = data.build_wordpiece_tokenizer_from_texts(texts, vocab_size=opts.pop("vocab_size", 2000),
                                                          max_length=max_length)
    settings = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=max(max_length, 64))
    settings.update(opts)
    config = EncoderConfig(vocab_size=tokenizer.get_vocab_size(), num_labels=num_labels, **settings)
    return AutoModelForSequenceClassification.from_config(config, seed=seed), tokenizer


def _peft_config(method, options):
    from .spec import available_methods

    cls = available_methods()[method]
    return None if cls is None else cls(task_type="SEQ_CLS", **options)


DEV_SHORT = {"validation": "eval", "validation_matched": "eval", "validation_mismatched": "mm"}


def run_trial(job: dict) -> dict:
    """job: {"config": trial config, "common": {model, data}, "out_dir", "threads",
    "time_budget"}. -> results (plain data)."""
    import peftcore
    from .. import get_peft_model
    from ..train import data, metrics, report
    from ..train.glue import get_task
    from ..train.trainer import Trainer, TrainingArguments, latest_checkpoint

    wall_start = time.perf_counter()
    cfg, common = job["config"], job["common"]
    peftcore.set_num_threads(job["threads"])
    out = Path(job["out_dir"])
    checkpoint = latest_checkpoint(out) if out.is_dir() else None
    if checkpoint is None and out.is_dir():
        shutil.rmtree(out)  # a run killed before its first checkpoint: start afresh
    out.mkdir(parents=True, exist_ok=True)
    spec = get_task(cfg["task"])
    seed = cfg["seed"]
    peftcore.manual_seed(seed)
    splits, tests, full = load_splits(spec, common["data"], cfg["k"], seed)
    max_length = common["data"]["max_length"]
    model, tokenizer = _model_and_tokenizer(common["model"], full, max_length, spec.num_labels, seed)
    a, b, y = splits["train"]
    train_enc = data.encode(tokenizer, a, b, max_length)
    def encoded(sets):
        return {DEV_SHORT.get(name, name): (data.encode(tokenizer, da, db, max_length), dy)
                for name, (da, db, dy) in sets.items() if name != "train"}

    dev_sets, test_sets = encoded(splits), encoded(tests)
    config = _peft_config(cfg["method"], cfg["options"])
    if config is not None:
        model = get_peft_model(model, config)
    targs = dict(cfg["training"])
    targs.setdefault("save_strategy", "epoch")
    targs.setdefault("save_total_limit", 1)
    targs = TrainingArguments(output_dir=str(out), seed=seed, disable_tqdm=True,
                              time_budget=job.get("time_budget"), **targs)
    identity = {"task": spec.name, "k": cfg["k"], "seed": seed, "train_rows": len(y)}
    trainer = Trainer(model, targs, (train_enc, y), eval_dataset=dev_sets, task=spec,
                      run_identity=identity)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    selection = None
    if test_sets:  # the best checkpoint was chosen on dev; the score is the test sets'
        selection = trainer.evaluate()
        trainer.eval_sets = test_sets
    final = trainer.evaluate()
    scored = next(iter((test_sets or dev_sets).values()))
    if spec.name == "MNLI" and "mm_accuracy" in final:
        score = metrics.task_score(spec, {"accuracy": final["accuracy"],
                                          "accuracy_mm": final["mm_accuracy"]})
    else:
        score = metrics.task_score(spec, final)
    counts = report.parameter_counts(model)
    for folder in out.iterdir():  # done: its checkpoints are of no more use
        if folder.is_dir() and folder.name.startswith(("checkpoint-", ".checkpoint-")):
            shutil.rmtree(folder, ignore_errors=True)
    resumed = None
    if checkpoint is not None:
        resumed = int(checkpoint.name.rpartition("-")[2])
    return {"metrics": final, "score": score,
            "eval_history": [[int(s), m] for s, m in result.evals],
            "losses": [float(v) for v in result.losses], "steps": int(result.steps),
            "train_seconds": float(result.train_seconds),
            "wall_seconds": time.perf_counter() - wall_start,
            "peak_rss_mb": report.peak_rss_mb(), "trainable_params": counts["trainable_params"],
            "all_params": counts["all_params"], "n_train": int(len(y)),
            "n_dev": int(len(scored[1])), "threads": job["threads"],
            "resumed_from": resumed, "host": socket.gethostname(),
            "extra": {"selection_metrics": selection, "gates": _mean_gates(model, scored[0])}}


def _mean_gates(model, encodings, batch_size: int = 64):
    """{layer: {submodule: mean gate}} over the rows (eval mode), or None without gates."""
    from ..tuners.unipelt.gates import mean_gate_values
    from ..train.data import iterate_batches

    if getattr(model, "get_gate_values", None) is None:
        return None
    batches = []
    for batch in iterate_batches(encodings, None, batch_size, sort_by_length=True):
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                            "token_type_ids")}
        try:
            batches.append(model.get_gate_values(**inputs))
        except ValueError:  # the model's adapters have no gate
            return None
    means = mean_gate_values(batches)
    return {str(layer): subs for layer, subs in sorted(means.items())} or None


def run_logged(job: dict):
    """run_trial with stdout/stderr into the trial's folder -> ("ok", result) or
    ("error", traceback text)."""
    out = Path(job["out_dir"])
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "a") as log:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return "ok", run_trial(job)
        except BaseException as exc:  # noqa: BLE001 (reported to the driver as the trial's error)
            text = "".join(traceback.format_exception(exc))
            print(text, file=sys.stderr)
            return "error", f"{type(exc).__name__}: {exc}\n\n{text}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _die_with_parent(parent_pid: int):
    """Linux: this process gets SIGKILL when the driver dies (so a killed driver leaves no
    trial running behind it)."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def child_main(job: dict, conn, parent_pid: int):
    """Entry of a trial process of the local backend: runs the trial, sends the outcome."""
    _die_with_parent(parent_pid)
    try:
        outcome = run_logged(job)
    except BaseException as exc:  # noqa: BLE001
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(outcome)
    conn.close()


__all__ = ["run_trial", "run_logged", "child_main", "load_splits"]
