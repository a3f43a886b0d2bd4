"""End to end: LoRA fine-tuning lowers the loss and learns the task (small, fast versions of
the SST-2 run in bench/sst2.py)."""
import json
import re

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


def test_cli_keeps_the_settings_given_for_a_random_model(tmp_path, capsys):
    """Model-dependent defaults fill only what the command line left unset."""
    from peftcore.cli import main

    out_dir = tmp_path / "adapter"
    assert main(["finetune", "--model", "random", "--synthetic-size", "200", "--no-progress",
                 "--max-steps", "2", "--r", "4", "--lora-alpha", "8", "--target-modules",
                 "query, key", "--output-dir", str(out_dir), "--threads", "1"]) == 0
    saved = json.loads((out_dir / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (4, 8)
    assert sorted(saved["target_modules"]) == ["key", "query"]
    capsys.readouterr()
    assert main(["finetune", "--model", "random", "--synthetic-size", "200", "--no-progress",
                 "--max-steps", "2", "--output-dir", str(out_dir), "--threads", "1"]) == 0
    saved = json.loads((out_dir / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (16, 32)  # the random model's defaults
    assert sorted(saved["target_modules"]) == ["dense", "query", "value"]


@pytest.mark.parametrize("argv, message", [
    (["--r", "0"], "argument --r: expected an int >= 1, got '0'"),
    (["--r", "2.5"], "argument --r: expected an int >= 1"),
    (["--lora-alpha", "nan"], "argument --lora-alpha: expected a number > 0, got 'nan'"),
    (["--lora-dropout", "1"], r"argument --lora-dropout: expected a number in \[0, 1\)"),
    (["--epochs", "0"], "argument --epochs: expected a number > 0"),
    (["--lr=-1e-3"], "argument --lr: expected a number > 0"),
    (["--lr", "inf"], "argument --lr: expected a number > 0"),
    (["--batch-size", "0"], "argument --batch-size: expected an int >= 1"),
    (["--max-length", "1"], "argument --max-length: expected an int >= 2"),
    (["--threads", "0"], "argument --threads: expected an int >= 1"),
    (["--max-train-samples", "0"], "argument --max-train-samples: expected an int >= 1"),
    (["--synthetic-size", "0"], "argument --synthetic-size: expected an int >= 10"),
    (["--eval-steps", "-1"], "argument --eval-steps: expected an int >= 1"),
    (["--time-budget", "0"], "argument --time-budget: expected a number > 0"),
    (["--target-modules", "query,"], "argument --target-modules: expected comma-separated"),
    (["--seed", "-1"], "argument --seed: expected an int >= 0"),
])
def test_cli_refuses_bad_options_naming_them(argv, message, capsys):
    from peftcore.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--model", "random", "--no-progress", *argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [
    (["--glue-dir", "{tmp}/none"], "GLUE file not found: .*none"),
    (["--model", "{tmp}/none"], "no tokenizer.json or vocab.txt in .*none"),
    (["--target-modules", "nothing"], r"Target modules \{'nothing'\} not found"),
    (["--output-dir", "{tmp}/file/adapter"], "file"),  # a path through a file: refused before training
])
def test_cli_reports_bad_data_model_or_folder_without_a_traceback(argv, message, tmp_path, capsys):
    from peftcore.cli import main

    (tmp_path / "file").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["finetune", "--model", "random", "--no-progress", "--synthetic-size", "100",
                 "--max-steps", "1", "--threads", "1", *argv]) == 2
    captured = capsys.readouterr()
    assert re.search(r"peftcore finetune: error: .*" + message, captured.err)
    assert "Traceback" not in captured.err
    if "--output-dir" in argv:  # refused before the data and model were even loaded
        assert "data:" not in captured.out


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("nan"), "learning_rate must be a finite number > 0, got nan"),
    ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
    ("num_train_epochs", 0, r"num_train_epochs must be a finite number > 0 \(or set max_steps\)"),
    ("max_steps", 0, "max_steps must be None or an int >= 1, got 0"),
    ("max_steps", 2.5, "max_steps must be None or an int >= 1"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size must be an int >= 1"),
    ("per_device_eval_batch_size", 1.5, "per_device_eval_batch_size must be an int >= 1"),
    ("warmup_ratio", 1.5, r"warmup_ratio must be a number in \[0, 1\]"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("max_grad_norm", -1.0, "max_grad_norm must be None, 0"),
    ("eval_steps", 0, "eval_steps must be None or an int >= 1"),
    ("time_budget", float("inf"), "time_budget must be None or a finite number of seconds > 0"),
    ("seed", "1", "seed must be an int"),
])
def test_training_arguments_refuse_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**{field: value})


def test_train_refuses_an_empty_or_ragged_training_set():
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(model_type="bert", vocab_size=30, hidden_size=8, num_hidden_layers=1,
             num_attention_heads=2, intermediate_size=16, max_position_embeddings=16), seed=0)
    model = get_peft_model(model, LoraConfig(target_modules=["query"]))
    empty = {k: np.zeros((0, 4), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    # a time budget ends the run if the check is missing (the loop would find no batch forever)
    args = TrainingArguments(max_steps=3, time_budget=2.0)
    with pytest.raises(ValueError, match="no training examples"):
        train(model, empty, np.zeros(0, np.int64), args, progress=False)
    two = {k: np.ones((2, 4), np.int64) for k in empty}
    with pytest.raises(ValueError, match="same number of rows"):
        train(model, two, np.zeros(3, np.int64), args, progress=False)
