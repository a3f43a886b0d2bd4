"""The Trainer: gradient accumulation equals the large batch, early stopping and the best
model, checkpoints (atomic, checked, rotated), exact resume after SIGKILL, class weights,
oversampling and few-shot sampling."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import peftcore
from peftcore import LoraConfig, get_peft_model
from peftcore.train import sampling
from peftcore.train.trainer import (CheckpointMismatch, Trainer, TrainingArguments,
                                    balanced_class_weights, latest_checkpoint, list_checkpoints,
                                    oversample_indices)

ROOT = Path(__file__).resolve().parents[1]


def make_data(n=24, seed=0, num_labels=2, T=10):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, n)
    ids = np.zeros((n, T), np.int64)
    mask = np.zeros((n, T), np.int64)
    for i, L in enumerate(lengths):
        ids[i, :L] = rng.integers(5, 50, L)
        ids[i, 0] = 2
        mask[i, :L] = 1
    labels = (ids[:, 1] % num_labels).astype(np.int64)  # learnable from the first word
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}, labels


def make_model(dropout=0.0, num_labels=2, method="lora", seed=0):
    peftcore.manual_seed(seed)
    model = peftcore.AutoModelForSequenceClassification.from_config(dict(
        model_type="bert", vocab_size=50, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        num_labels=num_labels), seed=seed)
    if method == "full":
        return model
    if method == "ia3":
        return get_peft_model(model, peftcore.IA3Config(task_type="SEQ_CLS"))
    if method == "bitfit":
        return get_peft_model(model, peftcore.BitFitConfig(task_type="SEQ_CLS"))
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                            lora_dropout=dropout,
                                            target_modules=["query", "value", "dense"]))


def trainable(model):
    return {n: np.array(p, copy=True) for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------ gradient accumulation


@pytest.mark.parametrize("weights", [None, "balanced"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_accumulation_equals_the_large_batch(weights, method):
    enc, labels = make_data(24)
    labels[:5] = 1  # uneven classes, so balanced weights differ from 1
    results = []
    for bs, accum in ((8, 1), (4, 2), (2, 4)):
        model = make_model(method=method)
        args = TrainingArguments(per_device_train_batch_size=bs, gradient_accumulation_steps=accum,
                                 max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, seed=3,
                                 class_weights=weights, disable_tqdm=True)
        result = Trainer(model, args, (enc, labels)).train()
        results.append((trainable(model), result.losses))
    (ref, ref_losses), others = results[0], results[1:]
    # to rounding: AdamW divides by √v, so a near-zero gradient's rounding moves a weight by
    # up to ~1e-6 here (lr 1e-2); a wrongly weighted micro-batch moves it by ~lr
    for params, losses in others:
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-6, atol=1e-7)
        for name, value in ref.items():
            np.testing.assert_allclose(params[name], value, rtol=0, atol=3e-6, err_msg=name)
    start = trainable(make_model(method=method))
    assert any(not np.array_equal(v, start[n]) for n, v in ref.items())  # the runs did train


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit", "full"])
def test_every_method_trains(method, tmp_path):
    enc, labels = make_data(48)
    model = make_model(method=method)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                             num_train_epochs=3, learning_rate=1e-2, eval_strategy="epoch",
                             save_strategy="epoch", disable_tqdm=True)
    result = Trainer(model, args, (enc, labels), eval_dataset=(enc, labels), task="SST-2").train()
    assert result.steps == 18 and len(result.evals) == 3
    assert len(list_checkpoints(tmp_path)) == 3
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 19))
    assert set(steps[0]) == {"step", "epoch", "loss", "learning_rate", "grad_norm"}
    assert set(log[6]["eval"]) == {"accuracy", "loss"}


def test_schedule_and_no_decay_groups():
    enc, labels = make_data(16)
    model = make_model(method="full")
    args = TrainingArguments(per_device_train_batch_size=4, max_steps=8, warmup_steps=2,
                             lr_scheduler_type="cosine", learning_rate=0.1, weight_decay=0.5,
                             disable_tqdm=True)
    trainer = Trainer(model, args, (enc, labels))
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    names = {id(p.tensor): n for n, p in model.named_parameters()}
    assert all(names[id(t)].endswith("bias") or "LayerNorm" in names[id(t)]
               for t in groups[1]["params"])
    assert trainer.scheduler.last_epoch == 8 and groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------ evaluation, early stopping


def test_early_stopping_and_best_model(tmp_path):
    enc, labels = make_data(32)
    scripted = iter([0.50, 0.60, 0.62, 0.55, 0.58, 0.9, 0.9])
    snapshots = []
    model = make_model()

    def compute_metrics(logits, y):
        snapshots.append(trainable(model))
        return {"score": next(scripted)}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=40, eval_steps=2, save_strategy="steps",
                             save_total_limit=1, metric_for_best_model="eval_score",
                             early_stopping_patience=2, early_stopping_threshold=0.05,
                             load_best_model_at_end=True, learning_rate=1e-2, disable_tqdm=True)
    result = Trainer(model, args, (enc, labels), eval_dataset=(enc, labels),
                     compute_metrics=compute_metrics).train()
    # 0.60 improves on 0.50 by more than 0.05; 0.62 and 0.55 do not: stop at the 4th eval
    assert result.stopped_early and result.steps == 8 and len(result.evals) == 4
    assert result.best_step == 4 and result.best_metric == 0.60
    for name, value in trainable(model).items():
        np.testing.assert_array_equal(value, snapshots[1][name])  # the best model is back
    # save_total_limit=1 keeps the best checkpoint (step 4), not only the newest
    kept = [p.name for p in list_checkpoints(tmp_path)]
    assert "checkpoint-4" in kept and len(kept) <= 2


def test_early_stopping_callback_as_transformers_spells_it():
    from peftcore.train.trainer import EarlyStoppingCallback

    enc, labels = make_data(16)
    args = TrainingArguments(eval_steps=1, max_steps=50, per_device_train_batch_size=4,
                             disable_tqdm=True)
    trainer = Trainer(make_model(), args, (enc, labels), eval_dataset=(enc, labels),
                      compute_metrics=lambda logits, y: {"score": 0.5},
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=3)])
    result = trainer.train()
    assert result.stopped_early and result.steps == 4   # one best, then 3 without improvement


def test_metric_for_best_model_must_be_the_tasks():
    enc, labels = make_data(8)
    args = TrainingArguments(eval_steps=1, max_steps=1, metric_for_best_model="f1")
    with pytest.raises(ValueError, match=r"metric_for_best_model 'f1' is not a metric of RTE; "
                                         r"its metrics: \['accuracy', 'loss'\]"):
        Trainer(make_model(), args, (enc, labels), eval_dataset=(enc, labels), task="RTE")
    args = TrainingArguments(eval_steps=1, max_steps=1, metric_for_best_model="eval_f1")
    Trainer(make_model(), args, (enc, labels), eval_dataset=(enc, labels), task="MRPC")
    with pytest.raises(ValueError, match="load_best_model_at_end needs evaluations"):
        TrainingArguments(load_best_model_at_end=True)
    with pytest.raises(ValueError, match="lr_scheduler_type must be one of"):
        TrainingArguments(lr_scheduler_type="polynomial")
    with pytest.raises(ValueError, match="class_weights must be 2 finite numbers"):
        Trainer(make_model(), TrainingArguments(class_weights=[1.0, -1.0]), (enc, labels))


# ------------------------------------------------------------ checkpoints and resume


def _args(out, **kw):
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=12,
                             save_strategy="steps", save_steps=4, learning_rate=1e-2,
                             disable_tqdm=True, **kw)


def test_a_resumed_runs_train_time_and_time_budget_count_the_time_before(tmp_path):
    """Checkpoints keep the training time so far; a resumed run's train_seconds adds its own
    to it, and its time_budget counts both (a checkpoint without the record counts 0)."""
    enc, labels = make_data(24)

    def timed(trainer, **kw):  # (result, the wall time of the call): bounds that hold under load
        w0 = time.perf_counter()
        result = trainer.train(**kw)
        return result, time.perf_counter() - w0

    whole, wall = timed(Trainer(make_model(), _args(tmp_path), (enc, labels)))
    state = lambda step: json.loads((tmp_path / f"checkpoint-{step}" / "trainer_state.json")
                                    .read_text())
    t4, t8, t12 = (state(s)["train_seconds"] for s in (4, 8, 12))
    assert 0 < t4 < t8 < t12 <= whole.train_seconds <= wall
    resumed, wall = timed(Trainer(make_model(), _args(tmp_path), (enc, labels)),
                          resume_from_checkpoint=tmp_path / "checkpoint-8")
    assert resumed.steps == 12 and t8 < resumed.train_seconds <= t8 + wall
    # a budget the time before the checkpoint already spent: one step, then stop
    out = Trainer(make_model(), _args(tmp_path, time_budget=t8 / 2), (enc, labels)).train(
        resume_from_checkpoint=tmp_path / "checkpoint-8")
    assert out.steps == 9
    old = state(4)
    del old["train_seconds"]
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(old))
    again, wall = timed(Trainer(make_model(), _args(tmp_path), (enc, labels)),
                        resume_from_checkpoint=tmp_path / "checkpoint-4")
    assert again.steps == 12 and 0 < again.train_seconds <= wall   # counted from 0
    assert 0 < state(12)["train_seconds"] <= again.train_seconds


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    enc, labels = make_data(24)
    Trainer(make_model(dropout=0.1), _args(tmp_path), (enc, labels)).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == \
        ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    weights = tmp_path / "checkpoint-12" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])   # truncated
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint checkpoint-12: .*trainable"
                                            r"\.safetensors: corrupted or truncated"):
        assert latest_checkpoint(tmp_path).name == "checkpoint-8"
    before = (tmp_path / "checkpoint-8" / "trainer_state.json").read_bytes()
    model = make_model(dropout=0.1)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        result = Trainer(model, _args(tmp_path), (enc, labels)).train(resume_from_checkpoint=True)
    assert result.steps == 12
    assert (tmp_path / "checkpoint-8" / "trainer_state.json").read_bytes() == before
    with pytest.raises(ValueError, match=r"checkpoint-12/trainable\.safetensors: corrupted"):
        weights.write_bytes(weights.read_bytes()[:-10])
        Trainer(make_model(dropout=0.1), _args(tmp_path), (enc, labels)).train(
            resume_from_checkpoint=tmp_path / "checkpoint-12")
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"checkpoint-8/trainer_state\.json: corrupted"):
        Trainer(make_model(dropout=0.1), _args(tmp_path), (enc, labels)).train(
            resume_from_checkpoint=tmp_path / "checkpoint-8")


def test_resuming_another_model_method_or_task_is_refused(tmp_path):
    enc, labels = make_data(24)
    Trainer(make_model(), _args(tmp_path), (enc, labels), task="SST-2").train()
    ckpt = tmp_path / "checkpoint-12"
    cases = [
        (make_model(), "RTE", "another task: it has \"SST-2\", this run \"RTE\""),
        (make_model(method="ia3"), "SST-2", "another PEFT method and settings"),
        (make_model(seed=5), "SST-2", "another model"),
        (make_model(method="full"), "SST-2", "another PEFT method"),
    ]
    for model, task, message in cases:
        before = trainable(model)
        with pytest.raises(CheckpointMismatch, match=message):
            Trainer(model, _args(tmp_path), (enc, labels), task=task).train(
                resume_from_checkpoint=ckpt)
        for name, value in trainable(model).items():  # refused before anything changed
            np.testing.assert_array_equal(value, before[name])


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    import peftcore
    peftcore.set_num_threads(1)
    from peftcore.train import trainer as T
    from test_trainer import make_data, make_model
    out, mode = sys.argv[1], sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if mode == "kill-in-log":        # SIGKILL right after step kill_at's log line
        log = T.Trainer._log
        def _log(self, record):
            log(self, record)
            if record.get("step") == kill_at and "loss" in record:
                os.kill(os.getpid(), signal.SIGKILL)
        T.Trainer._log = _log
    if mode == "kill-in-save":       # SIGKILL half-way through writing checkpoint kill_at
        save = T.save_safetensors
        def _save(path, tensors, metadata=None):
            save(path, tensors, metadata)
            if f"checkpoint-{{kill_at}}" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
        T.save_safetensors = _save
    enc, labels = make_data(40, seed=1)
    dev_enc, dev_labels = make_data(12, seed=2)
    args = T.TrainingArguments(output_dir=out, per_device_train_batch_size=4,
                               gradient_accumulation_steps=2, num_train_epochs=6,
                               eval_steps=5, save_strategy="steps", save_steps=5,
                               save_total_limit=3, learning_rate=5e-3, seed=7,
                               lr_scheduler_type="cosine", warmup_ratio=0.1,
                               class_weights="balanced", oversample=True, disable_tqdm=True)
    trainer = T.Trainer(make_model(dropout=0.1), args, (enc, labels),
                        eval_dataset=(dev_enc, dev_labels), task="SST-2")
    resume = os.path.isdir(out) and T.latest_checkpoint(out) is not None
    trainer.train(resume_from_checkpoint=True if resume else None)
""")


def _run_child(tmp_path, out, *argv):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    return subprocess.run([sys.executable, str(script), str(out), *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _curve(out):
    return [json.dumps(json.loads(line), sort_keys=True)
            for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_run_killed_and_resumed_gives_the_same_curve_bit_for_bit(tmp_path):
    """SIGKILL between checkpoints (step 23) and in the middle of writing one (step 30):
    each resume continues from the last complete checkpoint and the log - every loss,
    learning rate, gradient norm and eval metric - equals the uninterrupted run's."""
    ref = tmp_path / "ref"
    done = _run_child(tmp_path, ref, "plain")
    assert done.returncode == 0, done.stderr
    reference = _curve(ref)
    assert len([r for r in reference if "\"eval\"" not in r]) == 36  # 6 epochs of 6 steps

    run = tmp_path / "run"
    killed = _run_child(tmp_path, run, "kill-in-log", "23")
    assert killed.returncode == -9
    assert latest_checkpoint(run).name == "checkpoint-20"
    killed = _run_child(tmp_path, run, "kill-in-save", "30")   # resumes from 20, dies at 30
    assert killed.returncode == -9
    assert not (run / "checkpoint-30").exists()
    assert any(p.name.startswith(".checkpoint-30.tmp") for p in run.iterdir())
    assert latest_checkpoint(run).name == "checkpoint-25"
    resumed = _run_child(tmp_path, run, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _curve(run) == reference
    # save_total_limit=3 (the best one kept besides)
    assert 3 <= len(list_checkpoints(run)) <= 4


# ------------------------------------------------------------ class imbalance, few-shot


def test_balanced_weights_match_scikit_learn():
    y = np.array([0, 0, 0, 0, 1, 2, 2])
    w = balanced_class_weights(y, 3)
    np.testing.assert_allclose(w, [7 / 12, 7 / 3, 7 / 6], rtol=1e-6)
    utils = pytest.importorskip("sklearn.utils")
    np.testing.assert_allclose(w, utils.compute_class_weight("balanced", classes=np.arange(3), y=y),
                               rtol=1e-6)


def test_oversampling_balances_each_epoch():
    y = np.array([0] * 10 + [1] * 3)
    rows = oversample_indices(y, np.random.default_rng(0))
    assert np.bincount(y[rows]).tolist() == [10, 10]
    assert set(np.flatnonzero(y == 1)) <= set(rows.tolist())  # every rare row at least once
    enc, labels = make_data(26)
    labels[:] = 0
    labels[:4] = 1
    trainer = Trainer(make_model(), TrainingArguments(oversample=True, max_steps=1,
                                                      disable_tqdm=True), (enc, labels))
    order = trainer._epoch_order(0)
    assert len(order) == 44 and np.bincount(labels[order]).tolist() == [22, 22]
    assert np.array_equal(order, trainer._epoch_order(0))
    assert not np.array_equal(order, trainer._epoch_order(1))


def test_few_shot_is_seeded_stratified_and_checked():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    a = sampling.sample_k(y, 20, seed=1)
    assert np.array_equal(a, sampling.sample_k(y, 20, seed=1))   # the same K for every method
    assert not np.array_equal(a, sampling.sample_k(y, 20, seed=2))
    assert np.bincount(y[a]).tolist() == [12, 6, 2]
    assert np.bincount(y[sampling.sample_k(y, 3, seed=0)]).tolist() == [1, 1, 1]
    assert len(sampling.sample_k(y, 7, seed=0, stratify=False)) == 7
    train_rows, dev_rows = sampling.few_shot_split(y, 20, seed=1, dev="rest", dev_size=10)
    assert np.array_equal(train_rows, a) and len(dev_rows) == 10
    assert not set(train_rows) & set(dev_rows)
    assert sampling.few_shot_split(y, 20, seed=1, dev="official")[1] is None
    with pytest.raises(ValueError, match=r"K=101 is larger than the training set \(100 examples\)"):
        sampling.sample_k(y, 101, seed=0)
    with pytest.raises(ValueError, match=r"dev from the rest of train: K=90 is larger than the "
                                         r"training set \(80 examples left\)"):
        sampling.few_shot_split(y, 20, seed=0, dev_size=90)
