"""The sweep driver: takes the sweep file's trials that still need running, runs them on a
backend several at a time, records each outcome in the database as it arrives.

Backends:
- ``local``: each trial in a new process (``spawn``), ``parallel`` at a time, each with
  ``threads`` engine threads. A trial process dies with the driver (Linux).
- ``ray``: each trial a Ray task (``num_cpus=threads``, one task per worker process) on an
  existing cluster (``address``) or a local instance; trials send their results back and
  only the driver writes the database.

Resuming: the driver holds a lock on the sweep; at start, trials a dead driver left
'running' become 'interrupted' and run again from their last checkpoint; 'done' trials are
skipped; 'failed' ones run again (from scratch) only with retry_failed.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
from multiprocessing import connection as mp_connection
from pathlib import Path

from .spec import SweepError, parse
from .store import Store, run_lock


# ------------------------------------------------------------------ backends


class LocalBackend:
    name = "local"

    def __init__(self, parallel: int):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.slots = parallel
        self.running = {}  # trial id -> (process, connection, start)

    def capacity(self) -> int:
        return self.slots - len(self.running)

    def submit(self, trial_id: str, job: dict):
        from .trial import child_main

        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=child_main, args=(job, send, os.getpid()),
                                name=f"peftcore-trial-{trial_id}", daemon=False)
        proc.start()
        send.close()
        self.running[trial_id] = (proc, receive, time.perf_counter())

    def wait(self, timeout: float) -> list:
        """Finished trials: [(trial id, "ok" | "error" | "killed", payload, seconds)]."""
        if not self.running:
            return []
        waitables = {}
        for tid, (proc, conn, _) in self.running.items():
            waitables[conn] = tid
            waitables[proc.sentinel] = tid
        ready = mp_connection.wait(list(waitables), timeout)
        done = []
        for tid in dict.fromkeys(waitables[w] for w in ready):
            proc, conn, start = self.running.pop(tid)
            outcome = None
            try:
                if conn.poll():
                    outcome = conn.recv()
            except (EOFError, OSError):
                outcome = None
            proc.join()
            conn.close()
            seconds = time.perf_counter() - start
            if outcome is None:
                code = proc.exitcode
                if code is not None and code < 0:
                    done.append((tid, "killed", f"the trial's process was killed by signal "
                                 f"{-code}; it resumes from its last checkpoint on the next run",
                                 seconds))
                else:
                    done.append((tid, "error", f"the trial's process exited with code {code} "
                                 f"without a result", seconds))
            else:
                done.append((tid, outcome[0], outcome[1], seconds))
        return done

    def shutdown(self):
        for proc, conn, _ in self.running.values():
            proc.kill()
            proc.join()
            conn.close()
        self.running.clear()


def check_ray_address(address):
    """A host:port address must answer a TCP connection within 5 s; else SweepError. None,
    'local': a local Ray instance is started; 'auto': Ray looks for one itself."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'peftcore[distributed]' "
                         "(or pip install ray)") from None
    if address in (None, "local", "auto"):
        return
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"--address must be HOST:PORT (a Ray head's GCS address, e.g. "
                         f"10.0.0.1:6379), 'auto' or 'local'; got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass  # it answers: that is all this probe asks
    except OSError as exc:
        raise SweepError(f"Ray address {address} does not answer ({exc.strerror or exc}); "
                         f"nothing was started") from None


class RayBackend:
    name = "ray"

    def __init__(self, address, threads: int, cpus: int | None = None):
        import ray

        from .trial import run_logged

        self.ray = ray
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address in (None, "local"):
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                             runtime_env=runtime_env)
                else:
                    ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
            except Exception as exc:  # noqa: BLE001 (Ray raises many kinds)
                raise SweepError(f"cannot connect to Ray at {address}: {exc}") from None
        total = ray.cluster_resources().get("CPU", 1)
        if threads > total:
            raise SweepError(f"run.threads={threads} is more than the Ray cluster's {total:g} CPUs")
        self.slots = max(1, int(total // threads))
        self.remote = ray.remote(num_cpus=threads, max_calls=1, max_retries=0)(run_logged)
        self.running = {}  # ObjectRef -> (trial id, start)

    def capacity(self) -> int:
        return self.slots - len(self.running)

    def submit(self, trial_id: str, job: dict):
        self.running[self.remote.remote(job)] = (trial_id, time.perf_counter())

    def wait(self, timeout: float) -> list:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            tid, start = self.running.pop(ref)
            seconds = time.perf_counter() - start
            try:
                kind, payload = self.ray.get(ref)
            except self.ray.exceptions.WorkerCrashedError as exc:
                kind, payload = "killed", f"the Ray worker died: {exc}"
            except self.ray.exceptions.RayError as exc:
                kind, payload = "error", f"Ray: {exc}"
            done.append((tid, kind, payload, seconds))
        return done

    def shutdown(self):
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()

    def close(self):
        if self.started:
            self.ray.shutdown()


# ------------------------------------------------------------------ the driver


def _default_parallel(threads: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // threads)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure_layout(sweep, row, steps: int = 4, out=None) -> tuple[int, int]:
    """(parallel, threads) that trains fastest here: each layout p x t with p * t = the CPUs
    runs p copies of `row`'s trial at once for `steps` steps (no evaluation, no checkpoint),
    t engine threads each; the most optimisation steps per second wins."""
    import tempfile

    cpus = _cpus()
    layouts = [(cpus // t, t) for t in range(1, cpus + 1) if cpus % t == 0]
    best, rates = None, {}
    with tempfile.TemporaryDirectory(prefix="peftcore-sweep-probe-") as tmp:
        for parallel, threads in layouts:
            config = dict(row["config"])
            config["training"] = {**config["training"], "max_steps": steps, "eval_strategy": "no",
                                  "save_strategy": "no", "load_best_model_at_end": False,
                                  "early_stopping_patience": None}
            engine = LocalBackend(parallel)
            for i in range(parallel):
                job = {"config": config, "common": sweep.common(), "threads": threads,
                       "out_dir": str(Path(tmp) / f"{parallel}x{threads}-{i}"), "time_budget": None}
                engine.submit(f"probe-{i}", job)
            seconds = []
            while engine.running:
                for _, kind, payload, _ in engine.wait(1.0):
                    if kind != "ok":
                        raise SweepError(f"measuring the layout: a probe trial failed: "
                                         f"{str(payload).splitlines()[0]}")
                    seconds.append(payload["train_seconds"])
            rates[(parallel, threads)] = parallel * steps / max(max(seconds), 1e-9)
            if best is None or rates[(parallel, threads)] > rates[best]:
                best = (parallel, threads)
    if out is not None:
        print("layout measured: " + ", ".join(f"{p} x {t} thread(s) {r:.2f} steps/s"
                                               for (p, t), r in rates.items()) +
              f" -> {best[0]} trial(s) at a time x {best[1]} thread(s)", file=out)
    return best


def run(path, *, retry_failed: bool = False, extend: bool = False, backend: str = "local",
        address=None, parallel: int | None = None, threads: int | None = None,
        progress: bool = True, report: bool = True, ray_cpus: int | None = None,
        max_trials: int | None = None, only=None, out=None) -> dict:
    """Run (or resume) the sweep of a sweep file. -> the trial counts by status.
    max_trials: start at most this many trials in this call (for tests and smoke runs).
    only: method labels (as the tables name them) or method names; this call runs only
    their trials, the others wait for a later call."""
    out = out or sys.stdout
    sweep = parse(path)
    only = _check_only(sweep, only)
    if backend not in ("local", "ray"):
        raise SweepError(f"backend must be 'local' or 'ray', got {backend!r}")
    threads = threads or sweep.run.get("threads", 1)
    for name, value in (("parallel", parallel), ("threads", threads)):
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        if not ok and not (name == "parallel" and value == "auto"):
            raise SweepError(f"{name} must be an int >= 1{' or auto' if name == 'parallel' else ''}"
                             f", got {value!r}")
    if backend == "ray":
        check_ray_address(address)   # nothing is started for an address that does not answer
    elif address is not None:
        raise SweepError("--address is for --backend ray")
    parallel = parallel or sweep.run.get("parallel") or _default_parallel(threads)
    if parallel == "auto" and backend != "local":
        raise SweepError("run.parallel 'auto' measures the local machine: use --backend local "
                         "(Ray trials take run.threads CPUs each)")
    with run_lock(sweep.db_path):
        store = Store(sweep.db_path)
        try:
            added = store.sync(sweep, extend=extend)
            recovered = store.recover()
            if retry_failed:  # from scratch: a checkpoint might carry the failure along
                import shutil
                for t in store.trials():
                    if t["status"] == "failed":
                        shutil.rmtree(sweep.runs_dir / t["id"], ignore_errors=True)
                        store.reset(t["id"])
            source = _source(sweep, store, only)
            if parallel == "auto":
                first = source.next()
                if first is None:
                    parallel = 1
                else:
                    source.queue.insert(0, first)
                    parallel, threads = measure_layout(sweep, first, out=out)
            engine = (LocalBackend(parallel) if backend == "local"
                      else RayBackend(address, threads, ray_cpus))
            try:
                _drive(sweep, store, source, engine, threads, progress, max_trials, out,
                       added, recovered)
            finally:
                engine.shutdown()
                if hasattr(engine, "close"):
                    engine.close()
            counts = store.counts()
        finally:
            store.close()
    if report:
        from .report import write_reports
        write_reports(sweep.path, out=out)
    return counts


def _check_only(sweep, only):
    """--only's names as a set (None: every trial); each must name some of the file's trials."""
    if only is None:
        return None
    if isinstance(only, str) or not all(isinstance(name, str) for name in only) or not only:
        raise SweepError(f"only: expected a list of method labels or names, got {only!r}")
    if sweep.search_dynamic:
        raise SweepError("--only picks among a grid's trials; an Optuna search draws its own")
    known = {t.label for t in sweep.trials} | {t.method for t in sweep.trials}
    unknown = [name for name in only if name not in known]
    if unknown:
        labels = sorted({t.label for t in sweep.trials})
        raise SweepError(f"--only {unknown[0]!r}: no trial of {sweep.path.name} has this label "
                         f"or method; its labels: {', '.join(labels)}")
    return set(only)


def _source(sweep, store, only=None):
    if sweep.search_dynamic:
        from .search import OptunaSource
        return OptunaSource(sweep, store)
    return GridSource(sweep, store, only)


class GridSource:
    """The sweep file's trials that need running (of the methods in `only`), in order."""

    def __init__(self, sweep, store, only=None):
        ids = {t.id for t in sweep.trials if only is None or t.label in only or t.method in only}
        self.queue = [r for r in store.trials() if r["id"] in ids and
                      r["status"] in ("pending", "interrupted")]
        self.total = len(ids)
        self.finished = sum(1 for r in store.trials() if r["id"] in ids and
                            r["status"] in ("done", "failed"))

    def next(self):
        return self.queue.pop(0) if self.queue else None

    def exhausted(self) -> bool:
        return not self.queue

    def done(self, row):
        """A grid's trials are fixed in advance: a finished one changes nothing to come (the
        Optuna source tells its study here)."""


def _job(sweep, row, threads):
    return {"config": row["config"], "common": sweep.common(),
            "out_dir": str(sweep.runs_dir / row["id"]), "threads": threads,
            "time_budget": sweep.limits.get("trial_seconds")}


def _drive(sweep, store, source, engine, threads, progress, max_trials, out, added, recovered):
    from tqdm.auto import tqdm

    print(f"sweep {sweep.name}: {source.total} trials ({added['new']} new, "
          f"{source.finished} finished before, {recovered} interrupted); backend "
          f"{engine.name}, {engine.slots} at a time x {threads} thread(s); database "
          f"{sweep.db_path}", file=out)
    bar = tqdm(total=source.total, initial=source.finished, unit="trial", disable=not progress,
               desc="sweep", dynamic_ncols=True, file=out)
    start = time.perf_counter()
    total_limit = sweep.limits.get("total_seconds", math.inf)
    started = 0
    inflight = set()
    try:
        while True:
            over = time.perf_counter() - start > total_limit
            while (engine.capacity() > 0 and not over and
                   (max_trials is None or started < max_trials)):
                row = source.next()
                if row is None:
                    break
                store.start(row["id"], engine.name)
                engine.submit(row["id"], _job(sweep, row, threads))
                inflight.add(row["id"])
                started += 1
            if not engine.running:
                if over:
                    bar.write(f"limits.total_seconds ({total_limit:g} s) reached: the other "
                              f"trials wait for the next run")
                break
            for tid, kind, payload, seconds in engine.wait(1.0):
                inflight.discard(tid)
                if kind == "ok":
                    store.finish(tid, payload)
                elif kind == "killed":
                    store.fail(tid, payload, status="interrupted", wall_seconds=seconds)
                else:
                    store.fail(tid, payload, status="failed", wall_seconds=seconds)
                    bar.write(f"trial {tid} failed: {payload.splitlines()[0]}")
                row = store.trials(ids={tid})[0]
                source.done(row)
                bar.total = source.total
                if kind != "killed":
                    bar.update(1)
    except KeyboardInterrupt:
        for tid in inflight:
            store.fail(tid, "stopped by Ctrl-C", status="interrupted")
        raise
    finally:
        bar.close()
