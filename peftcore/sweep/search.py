"""Optuna (TPE) search: one study per task, K and method entry (and grid variant), in
Optuna's own storage (``<sweep>.optuna.db`` next to the sweep file). Each Optuna trial draws
the search space's values for its method, runs once per seed (each a trial of the sweep's
database), and is told the mean score over its seeds (maximised).

Resuming: an Optuna trial whose runs all finished is told its value; its runs still pending
or interrupted run (from their checkpoints); a trial asked but never recorded (a kill
between the two) is told it failed, and another is asked.
"""
from __future__ import annotations

import json

import numpy as np

from .spec import SweepError, _variants, make_trial, trial_id


class OptunaSource:
    def __init__(self, sweep, store):
        try:
            import optuna
        except ImportError:
            raise SweepError("search type 'optuna' needs Optuna: pip install optuna "
                             "(or peftcore[search])") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.sweep, self.store = sweep, store
        self.storage = f"sqlite:///{sweep.path.with_name(sweep.path.stem + '.optuna.db')}"
        search = sweep.search
        self.n_trials = search["trials"]
        self.groups = []
        index = 0
        for k in sweep.ks:
            for task in sweep.tasks:
                for entry, (name, cls, grids, training, line, key) in enumerate(sweep.methods):
                    if sweep.method_ks and sweep.method_ks[entry] is not None and \
                            k not in sweep.method_ks[entry]:
                        continue
                    combos = _variants(name, grids, training, None, entry)
                    space = {k2: d for k2, d in search["space"].items()
                             if k2.startswith("training.") or k2.startswith(f"{name}.")}
                    for v, combo in enumerate(combos):
                        study_name = f"{sweep.name}/{task}/K={k}/{key}" + (f"/{v}" if len(combos) > 1 else "")
                        study = optuna.create_study(
                            study_name=study_name, storage=self.storage, direction="maximize",
                            load_if_exists=True,
                            sampler=optuna.samplers.TPESampler(seed=search["seed"] + index))
                        self.groups.append({"study": study, "name": study_name, "task": task,
                                            "k": k, "method": name, "combo": combo,
                                            "label": sweep.method_labels[entry]
                                            if sweep.method_labels else name,
                                            "space": space, "index": index, "variant": v})
                        index += 1
        self.queue = []
        self._recover()

    # -------------------------------------------------------------- bookkeeping

    def _rows(self, study_name):
        return [r for r in self.store.trials() if r["study"] == study_name]

    def _recover(self):
        T = self.optuna.trial.TrialState
        for g in self.groups:
            rows = self._rows(g["name"])
            by_number = {}
            for r in rows:
                by_number.setdefault(r["study_trial"], []).append(r)
            for t in g["study"].get_trials(deepcopy=False):
                if t.state != T.RUNNING:
                    continue
                mine = by_number.get(t.number)
                if not mine:   # asked, never recorded
                    g["study"].tell(t.number, state=T.FAIL)
                    continue
                self._maybe_tell(g, t.number, mine)
            for number, mine in sorted(by_number.items()):
                for r in mine:
                    if r["status"] in ("pending", "interrupted"):
                        self.queue.append(r)

    def _maybe_tell(self, g, number, rows):
        T = self.optuna.trial.TrialState
        if any(r["status"] not in ("done", "failed") for r in rows):
            return
        state = next(t.state for t in g["study"].get_trials(deepcopy=False) if t.number == number)
        if state != T.RUNNING:
            return
        if any(r["status"] == "failed" for r in rows):
            g["study"].tell(number, state=T.FAIL)
        else:
            g["study"].tell(number, float(np.mean([r["score"] for r in rows])))

    def _asked(self, g) -> int:
        return len({r["study_trial"] for r in self._rows(g["name"])})

    @property
    def total(self) -> int:
        return len(self.groups) * self.n_trials * len(self.sweep.seeds)

    @property
    def finished(self) -> int:
        return sum(1 for r in self.store.trials() if r["study"] is not None and
                   r["status"] in ("done", "failed"))

    # -------------------------------------------------------------- the source protocol

    def next(self):
        if self.queue:
            return self.queue.pop(0)
        for g in self.groups:
            if self._asked(g) < self.n_trials:
                self._ask(g)
                return self.queue.pop(0)
        return None

    def _ask(self, g):
        trial = g["study"].ask()
        options = {opt: v for (kind, opt), v in g["combo"].items() if kind == "options"}
        training = {opt: v for (kind, opt), v in g["combo"].items() if kind == "training"}
        drawn = []
        for key, dist in g["space"].items():
            scope, _, opt = key.partition(".")
            if "values" in dist:
                value = trial.suggest_categorical(key, [json.dumps(v) for v in dist["values"]])
                value = json.loads(value)
            elif dist["type"] == "int":
                value = trial.suggest_int(key, dist["low"], dist["high"], log=dist["log"])
            else:
                value = trial.suggest_float(key, dist["low"], dist["high"], log=dist["log"])
            (training if scope == "training" else options)[opt] = value
            drawn.append(f"{opt}={value:.3g}" if isinstance(value, float) else f"{opt}={value}")
        label = f"{g['label']} #{trial.number} " + " ".join(drawn)
        ident = self.sweep.identity()
        for s, seed in enumerate(self.sweep.seeds):
            position = (g["index"] * 10000 + trial.number) * 100 + s
            t = make_trial(ident, position, g["task"], g["k"], seed, g["method"], options,
                           training, label, g["variant"])
            t.id = trial_id(ident, {**t.config(), "study": g["name"], "number": trial.number})
            self.store.add_trial(t, study=g["name"], study_trial=trial.number)
        self.queue += [r for r in self._rows(g["name"]) if r["study_trial"] == trial.number]

    def exhausted(self) -> bool:
        return not self.queue and all(self._asked(g) >= self.n_trials for g in self.groups)

    def done(self, row):
        if row["study"] is None:
            return
        g = next(g for g in self.groups if g["name"] == row["study"])
        rows = [r for r in self._rows(g["name"]) if r["study_trial"] == row["study_trial"]]
        self._maybe_tell(g, row["study_trial"], rows)


def best(path) -> list[dict]:
    """Each study's best trial: [{study, number, value, params}] (Optuna's storage)."""
    import optuna
    from pathlib import Path

    path = Path(path)
    storage = f"sqlite:///{path.with_name(path.stem + '.optuna.db')}"
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            t = study.best_trial
        except ValueError:
            continue
        out.append({"study": summary.study_name, "number": t.number, "value": t.value,
                    "params": t.params})
    return out
