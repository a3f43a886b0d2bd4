"""End to end: LoRA fine-tuning lowers the loss and learns the task (small, fast versions of
the SST-2 run in bench/sst2.py)."""
import json

import numpy as np
import pytest

import peftcore
from peftcore import LoraConfig, get_peft_model
from peftcore.train import data
from peftcore.train.trainer import TrainingArguments, evaluate, train


def _minilm_lora(minilm_dir, seed=0):
    peftcore.manual_seed(seed)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                            lora_dropout=0.1))


@pytest.mark.filterwarnings("ignore:Some weights")
def test_sst2_subset_learns(minilm_dir, glue_dir):
    """120 steps on 3,840 SST-2 sentences: the loss falls and dev accuracy is far above chance."""
    splits = data.load_glue(glue_dir, "SST-2")
    tok = data.load_tokenizer(minilm_dir, 64)
    train_a, _, train_y = splits["train"]
    order = np.random.default_rng(0).permutation(len(train_y))[:3840]
    train_enc = data.encode(tok, [train_a[i] for i in order], None, 64)
    dev_a, _, dev_y = splits["validation"]
    dev_enc = data.encode(tok, dev_a, None, 64)
    model = _minilm_lora(minilm_dir)
    before = evaluate(model, dev_enc, dev_y)["accuracy"]
    result = train(model, train_enc, train_y[order],
                   TrainingArguments(learning_rate=1e-3, max_steps=120, seed=0),
                   eval_set=(dev_enc, dev_y), progress=False)
    after = result.evals[-1][1]["accuracy"]
    assert np.mean(result.losses[-20:]) < np.mean(result.losses[:20]) - 0.1
    assert after > 0.75, (before, after)
    assert after > before + 0.15


def test_generated_sentiment_learns_without_glue():
    """The main job's fallback: a small random BERT on the generated set learns it."""
    peftcore.manual_seed(0)
    texts, labels = data.make_synthetic_sentiment(1200, seed=1)
    tok = data.build_wordpiece_tokenizer_from_texts(texts, vocab_size=400, max_length=32)
    enc = data.encode(tok, texts, None, 32)
    model = peftcore.AutoModelForSequenceClassification.from_config(dict(
        model_type="bert", vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), seed=0)
    # a random encoder has nothing for LoRA to adapt: train its biases and word vectors too
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32,
                                             target_modules=["query", "value", "dense"],
                                             bias="all"))
    model.get_base_model().bert.embeddings.word_embeddings.weight.requires_grad = True
    cut = 1000
    train_enc = {k: v[:cut] for k, v in enc.items()}
    dev_enc = {k: v[cut:] for k, v in enc.items()}
    result = train(model, train_enc, labels[:cut],
                   TrainingArguments(learning_rate=3e-3, num_train_epochs=8, seed=0,
                                     per_device_train_batch_size=32),
                   eval_set=(dev_enc, labels[cut:]), progress=False)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10]) - 0.2
    assert result.evals[-1][1]["accuracy"] > 0.75


def test_cli_finetune_on_generated_data(tmp_path, capsys):
    """The main job's command on its embedded default data, with the small random model."""
    from peftcore.cli import main

    out_dir = tmp_path / "adapter"
    main(["finetune", "--model", "random", "--synthetic-size", "1000", "--no-progress",
          "--output-dir", str(out_dir), "--threads", "1"])
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert summary["last_loss"] < summary["first_loss"] - 0.2
    assert summary["dev_after"]["accuracy"] > 0.85
    assert (out_dir / "adapter_model.safetensors").is_file()
    assert (out_dir / "adapter_config.json").is_file()
