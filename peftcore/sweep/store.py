"""The results store: one SQLite file next to the sweep file (WAL mode, so readers never
block the writer and several processes may write; each write is one short transaction
that waits for the others instead of failing).

Tables: ``meta`` (the sweep file's fingerprint and path), ``fingerprints`` (every version of
the file the database has run), ``trials`` (one row per trial: its configuration, status,
eval history, losses, final metrics, train time, peak RSS, trainable parameters, error text).

A trial's status: pending → running → done | failed | interrupted. ``interrupted``: its
process was killed (or the driver was), it resumes from its last checkpoint on the next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

from .spec import SweepError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (fingerprint TEXT PRIMARY KEY, created REAL NOT NULL,
                                         n_trials INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    task TEXT NOT NULL, k TEXT NOT NULL, seed INTEGER NOT NULL,
    method TEXT NOT NULL, label TEXT NOT NULL, variant INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted')),
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL,
    metrics TEXT, score REAL, eval_history TEXT, losses TEXT, steps INTEGER,
    train_seconds REAL NOT NULL DEFAULT 0, wall_seconds REAL NOT NULL DEFAULT 0,
    peak_rss_mb REAL, trainable_params INTEGER, all_params INTEGER,
    n_train INTEGER, n_dev INTEGER, threads INTEGER, resumed_from INTEGER,
    error TEXT, backend TEXT, host TEXT, study TEXT, study_trial INTEGER,
    extra TEXT
);
"""

# columns added after the first release, with their types: ALTERed into older databases
ADDED_COLUMNS = (("extra", "TEXT"),)

JSON_COLUMNS = ("config", "metrics", "eval_history", "losses", "extra")
STATUSES = ("pending", "running", "done", "failed", "interrupted")


def connect(path, timeout: float = 60.0) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


class Store:
    """One sweep's database. Every write is a BEGIN IMMEDIATE transaction."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SweepError(f"no sweep database at {self.path} (run the sweep first)")
        try:
            self.con = connect(self.path)
            with self.write() as con:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                have = {r[1] for r in con.execute("PRAGMA table_info(trials)")}
                for column, kind in ADDED_COLUMNS:
                    if column not in have:
                        con.execute(f"ALTER TABLE trials ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise SweepError(f"{self.path}: not a sweep database ({exc})") from None

    def close(self):
        self.con.close()

    @contextlib.contextmanager
    def write(self):
        con = self.con
        for attempt in range(100):  # busy_timeout covers most waits; a lock upgrade may still fail
            try:
                con.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05)
        else:
            raise SweepError(f"{self.path}: the database stayed locked by another process")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # ---------------------------------------------------------------- the sweep file

    def meta(self, key, default=None):
        row = self.con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def sync(self, sweep, extend: bool = False) -> dict:
        """Record the sweep's trials. A database made by another version of the file is
        refused, unless extend=True and every trial it holds is still in the file (then the
        new trials are added). -> {"new": n, "known": m}."""
        fingerprint = sweep.fingerprint()
        renamed = []
        with self.write() as con:
            old = self.meta("fingerprint")
            if old is not None and self.meta("identity") is None:
                old = self._rename_legacy_trials(con, sweep, old, renamed)
            ids = {r["id"] for r in con.execute("SELECT id FROM trials")}
            mine = {t.id for t in sweep.trials}
            if old is not None and old != fingerprint and sweep.search_dynamic is False:
                gone = ids - mine
                if not extend:
                    raise SweepError(
                        f"{self.path} was made by another version of {sweep.path.name} "
                        f"({len(mine - ids)} trial(s) new, {len(gone)} of its {len(ids)} not in "
                        f"the file now); refused: run with --extend to add the new trials, or "
                        f"use another file name for another sweep")
                if self.meta("identity") != sweep.identity():
                    raise SweepError("--extend cannot change the model or data settings; refused")
                if gone:
                    example = con.execute("SELECT label, task, k, seed FROM trials WHERE id=?",
                                          (sorted(gone)[0],)).fetchone()
                    raise SweepError(
                        f"--extend adds trials, it never drops or changes one: {len(gone)} "
                        f"trial(s) in {self.path.name} are not in {sweep.path.name} any more, "
                        f"e.g. {example['label']} on {example['task']} K={example['k']} seed "
                        f"{example['seed']}; refused")
            if old is not None and old != fingerprint and sweep.search_dynamic:
                if not extend:
                    raise SweepError(f"{self.path} was made by another version of "
                                     f"{sweep.path.name}; refused: run with --extend")
            for key, value in (("fingerprint", fingerprint), ("sweep_file", str(sweep.path)),
                               ("common", sweep.common()), ("identity", sweep.identity()),
                               ("name", sweep.name)):
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            con.execute("INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?)",
                        (fingerprint, time.time(), len(mine)))
            new = 0
            for t in sweep.trials:
                if t.id not in ids:
                    self._insert(con, t)
                    new += 1
                else:  # the file's order is the run order; a label names a trial, it is not one
                    con.execute("UPDATE trials SET position=?, label=? WHERE id=?",
                                (t.position, t.label, t.id))
        for before, after in renamed:  # their checkpoints follow them, once the ids are in
            if (sweep.runs_dir / before).is_dir() and not (sweep.runs_dir / after).exists():
                os.replace(sweep.runs_dir / before, sweep.runs_dir / after)
        return {"new": new, "known": len(sweep.trials) - new}

    def _rename_legacy_trials(self, con, sweep, old_fingerprint, renamed) -> str:
        """A database from an older peftcore names its trials by the model's and the data's
        paths: rename them by identity (spec.identity). -> the stored fingerprint as the
        new scheme gives it when the file is the one that made the database, else the old."""
        from .spec import identity, trial_id

        common = self.meta("common")
        if common is None:
            return old_fingerprint
        try:
            then = identity(common)
        except OSError as exc:
            raise SweepError(
                f"{self.path} was made by an older peftcore, which named trials by where the "
                f"model was; that model folder cannot be read now ({exc}), so its trials "
                f"cannot be matched to {sweep.path.name}'s; refused") from None
        if then != sweep.identity():
            raise SweepError(f"{self.path} was made with another model or other data settings "
                             f"than {sweep.path.name} names; refused")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (json.dumps(then),))
        for row in con.execute("SELECT id, config, study, study_trial FROM trials").fetchall():
            config = json.loads(row["config"])
            if row["study"] is not None:
                config = {**config, "study": row["study"], "number": row["study_trial"]}
            if trial_id(common, config) == row["id"]:
                new_id = trial_id(then, config)
                con.execute("UPDATE trials SET id=? WHERE id=?", (new_id, row["id"]))
                renamed.append((row["id"], new_id))
        if sweep.fingerprint(legacy_common=common) == old_fingerprint:
            return sweep.fingerprint()
        return old_fingerprint

    @staticmethod
    def _insert(con, t, study=None, study_trial=None):
        con.execute("INSERT INTO trials (id, position, task, k, seed, method, label, variant, "
                    "config, study, study_trial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (t.id, t.position, t.task, str(t.k), t.seed, t.method, t.label, t.variant,
                     json.dumps(t.config(), sort_keys=True), study, study_trial))

    def add_trial(self, t, study=None, study_trial=None) -> bool:
        """Insert one trial (a search's); False if it is already there."""
        with self.write() as con:
            if con.execute("SELECT 1 FROM trials WHERE id=?", (t.id,)).fetchone():
                return False
            self._insert(con, t, study, study_trial)
        return True

    # ---------------------------------------------------------------- trial states

    def recover(self) -> int:
        """Trials left 'running' by a driver that died: 'interrupted'. Call with the run lock."""
        with self.write() as con:
            return con.execute("UPDATE trials SET status='interrupted', error=coalesce(error, "
                               "'the sweep driver stopped while it ran') "
                               "WHERE status='running'").rowcount

    def start(self, trial_id: str, backend: str) -> int:
        """Mark a trial running; -> its attempt number."""
        with self.write() as con:
            con.execute("UPDATE trials SET status='running', attempts=attempts+1, started=?, "
                        "backend=?, host=? WHERE id=?",
                        (time.time(), backend, socket.gethostname(), trial_id))
            return con.execute("SELECT attempts FROM trials WHERE id=?",
                               (trial_id,)).fetchone()[0]

    def finish(self, trial_id: str, result: dict) -> bool:
        """Record a finished trial's results (once: only a running trial takes them)."""
        with self.write() as con:
            n = con.execute(
                "UPDATE trials SET status='done', finished=?, metrics=?, score=?, eval_history=?, "
                "losses=?, steps=?, train_seconds=?, wall_seconds=wall_seconds+?, "
                "peak_rss_mb=max(coalesce(peak_rss_mb, 0), ?), trainable_params=?, all_params=?, "
                "n_train=?, n_dev=?, threads=?, resumed_from=?, host=coalesce(?, host), "
                "extra=?, error=NULL WHERE id=? AND status='running'",
                (time.time(), json.dumps(result["metrics"]), result["score"],
                 json.dumps(result["eval_history"]), json.dumps(result["losses"]),
                 result["steps"], result["train_seconds"], result["wall_seconds"],
                 result["peak_rss_mb"], result["trainable_params"], result["all_params"],
                 result["n_train"], result["n_dev"], result["threads"], result["resumed_from"],
                 result.get("host"), json.dumps(result.get("extra")), trial_id)).rowcount
        return n == 1

    def fail(self, trial_id: str, error: str, status: str = "failed", wall_seconds: float = 0.0):
        with self.write() as con:
            con.execute("UPDATE trials SET status=?, finished=?, error=?, "
                        "wall_seconds=wall_seconds+? WHERE id=? AND status='running'",
                        (status, time.time(), error, wall_seconds, trial_id))

    def reset(self, trial_id: str):
        """A failed trial run again from scratch (--retry-failed)."""
        with self.write() as con:
            con.execute("UPDATE trials SET status='pending', error=NULL, train_seconds=0, "
                        "wall_seconds=0, peak_rss_mb=NULL WHERE id=? AND status='failed'",
                        (trial_id,))

    # ---------------------------------------------------------------- reading

    def trials(self, ids=None) -> list[dict]:
        rows = self.con.execute("SELECT * FROM trials ORDER BY position, id").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for c in JSON_COLUMNS:
                if d[c] is not None:
                    d[c] = json.loads(d[c])
            if ids is None or d["id"] in ids:
                out.append(d)
        return out

    def counts(self) -> dict:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.con.execute("SELECT status, count(*) FROM trials GROUP BY status"):
            out[r[0]] = r[1]
        return out


@contextlib.contextmanager
def run_lock(db_path):
    """One driver per sweep: an exclusive lock on <db>.lock (released when the process dies,
    so a killed driver leaves nothing to clean up)."""
    path = Path(str(db_path) + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise SweepError(f"another `peftcore sweep run` is running this sweep (pid {other or '?'}); "
                             f"wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
