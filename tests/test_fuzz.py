"""The fuzzer (issue 22): the safetensors reader, the restricted unpickler, config.json and
adapter_config.json parsing, Tensor(...) from arbitrary arrays and Tensor.zeros near
overflow, and the model forward's argument checking (targets in tests/fuzz_targets.py).
Every input must work or raise a clean Python exception; a crash of the interpreter fails
the test. Each target runs in its own child interpreter, two at a time (the CI machines have
2 cores), with derandomized Hypothesis, so a run is reproducible. The total is at least
20,000 inputs; PEFTCORE_FUZZ_SCALE multiplies every target's budget (e.g. 10 for a long
run, 0.1 for a quick one)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Hypothesis examples per target; the tensor target counts two inputs per example (an
# array for Tensor() and a shape for Tensor.zeros)
BUDGET = {"safetensors": 3900, "unpickler": 3000, "config_json": 3000,
          "adapter_config": 2600, "tensor": 2100, "forward": 3100}
MIN_TOTAL = 20_000


def test_fuzz_targets_never_crash():
    scale = float(os.environ.get("PEFTCORE_FUZZ_SCALE", "1"))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "HOME": os.environ.get("HOME", "/tmp")}
    pending = sorted(BUDGET, key=BUDGET.get, reverse=True)
    running, reports, failures = {}, [], []
    start = time.time()
    while pending or running:
        while pending and len(running) < 2:
            target = pending.pop(0)
            n = max(1, int(BUDGET[target] * scale))
            running[target] = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "fuzz_targets.py"), target, str(n)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for target, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out, err = proc.communicate()
            del running[target]
            if proc.returncode != 0:  # a negative code is a signal: the interpreter crashed
                failures.append(f"{target}: exit {proc.returncode}\n{err[-4000:]}")
            else:
                reports.append(json.loads(out.strip().splitlines()[-1]))
        time.sleep(0.05)
    total = sum(r["examples"] for r in reports)
    summary = dict(total_inputs=total, wall_seconds=round(time.time() - start, 1),
                   cpu_seconds=round(sum(r["cpu_seconds"] for r in reports), 1),
                   targets={r["target"]: [r["examples"], r["seconds"]] for r in reports})
    print("fuzz:", json.dumps(summary))
    assert not failures, "\n\n".join(failures)
    if scale >= 1:
        assert total >= MIN_TOTAL, summary
