"""The notebooks run top to bottom (their code cells, in one namespace)."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys):
    cells = json.loads(path.read_text())["cells"]
    namespace = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    assert "losses" not in namespace or all(l == l for l in namespace["losses"])  # no NaN
    if "losses" in namespace:
        assert namespace["losses"][-1] < namespace["losses"][0] + 0.05
