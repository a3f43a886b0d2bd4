"""End to end: a Pfeiffer bottleneck-adapter fine-tune of all-MiniLM-L6-v2 on an SST-2 subset
lowers the loss and lifts dev accuracy clearly above the untrained model's."""
import numpy as np
import pytest

import peftcore
from peftcore import SeqBnConfig, get_peft_model
from peftcore.train import data
from peftcore.train.trainer import TrainingArguments, evaluate, train

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def sst2_subset(minilm_dir, glue_dir):
    """(train encodings, train labels, dev encodings, dev labels): 1,920 training sentences
    drawn once, and the first 448 of the 872 dev sentences."""
    splits = data.load_glue(glue_dir, "SST-2")
    tok = data.load_tokenizer(minilm_dir, MAX_LENGTH)
    train_a, _, train_y = splits["train"]
    order = np.random.default_rng(0).permutation(len(train_y))[:1920]
    train_enc = data.encode(tok, [train_a[i] for i in order], None, MAX_LENGTH)
    dev_a, _, dev_y = splits["validation"]
    dev_enc = data.encode(tok, dev_a[:448], None, MAX_LENGTH)
    return train_enc, train_y[order], dev_enc, dev_y[:448]


@pytest.mark.filterwarnings("ignore:Some weights")
def test_pfeiffer_sst2_subset_learns(minilm_dir, sst2_subset):
    """AdapterHub's Pfeiffer adapter (after each FFN block, bottleneck 384 // 16 = 24, relu)
    and the head: 60 steps of 16 sentences at lr 2e-3."""
    train_enc, train_y, dev_enc, dev_y = sst2_subset
    peftcore.manual_seed(0)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    model = get_peft_model(model, SeqBnConfig(task_type="SEQ_CLS"))
    before = evaluate(model, dev_enc, dev_y)["accuracy"]
    result = train(model, train_enc, train_y,
                   TrainingArguments(learning_rate=2e-3, max_steps=60, seed=0,
                                     per_device_train_batch_size=16),
                   eval_set=(dev_enc, dev_y), progress=False)
    after = result.evals[-1][1]["accuracy"]
    assert np.mean(result.losses[-15:]) < np.mean(result.losses[:15]) - 0.1, result.losses
    assert after > 0.70, (before, after)
    assert after > before + 0.12, (before, after)
    ups = [np.asarray(p) for n, p in model.named_parameters() if n.endswith("adapter_up.weight")]
    assert len(ups) == 6 and all(u.shape == (384, 24) for u in ups)
