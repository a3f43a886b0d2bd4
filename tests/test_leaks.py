"""Memory stays flat over long runs (issue 22): 1,000 cycles of forward, backward and adapter
add/delete on a tiny model keep RSS within 5 % of its value after warm-up. Runs in a child
interpreter so the suite's other allocations do not count."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CODE = """
import json, os, time, warnings
import numpy as np
import peftcore
from peftcore import LoraConfig, get_peft_model
warnings.simplefilter("ignore")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

CFG = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=0)
pm = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"])).train()
rng = np.random.default_rng(0)
ids, labels = rng.integers(2, 100, (4, 16)), np.zeros(4, np.int64)
start = time.time()
for i in range(1000):
    pm(ids, labels=labels)
    pm.backward()
    pm.add_adapter("extra", LoraConfig(r=2, target_modules=["key"]))
    pm.delete_adapter("extra")
    if i == 99:
        warm = rss()
end = rss()
print(json.dumps(dict(warm=warm, end=end, seconds=time.time() - start)))
"""


def test_rss_stays_flat_over_1000_cycles():
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    assert report["end"] <= report["warm"] * 1.05, report
