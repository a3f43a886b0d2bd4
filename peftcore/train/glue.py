"""The nine GLUE tasks: their files as the official distribution lays them out, the same
splits from Hugging Face `datasets`' local cache, and GLUE's test-set submission files.

Files (``glue_data/<TASK>/``, as written by GLUE's download script)
-------------------------------------------------------------------
Tab-separated, UTF-8, no quoting (a ``"`` is text), one example a line.

=======  =====================================  ===========================================
task     train.tsv / dev.tsv columns            test.tsv columns
=======  =====================================  ===========================================
CoLA     no header: source, label, author's     index, sentence
         mark (``*`` or empty), sentence
SST-2    sentence, label                        index, sentence
MRPC     (BOM) Quality, #1 ID, #2 ID,           index, #1 ID, #2 ID, #1 String, #2 String
         #1 String, #2 String
STS-B    index, genre, filename, year,          the same less score
         old_index, source1, source2,
         sentence1, sentence2, score (0-5)
QQP      id, qid1, qid2, question1,             id, question1, question2
         question2, is_duplicate
MNLI     train: index, promptID, pairID,        test_matched.tsv / test_mismatched.tsv:
         genre, 4 parses, sentence1,            index ... sentence2 (10 columns)
         sentence2, label1, gold_label;
         dev_matched.tsv / dev_mismatched.tsv:
         the same with label1..label5
QNLI     index, question, sentence, label       index, question, sentence
RTE      index, sentence1, sentence2, label     index, sentence1, sentence2
WNLI     index, sentence1, sentence2, label     index, sentence1, sentence2
=======  =====================================  ===========================================

Columns are found by name in the header (CoLA by position), and every line must have as
many fields as the header. Label ids are those of `datasets`' GLUE: MNLI entailment=0,
neutral=1, contradiction=2; RTE and QNLI entailment=0, not_entailment=1; the others 0/1 as
written. STS-B's label is a float score in [0, 5] (a regression: num_labels=1, MSE loss).

Splits are named as in `datasets`: train, validation, test; MNLI has validation_matched,
validation_mismatched, test_matched and test_mismatched. A train or validation split reads
as ``(texts_a, texts_b or None, labels)`` (labels int64, float32 for STS-B), a test split as
``(texts_a, texts_b or None, index)`` (int64 GLUE row ids, what a submission file names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its folder, columns, label strings (in id order; None: regression),
    files per split, official metrics and names elsewhere."""

    name: str
    text_a: str
    text_b: str | None
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...] = ("accuracy",)
    columns: tuple[str, ...] | None = None  # headerless train/dev files: column names
    index_column: str = "index"              # the test files' row id column
    files: dict = field(default_factory=lambda: {
        "train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"})
    submissions: dict = field(default_factory=dict)  # test split -> submission file name
    hf_name: str = ""
    hf_columns: tuple[str, str | None] = ("sentence1", "sentence2")

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def problem_type(self) -> str:
        return "regression" if self.is_regression else "single_label_classification"

    @property
    def validation_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("test"))


def _task(name, a, b, label, labels, metrics=("accuracy",), hf_name="", hf_columns=None,
          **kw):
    kw.setdefault("submissions", {"test": f"{name}.tsv"})
    return GlueTask(name, a, b, label, labels, metrics, hf_name=hf_name,
                    hf_columns=hf_columns or (a, b), **kw)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS = {
    "CoLA": _task("CoLA", "sentence", None, "label", _BINARY, ("matthews_correlation",),
                  "cola", columns=("source", "label", "author_label", "sentence")),
    "SST-2": _task("SST-2", "sentence", None, "label", _BINARY, hf_name="sst2"),
    "MRPC": _task("MRPC", "#1 String", "#2 String", "Quality", _BINARY, ("f1", "accuracy"),
                  "mrpc", ("sentence1", "sentence2")),
    "STS-B": _task("STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearmanr"),
                   "stsb"),
    "QQP": _task("QQP", "question1", "question2", "is_duplicate", _BINARY, ("f1", "accuracy"),
                 "qqp", index_column="id"),
    "MNLI": _task("MNLI", "sentence1", "sentence2", "gold_label",
                  ("entailment", "neutral", "contradiction"), ("accuracy",), "mnli",
                  ("premise", "hypothesis"),
                  files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                         "validation_mismatched": "dev_mismatched.tsv",
                         "test_matched": "test_matched.tsv",
                         "test_mismatched": "test_mismatched.tsv"},
                  submissions={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}),
    "QNLI": _task("QNLI", "question", "sentence", "label", _NLI2, hf_name="qnli"),
    "RTE": _task("RTE", "sentence1", "sentence2", "label", _NLI2, hf_name="rte"),
    "WNLI": _task("WNLI", "sentence1", "sentence2", "label", _BINARY, hf_name="wnli"),
}

# GLUE's diagnostic set (AX): MNLI's labels, predicted by an MNLI model; test split only.
AX_TASK = _task("AX", "sentence1", "sentence2", "label", GLUE_TASKS["MNLI"].labels,
                files={"test": "diagnostic.tsv"}, submissions={"test": "AX.tsv"}, hf_name="ax",
                hf_columns=("premise", "hypothesis"))


def get_task(task: str | GlueTask) -> GlueTask:
    """Look a task up by name; 'sst2', 'SST-2', 'sst-2', 'sts_b', 'cola' all work."""
    if isinstance(task, GlueTask):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a GLUE task name, got {type(task).__name__}")
    key = task.upper().replace("_", "-").replace("-", "")
    for name, spec in [*GLUE_TASKS.items(), ("AX", AX_TASK)]:
        if key == name.upper().replace("-", ""):
            return spec
    raise ValueError(f"unknown GLUE task {task!r}; known: {list(GLUE_TASKS)}")


# ------------------------------------------------------------------ reading


def _lines(path: Path):
    """(line number, fields) of each non-blank line; UTF-8 (a BOM on line 1 is dropped),
    fields split on tabs with nothing unquoted; errors name the file and line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({exc.reason})") from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            text = text.removesuffix("\n").removesuffix("\r")
            if text.strip():
                yield number, text.split("\t")


def _split_file(spec: GlueTask, split: str) -> str:
    if split not in spec.files:
        raise ValueError(f"{spec.name} has no split {split!r}; its splits: {list(spec.files)}")
    return spec.files[split]


def read_glue_tsv(path, task, split: str | None = None):
    """Read one GLUE file. A labelled split (train/dev layout) -> (texts_a, texts_b or None,
    labels); a test file (split 'test*', or a file named test*.tsv / diagnostic.tsv) ->
    (texts_a, texts_b or None, index)."""
    path, spec = Path(path), get_task(task)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path}")
    if split is None:
        split = "test" if path.stem.startswith(("test", "diagnostic")) else "train"
    is_test = split.startswith("test")
    lines = _lines(path)
    if spec.columns is not None and not is_test:  # CoLA train/dev: no header
        header, first = list(spec.columns), None
    else:
        first = next(lines, None)
        if first is None:
            raise ValueError(f"{path}: empty file (no header row), an empty {split} split")
        header = first[1]
    wanted = [spec.text_a, spec.text_b, spec.index_column if is_test else spec.label_column]
    missing = [c for c in wanted if c is not None and c not in header]
    if missing:
        layout = "test" if is_test else "train/dev"
        raise ValueError(f"{path}:1: missing column(s) {missing} for {spec.name} ({layout} "
                         f"layout); header is {header}")
    ia, ib, il = (header.index(c) if c is not None else None for c in wanted)
    label_ids = None if spec.labels is None else {s: i for i, s in enumerate(spec.labels)}
    texts_a, texts_b, values = [], [], []
    for line, row in lines:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} tab-separated fields, "
                             f"got {len(row)}")
        texts_a.append(row[ia])
        if ib is not None:
            texts_b.append(row[ib])
        values.append(_value(row[il], spec, is_test, label_ids, path, line))
    if not values:
        raise ValueError(f"{path}: no examples (an empty {split} split)")
    if is_test:
        out = np.array(values, np.int64)
    elif spec.is_regression:
        out = np.array(values, np.float32)
    else:
        out = np.array(values, np.int64)
    return texts_a, (texts_b if spec.is_pair else None), out


def _value(text, spec, is_test, label_ids, path, line):
    if is_test:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{path}:{line}: {spec.index_column} {text!r} is not an int") from None
    if label_ids is not None:
        if text not in label_ids:
            raise ValueError(f"{path}:{line}: unknown label {text!r} for {spec.name}; "
                             f"expected one of {list(spec.labels)}")
        return label_ids[text]
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 5.0:  # NaN fails too
        raise ValueError(f"{path}:{line}: {spec.name} score {text!r} is not a number in [0, 5]")
    return score


def read_glue_split(glue_root, task, split: str):
    """<glue_root>/<TASK>/<the split's file>, read by read_glue_tsv."""
    spec = get_task(task)
    folder = Path(glue_root) / ("diagnostic" if spec is AX_TASK else spec.name)
    return read_glue_tsv(folder / _split_file(spec, split), spec, split)


def load_glue(glue_root, task, splits=None):
    """Read the labelled splits of a task (train and every validation split; or `splits`)
    from the official layout -> {split name: (texts_a, texts_b or None, labels)}.
    A missing file raises FileNotFoundError naming it."""
    spec = get_task(task)
    if splits is None:
        splits = ("train", *spec.validation_splits)
    return {s: read_glue_split(glue_root, spec, s) for s in splits}


def load_glue_from_datasets(task, splits=None, cache_dir=None):
    """The same splits from Hugging Face `datasets` (``load_dataset("glue", name)``), offline:
    only what its local cache holds. ImportError without `datasets`; the library's own error
    when the cache lacks the task."""
    import datasets

    spec = get_task(task)
    if splits is None:
        splits = ("train", *spec.validation_splits)
    previous = datasets.config.HF_DATASETS_OFFLINE
    datasets.config.HF_DATASETS_OFFLINE = True  # never the network
    try:
        ds = datasets.load_dataset("glue", spec.hf_name, cache_dir=cache_dir)
    finally:
        datasets.config.HF_DATASETS_OFFLINE = previous
    col_a, col_b = spec.hf_columns
    out = {}
    for split in splits:
        _split_file(spec, split)
        if split not in ds:
            raise ValueError(f"datasets' glue/{spec.hf_name} has no split {split!r}")
        part = ds[split]
        a = list(part[col_a])
        b = list(part[col_b]) if col_b else None
        if not a:
            raise ValueError(f"datasets' glue/{spec.hf_name} split {split!r} is empty")
        if split.startswith("test"):
            values = np.asarray(part["idx"], np.int64)
        elif spec.is_regression:
            values = np.asarray(part["label"], np.float32)
            bad = ~((values >= 0) & (values <= 5))
            if bad.any():
                raise ValueError(f"datasets' glue/{spec.hf_name} {split}: row "
                                 f"{int(np.argmax(bad))} has score {values[bad][0]}, not in [0, 5]")
        else:
            values = np.asarray(part["label"], np.int64)
            bad = (values < 0) | (values >= spec.num_labels)
            if bad.any():
                raise ValueError(f"datasets' glue/{spec.hf_name} {split}: row "
                                 f"{int(np.argmax(bad))} has label {values[bad][0]}")
        out[split] = (a, b, values)
    return out


# -------------------------------------------------------------- submission


def prediction_strings(task, predictions) -> list[str]:
    """Predictions as GLUE's server reads them: label strings for MNLI/AX, QNLI and RTE, 0/1
    for the other classification tasks, STS-B's score clipped to [0, 5] with 3 decimals.
    `predictions`: class ids (n,), logits (n, num_labels) or scores (n,) / (n, 1)."""
    spec = get_task(task)
    p = np.asarray(predictions)
    if spec.is_regression:
        p = p.reshape(len(p), -1)
        if p.shape[1] != 1 or p.dtype.kind not in "iuf":
            raise ValueError(f"{spec.name} predictions must be one score per example, got "
                             f"shape {np.asarray(predictions).shape}")
        return [f"{v:.3f}" for v in np.clip(p[:, 0].astype(np.float64), 0.0, 5.0)]
    if p.ndim == 2:
        if p.shape[1] != spec.num_labels:
            raise ValueError(f"{spec.name} logits must have {spec.num_labels} columns, got "
                             f"shape {p.shape}")
        p = p.argmax(-1)
    if p.ndim != 1 or p.dtype.kind not in "iu":
        raise ValueError(f"{spec.name} predictions must be class ids (n,) or logits (n, "
                         f"{spec.num_labels}), got {p.dtype} {p.shape}")
    if len(p) and (p.min() < 0 or p.max() >= spec.num_labels):
        raise ValueError(f"{spec.name} predictions must be class ids in [0, {spec.num_labels})")
    return [spec.labels[i] for i in p]


def write_submission(output_dir, task, index, predictions, split: str = "test") -> Path:
    """Write GLUE's submission file for one test split (e.g. RTE.tsv, MNLI-m.tsv, AX.tsv):
    header ``index\\tprediction``, one row per test example in `index` order. Atomic."""
    from ..utils.io import atomic_write_bytes

    spec = get_task(task)
    if split not in spec.submissions:
        raise ValueError(f"{spec.name} has no test split {split!r}; its test splits: "
                         f"{list(spec.submissions)}")
    index = np.asarray(index)
    strings = prediction_strings(spec, predictions)
    if len(strings) != len(index):
        raise ValueError(f"{len(strings)} predictions for {len(index)} test rows")
    path = Path(output_dir) / spec.submissions[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "index\tprediction\n" + "".join(f"{int(i)}\t{s}\n" for i, s in zip(index, strings))
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
