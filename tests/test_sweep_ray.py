"""peftcore sweep on a real local Ray instance (2 CPUs): the driver connects to it by
address, runs the trials as Ray tasks, owns the database; the results equal the local
backend's bit for bit."""
import subprocess
import sys
import textwrap

import pytest

from peftcore import sweep
from test_sweep import ROOT, tiny_sweep

ray = pytest.importorskip("ray")

SWEEP = textwrap.dedent("""\
    model: {model}
    data: {{glue_dir: ../glue, max_length: 16}}
    tasks: [SST-2, MRPC]
    k: [8]
    seeds: [0, 1]
    training: {{learning_rate: 1.0e-2, max_steps: 4, per_device_train_batch_size: 4,
                eval_steps: 2, warmup_ratio: 0.0}}
    methods:
      lora: {{r: 2}}
      bitfit: {{}}
    run: {{threads: 1}}
    """)


@pytest.mark.slow  # about 50 s: Ray starts a worker process per trial
def test_ray_backend_gives_the_local_backends_results_bit_for_bit(tmp_path):
    local = tiny_sweep(tmp_path / "local", SWEEP, glue="../glue")
    sweep.run(local, progress=False, parallel=2)
    remote = tiny_sweep(tmp_path / "ray", SWEEP, glue="../glue")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        done = subprocess.run([sys.executable, "-m", "peftcore", "sweep", "run", str(remote),
                               "--backend", "ray", "--address", address, "--no-progress"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        ray.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend ray, 2 at a time x 1 thread(s)" in done.stdout
    a = {r["id"]: r for r in sweep.load(local, as_frame=False)}
    b = {r["id"]: r for r in sweep.load(remote, as_frame=False)}
    assert a.keys() == b.keys() and len(a) == 8
    for i in a:
        assert b[i]["status"] == "done"
        for key in ("score", "losses", "eval_history", "steps", "trainable_params"):
            assert a[i][key] == b[i][key], key
    for name in ("results.md", "results.csv"):
        assert (tmp_path / "local" / "tiny.report" / name).read_text() == \
            (tmp_path / "ray" / "tiny.report" / name).read_text()
