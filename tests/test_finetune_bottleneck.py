"""End to end: a Pfeiffer bottleneck-adapter fine-tune of all-MiniLM-L6-v2 on an SST-2 subset
lowers the loss and lifts dev accuracy clearly above the untrained model's."""
import numpy as np
import pytest

from helpers import assert_learned, fine_tune_minilm, sst2_subset  # noqa: F401  (a fixture)
from peftcore import SeqBnConfig


@pytest.mark.filterwarnings("ignore:Some weights")
def test_pfeiffer_sst2_subset_learns(minilm_dir, sst2_subset):
    """AdapterHub's Pfeiffer adapter (after each FFN block, bottleneck 384 // 16 = 24, relu)
    and the head: 60 steps of 16 sentences at lr 2e-3."""
    model, before, result = fine_tune_minilm(minilm_dir, sst2_subset,
                                             SeqBnConfig(task_type="SEQ_CLS"), 2e-3, 60, 16)
    assert_learned(result, before, loss_drop=0.1, accuracy=0.70, gain=0.12)
    ups = [np.asarray(p) for n, p in model.named_parameters() if n.endswith("adapter_up.weight")]
    assert len(ups) == 6 and all(u.shape == (384, 24) for u in ups)
