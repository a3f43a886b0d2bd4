"""Threads sharing a model. The engine releases the GIL while it computes, so a notebook's
background thread can run a forward while another trains, swaps adapters or drops gradients.
Every engine call is atomic (one engine lock): results are those of some order of the calls,
and nothing frees memory another call is using. Each scenario runs in a child interpreter,
so a crash fails the test instead of killing the suite."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PRELUDE = """
import threading, time, warnings
import numpy as np
import peftcore
from peftcore import LoraConfig, get_peft_model
warnings.simplefilter("ignore")
CFG = dict(model_type="bert", vocab_size=100, hidden_size=64, num_hidden_layers=3,
           num_attention_heads=4, intermediate_size=256, max_position_embeddings=64)
rng = np.random.default_rng(0)
ids = rng.integers(2, 100, (16, 48))
labels = rng.integers(0, 2, 16)
model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=3).eval()
stop = threading.Event()
failures, expected_errors = [], []

def loop(body):
    def run():
        while not stop.is_set():
            try:
                body()
            except (RuntimeError, ValueError) as exc:  # another thread's forward came between
                expected_errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
    return threading.Thread(target=run)

def run_for(seconds, *bodies):
    threads = [loop(b) for b in bodies]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
"""

SCENARIOS = {
    # each eval forward is atomic: every thread sees exactly the single-threaded logits
    "forwards_agree": """
with peftcore.no_grad():
    reference = model(ids).logits
wrong = []
def forward():
    n = int(rng.integers(1, 17))
    with peftcore.no_grad():
        got = model(ids[:n]).logits
    if not np.array_equal(got, reference[:n]):
        wrong.append(np.abs(got - reference[:n]).max())
run_for(1.5, forward, forward, forward)
assert not wrong, wrong[:3]
""",
    "forward_beside_training": """
model.train()
def step():
    model(ids, labels=labels)
    model.backward()
def forward():
    with peftcore.no_grad():
        model(ids[: int(rng.integers(1, 17))])
def drop_grads():
    for p in model.parameters():
        p.grad = None
run_for(1.5, step, step, forward, drop_grads)
""",
    "adapters_churn_beside_forwards": """
peft = get_peft_model(model, LoraConfig(target_modules=["query", "value"],
                                        init_lora_weights=False))
count = [0]
def churn():
    name = f"extra{count[0]}"
    count[0] += 1
    peft.add_adapter(name, LoraConfig(target_modules=["query", "key"], modules_to_save=["pooler"]))
    peft.set_adapter(name)
    peft.set_adapter("default")
    peft.delete_adapter(name)
    peft.merge_adapter()
    peft.unmerge_adapter()
def forward():
    with peftcore.no_grad():
        peft(ids)
def train():
    peft.train()
    peft(ids, labels=labels)
    peft.backward()
optimizer = peftcore.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)
def optimize():
    peftcore.clip_grad_norm_([p for p in peft.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
run_for(2.0, churn, forward, forward, train, optimize)
assert count[0] > 0
""",
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_threads_sharing_a_model(name):
    script = PRELUDE + textwrap.dedent(SCENARIOS[name]) + "\nprint('DONE')\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0 and "DONE" in proc.stdout, (
        f"exit code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


FORK_PRELUDE = """
import multiprocessing as mp, os, sys, threading, time, warnings
import numpy as np
import peftcore
CFG = dict(model_type="bert", vocab_size=100, hidden_size=64, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=256, max_position_embeddings=64)
ids = np.random.default_rng(0).integers(2, 100, (32, 48))

def logits(seed):
    model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=seed)
    with peftcore.no_grad():
        return model(ids).logits

def in_child(seed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peftcore.set_num_threads(2)
    info = peftcore.backend_info()
    return logits(seed), info["num_threads"], info["fork_note"], [str(w.message) for w in caught]
"""

FORK_SCENARIOS = {
    # GNU OpenMP hangs in a child forked after its parent ran threads: held to one thread
    "after_threads": """
peftcore.set_num_threads(2)
expected = [logits(s) for s in range(3)]
with mp.get_context("fork").Pool(2) as pool:
    results = pool.map(in_child, range(3))
for (got, threads, note, warned), want in zip(results, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert threads == 1 and "forked" in note, (threads, note)
    assert warned == [note]
""",
    # nothing ran threads before the fork: the child keeps them
    "before_threads": """
peftcore.set_num_threads(2)
with mp.get_context("fork").Pool(1) as pool:
    got, threads, note, warned = pool.apply(in_child, (4,))
assert (threads, note, warned) == (2, "", [])
np.testing.assert_allclose(got, logits(4), rtol=1e-5, atol=1e-6)
""",
    # another thread holds the engine lock when the fork happens
    "while_a_thread_computes": """
peftcore.set_num_threads(1)
model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=1)
stop = threading.Event()
x, w = np.ones((512, 256), np.float32), np.ones((256, 256), np.float32)
def busy():
    while not stop.is_set():
        with peftcore.no_grad():
            model(ids)
        peftcore.functional.linear(x, w)
worker = threading.Thread(target=busy, daemon=True)  # a hung child fails fast, not at timeout
worker.start()
time.sleep(0.2)
for _ in range(12):
    pid = os.fork()
    if pid == 0:
        ok = np.isfinite(logits(2)).all()
        os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.time() < deadline, "the forked child hung"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
stop.set()
worker.join()
""",
}


@pytest.mark.parametrize("name", list(FORK_SCENARIOS))
def test_forked_children_run(name):
    """Sweeps fork worker processes (multiprocessing's default on Linux) from a parent that
    already used the engine; the children must run, not hang."""
    script = FORK_PRELUDE + textwrap.dedent(FORK_SCENARIOS[name]) + "\nprint('DONE')\n"
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=180, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: hung (no result in 180 s)")
    assert proc.returncode == 0 and "DONE" in proc.stdout, (
        f"exit code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("given, want", [
    ({}, ("10000", None)),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, (None, "PASSIVE")),
    ({"GOMP_SPINCOUNT": "5"}, ("5", None)),
])
def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise(given, want):
    """Importing peftcore sets libgomp's spin count to 10,000 rounds before an idle thread
    sleeps, and leaves a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(given)
    code = ("import os, peftcore; print(os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(w) for w in want]
