"""`python -m peftcore finetune` over every GLUE task, method and Trainer option (a small
random model on files in each task's published layout), submission files, reports, resume
and the refusals."""
import json
import re

import pytest

from peftcore.cli import main
from test_glue import FILES

BASE = ["finetune", "--model", "random", "--no-progress", "--threads", "1", "--max-length", "32"]


@pytest.fixture
def glue_root(tmp_path):
    root = tmp_path / "glue"
    for task, files in FILES.items():
        (root / task).mkdir(parents=True)
        for name, text in files.items():
            (root / task / name).write_text(text, encoding="utf-8")
    (root / "diagnostic").mkdir()
    (root / "diagnostic" / "diagnostic.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    return root


def _summary(text):
    return json.loads(text[text.rindex("\n{") + 1:text.rindex("}") + 1])


@pytest.mark.parametrize("task, method, metrics, submissions", [
    ("CoLA", "lora", {"matthews_correlation", "loss"}, ["CoLA.tsv"]),
    ("sts-b", "bitfit", {"pearson", "spearmanr", "loss"}, ["STS-B.tsv"]),
    ("QQP", "ia3", {"f1", "accuracy", "loss"}, ["QQP.tsv"]),
    ("MNLI", "full", {"accuracy", "loss", "mm_accuracy", "mm_loss"},
     ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]),
    ("WNLI", "lora", {"accuracy", "loss"}, ["WNLI.tsv"]),
    ("SST-2", "pfeiffer", {"accuracy", "loss"}, ["SST-2.tsv"]),
    ("RTE", "houlsby", {"accuracy", "loss"}, ["RTE.tsv"]),
    ("MRPC", "prefix_tuning", {"f1", "accuracy", "loss"}, ["MRPC.tsv"]),
    ("SST-2", "p-tuning", {"accuracy", "loss"}, ["SST-2.tsv"]),
    ("QNLI", "prompt_tuning", {"accuracy", "loss"}, ["QNLI.tsv"]),
    ("RTE", "unipelt", {"accuracy", "loss"}, ["RTE.tsv"]),
])
def test_each_task_and_method_runs_reports_and_predicts(glue_root, tmp_path, capsys, task, method,
                                                        metrics, submissions):
    out = tmp_path / "out"
    assert main([*BASE, "--task", task, "--method", method, "--glue-dir", str(glue_root),
                 "--max-steps", "2", "--batch-size", "2", "--output-dir", str(out),
                 "--predict"]) == 0
    text = capsys.readouterr().out
    summary = _summary(text)
    assert set(summary["dev_after"]) == metrics and summary["method"] == method.replace("-", "_")
    report = json.loads((out / "report.json").read_text())
    for key in ("trainable_params", "all_params", "train_seconds", "peak_rss_mb",
                "latency_ms_batch_1", "latency_ms_batch_32", "dev"):
        assert key in report, key
    assert "latency_ms_batch_32" in text  # the table
    assert sorted(p.name for p in (out / "glue_submission").iterdir()) == submissions
    first = (out / "glue_submission" / submissions[-1]).read_text().splitlines()
    assert first[0] == "index\tprediction"


def test_trainer_options_checkpoints_and_resume(glue_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*BASE, "--task", "RTE", "--glue-dir", str(glue_root), "--output-dir", str(out),
            "--max-steps", "4", "--batch-size", "1", "--gradient-accumulation-steps", "1",
            "--eval-steps", "2", "--save-strategy", "steps", "--save-total-limit", "1",
            "--lr-scheduler-type", "cosine", "--class-weights", "balanced", "--oversample",
            "--metric-for-best-model", "accuracy", "--load-best-model-at-end"]
    assert main(argv) == 0
    capsys.readouterr()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert "checkpoint-4" in kept and len(kept) <= 2   # the newest, and the best if another
    assert main([*argv, "--max-steps", "6", "--resume"]) == 0   # a longer run goes on from 4
    capsys.readouterr()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert main([*argv, "--method", "ia3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"peftcore finetune: error: .*checkpoint-6 was written for another PEFT "
                     r"method", err)
    assert main([*argv, "--task", "WNLI", "--resume", str(out / "checkpoint-6")]) == 2
    assert "was written for another task" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--task", "RTE", "--metric-for-best-model", "f1", "--eval-steps", "1"],
     r"metric_for_best_model 'f1' is not a metric of RTE"),
    (["--task", "CoLA", "--few-shot-k", "4"], r"K=4 is larger than the training set \(3 examples\)"),
    (["--task", "MRPC", "--glue-dir", "{tmp}/empty"], r"GLUE file not found: .*empty/MRPC/train\.tsv"),
    (["--task", "QNLI", "--glue-dir", "{glue}", "--resume"], "--resume without a path resumes"),
    (["--task", "RTE", "--predict"], "--predict writes GLUE submission files"),
    (["--task", "STS-B", "--glue-dir", "", "--max-steps", "1"], r"no data for STS-B: give --glue-dir"),
    (["--task", "SST-2", "--load-best-model-at-end"], "load_best_model_at_end needs evaluations"),
])
def test_bad_options_name_the_argument(glue_root, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{glue}", str(glue_root)) for a in argv]
    if "--glue-dir" not in argv:
        argv += ["--glue-dir", str(glue_root)]
    elif argv[argv.index("--glue-dir") + 1] == "":
        i = argv.index("--glue-dir")
        argv = argv[:i] + argv[i + 2:]
    assert main([*BASE, "--max-steps", "1", *argv]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("argv, message", [
    (["--task", "SST-5"], "argument --task: invalid choice: 'SST-5'"),
    (["--method", "prefix"], "argument --method: invalid choice: 'prefix'"),
    (["--class-weights", "1,-2"], "argument --class-weights: expected 'balanced' or comma-separated"),
    (["--few-shot-k", "0"], "argument --few-shot-k: expected an int >= 1"),
    (["--warmup-ratio", "2"], r"argument --warmup-ratio: expected a number in \[0, 1\]"),
])
def test_parser_refusals(argv, message, capsys):
    with pytest.raises(SystemExit):
        main([*BASE, *argv])
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("method, config_class, mh_adapter", [
    ("pfeiffer", "SeqBnConfig", False), ("houlsby", "DoubleSeqBnConfig", True)])
def test_bottleneck_methods_build_adapterhub_configs(method, config_class, mh_adapter):
    from peftcore.cli import _peft_config, build_parser

    args = build_parser().parse_args(["finetune", "--method", method])
    default = _peft_config(args, None)
    args = build_parser().parse_args(["finetune", "--method", method, "--reduction-factor", "4"])
    config = _peft_config(args, None)
    assert type(config).__name__ == config_class == type(default).__name__
    assert (config.reduction_factor, default.reduction_factor) == (4, 16)
    assert config.mh_adapter is mh_adapter and config.output_adapter is True


def _config(*argv):
    from peftcore.cli import PRETRAINED_DEFAULTS, _fill_defaults, _peft_config, build_parser

    args = build_parser().parse_args(["finetune", *argv])
    _fill_defaults(args, PRETRAINED_DEFAULTS)  # as loading a --model folder does
    args.tokenizer_path = "/models/minilm"
    return _peft_config(args, None)


def test_prompt_methods_unipelt_and_any_config_field_from_the_command_line():
    config = _config("--method", "P-Tuning", "--encoder-reparameterization-type", "lstm",
                     "--encoder-hidden-size", "64", "--num-virtual-tokens", "8")
    assert type(config).__name__ == "PromptEncoderConfig"
    assert (config.num_virtual_tokens, config.encoder_hidden_size) == (8, 64)
    assert str(getattr(config.encoder_reparameterization_type, "value",
                       config.encoder_reparameterization_type)) == "LSTM"
    config = _config("--method", "prefix_tuning", "--prefix-projection")
    assert type(config).__name__ == "PrefixTuningConfig"
    assert (config.num_virtual_tokens, config.prefix_projection) == (20, True)
    assert _config("--method", "prefix_tuning").prefix_projection is False  # P-tuning v2
    config = _config("--method", "prompt_tuning", "--prompt-tuning-init-text", "great movie")
    assert str(getattr(config.prompt_tuning_init, "value", config.prompt_tuning_init)) == "TEXT"
    assert (config.prompt_tuning_init_text, config.tokenizer_name_or_path) == \
        ("great movie", "/models/minilm")
    apl = _config("--method", "unipelt")
    ap = _config("--method", "unipelt", "--unipelt-parts", "prefix_tuning, adapter")
    assert [type(c).__name__ for c in apl.configs] == \
        ["PrefixTuningConfig", "SeqBnConfig", "LoRAConfig"]
    assert [type(c).__name__ for c in ap.configs] == ["PrefixTuningConfig", "SeqBnConfig"]
    assert all(c.use_gating for c in apl.configs + ap.configs)
    config = _config("--method", "lora", "--peft-option", "r=4", "--peft-option",
                     "target_modules=[query, key]", "--peft-option", "use_rslora=true")
    assert (config.r, sorted(config.target_modules), config.use_rslora) == \
        (4, ["key", "query"], True)
    config = _config("--method", "pfeiffer", "--peft-option", "non_linearity=swish",
                     "--peft-option", "leave_out=[0, 1]")
    assert (config.non_linearity, list(config.leave_out)) == ("swish", [0, 1])


@pytest.mark.parametrize("argv, message", [
    (["--method", "lora", "--peft-option", "rank=4"],
     "--peft-option rank: LoraConfig has no such field"),
    (["--method", "ia3", "--peft-option", "r"], "--peft-option expects NAME=VALUE, got 'r'"),
    (["--method", "prefix_tuning", "--prompt-tuning-init-text", "good"],
     "--prompt-tuning-init-text does not apply to --method prefix_tuning"),
    (["--method", "p_tuning", "--prefix-projection"],
     "--prefix-projection does not apply to --method p_tuning"),
    (["--method", "unipelt", "--unipelt-parts", "prefix_tuning,ia3"],
     "--unipelt-parts expects names from prefix_tuning, adapter, lora"),
    (["--method", "unipelt", "--peft-option", "r=4"], "--peft-option does not apply"),
    (["--method", "prompt_tuning", "--num-virtual-tokens", "60"],
     "60 virtual tokens and 32 input tokens need positions"),  # beyond the model's 64
])
def test_method_options_that_do_not_fit_are_refused_by_name(glue_root, argv, message, capsys):
    assert main([*BASE, "--task", "SST-2", "--glue-dir", str(glue_root), "--max-steps", "1",
                 *argv]) == 2
    captured = capsys.readouterr()
    assert re.search(re.escape(message), captured.err), captured.err
    assert "Traceback" not in captured.err


def test_every_task_is_a_choice():
    from peftcore.cli import build_parser

    for alias, name in (("cola", "CoLA"), ("sst2", "SST-2"), ("stsb", "STS-B"), ("mnli", "MNLI"),
                        ("QNLI", "QNLI"), ("rte", "RTE"), ("wnli", "WNLI"), ("qqp", "QQP"),
                        ("mrpc", "MRPC")):
        assert build_parser().parse_args(["finetune", "--task", alias]).task == name
