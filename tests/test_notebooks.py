"""The notebooks run top to bottom (their code cells, in one namespace)."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


@functools.lru_cache(maxsize=None)
def _run(path):
    """The namespace left by running the notebook's code cells in order (once per session)."""
    cells = json.loads(path.read_text())["cells"]
    namespace = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    return namespace


@pytest.mark.filterwarnings("ignore:Some weights")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    namespace = _run(path)
    assert "losses" not in namespace or all(l == l for l in namespace["losses"])  # no NaN
    if "losses" in namespace:
        assert namespace["losses"][-1] < namespace["losses"][0] + 0.05


@pytest.mark.filterwarnings("ignore:Some weights")
@pytest.mark.parametrize("name", ["ia3", "bitfit"])
def test_method_notebook_shows_what_it_claims(name):
    """The (IA)³ and BitFit notebooks, checked from outside (whatever their own cells assert):
    the hand count is the model's, the loss falls (with MiniLM), the adapter folder reloads
    bit for bit."""
    ns = _run(FOLDER / f"{name}.ipynb")
    assert ns["trainable"] == ns["expected"] == ns["model"].get_nb_trainable_parameters()[0]
    losses = ns["losses"]
    assert len(losses) >= 16
    if ns["model_dir"] is not None:  # a random encoder (no MiniLM installed) learns nothing here
        assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    assert np.array_equal(ns["loaded_logits"], ns["trained_logits"])
    assert sorted(p.name for p in Path(ns["out_dir"]).iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
    peft_type = json.loads((Path(ns["out_dir"]) / "adapter_config.json").read_text())["peft_type"]
    assert peft_type == {"ia3": "IA3", "bitfit": "BITFIT"}[name]
    if name == "ia3":
        assert np.abs(ns["merged_logits"] - ns["trained_logits"]).max() < 1e-4


@pytest.mark.filterwarnings("ignore:Some weights")
def test_unipelt_notebook_shows_what_it_claims():
    """The UniPELT notebook, checked from outside: the hand count is the model's, the gates
    came out per layer and submodule, in (0, 1), and moved in training; the folder reloads
    bit for bit; the heat map was drawn when matplotlib is there."""
    ns = _run(FOLDER / "unipelt.ipynb")
    assert ns["trainable"] == ns["expected"] == ns["model"].get_nb_trainable_parameters()[0]
    assert np.array_equal(ns["loaded_logits"], ns["logits"])
    means = ns["means"]
    assert sorted(means) == list(range(ns["L"]))
    assert all(set(subs) == {"lora_query", "lora_value", "prefix", "adapter_output"}
               for subs in means.values())
    before = ns["mean_gate_values"]([ns["gates_before"]])
    assert max(abs(means[l][s] - before[l][s]) for l in means for s in means[l]) > 1e-3
    if ns["heatmap"] is not None:
        assert Path(ns["heatmap"]).stat().st_size > 1000
    assert json.loads((Path(ns["out_dir"]) / "unipelt" / "adapter_config.json").read_text())[
        "config"]["architecture"] == "union"
def test_prompt_methods_notebook_shows_what_it_claims():
    """notebooks/prompt_methods.ipynb, checked from outside: the hand counts are the models',
    prefix tuning's loss falls (with MiniLM), the P-tuning adapter resumes with its encoder and
    reloads for inference with the same logits, in HF PEFT's files plus the encoder's keys."""
    ns = _run(FOLDER / "prompt_methods.ipynb")
    for name, (config, count) in ns["configs"].items():
        assert ns["models"][name].get_nb_trainable_parameters()[0] == count + ns["head"], name
    losses = ns["losses"]
    if ns["model_dir"] is not None:
        assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    assert np.abs(ns["loaded_logits"] - ns["trained_logits"]).max() < 1e-5
    keys = ns["keys"]
    assert keys["prompt_embeddings"].shape == (ns["P"], ns["H"])
    assert {k for k in keys if k.startswith("prompt_encoder.")} == \
        {"prompt_encoder." + n for n, _ in
         ns["resumed"].base_model.prompt_encoder["default"].named_parameters()}
    config = json.loads((Path(ns["out_dir"]) / "adapter_config.json").read_text())
    assert config["peft_type"] == "P_TUNING" and config["num_virtual_tokens"] == ns["P"]


def test_sweep_notebook_shows_what_it_claims():
    """notebooks/sweep.ipynb: every trial done, once; its table holds the mean ± std over seeds
    of the trials' scores; the four plots are PNG files."""
    ns = _run(FOLDER / "sweep.ipynb")
    assert ns["counts"]["done"] == ns["n_trials"] == 8 and ns["counts"]["failed"] == 0
    assert ns["again"]["done"] == 8 and ns["attempts"] == [1] * 8
    from peftcore import sweep
    rows = sweep.load(ns["sweep_file"], as_frame=False)
    for label in ("lora", "full"):
        for k in ("32", "128"):
            scores = [r["score"] for r in rows if r["label"] == label and r["k"] == k]
            assert len(scores) == 2
            cell = f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1):.2f}"
            assert f"| {label} | {cell} |" in ns["table_md"] or \
                f"| {label} | **{cell}** |" in ns["table_md"]
    assert [p.name for p in ns["plots"]] == ["learning_curves.png", "metric_vs_k.png",
                                              "score_vs_train_time.png",
                                              "score_vs_trainable_params.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in ns["plots"])
