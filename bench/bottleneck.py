"""Bottleneck adapters: peftcore beside AdapterHub `adapters` on torch + transformers.

    python bench/bottleneck.py [--models minilm,bert-base] [--modes pfeiffer,houlsby,adapter,bare]
                               [--steps N] [--warmup N] [--batch 32] [--seq 128] [--threads 2]
                               [--rounds 2] [--isa avx2] [--quick] [--no-paired]

The models are built as in bench/lora.py (see bench/harness.py): a transformers
BertForSequenceClassification (2 labels) with torch.manual_seed(0), saved and loaded by both
frameworks; the same random batch (B × T tokens, no padding) for both.

  pfeiffer  training step of a Pfeiffer adapter (SeqBnConfig(), reduction 16, relu) and the
            classifier: forward with labels + backward + AdamW step + zero_grad, train mode
            (the encoder's dropout 0.1). torch: adapters.init, add_adapter, train_adapter.
  houlsby   the same with a Houlsby adapter (DoubleSeqBnConfig(), swish, both blocks).
  adapter   inference (eval; torch under inference_mode, peftcore under no_grad) with the
            Pfeiffer adapter, its up-projection set to seeded values (so it is not zero).
  bare      inference of the model as loaded.

Each framework × mode runs --rounds times in its own process (for the peak RSS). Then, for
each training mode, one more child alternates peftcore's and adapters-on-torch's steps in one
process ("paired"; --no-paired skips it), and with adapter and bare both selected one more
peftcore child alternates a bare and an adapted model's forwards: the medians of these paired
ratios survive load and CPU steal that drift between separate processes.

Targets (issue 17): the MiniLM Pfeiffer train step ≥ 2× adapters-on-torch; inference with
the adapter at most 10 % slower than the bare model (adapter / bare seq/s ≥ 0.90).

bench/unipelt.py runs the same measurements for UniPELT through `run(Spec)` below.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable

import harness
from harness import (MODELS, child_prepare, load_average, make_batch, peftcore_run,
                     print_result, torch_batch, torch_run)

FRAMEWORKS = ("peftcore", "torch")
ADAMW = dict(lr=1e-3, weight_decay=0.01)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One AdapterHub-style bench: its modes (training modes, one adapted-inference mode
    named "adapter", "bare"), labels, the peftcore config of a mode, and the parameters that
    start at zero and are seeded for the inference mode."""
    title: str
    modes: tuple
    train_modes: tuple
    labels: dict
    config_of: Callable  # (mode, **kwargs) -> peftcore config, None for "bare"
    seeded: tuple        # name suffixes of parameters seeded for the "adapter" mode
    infer_note: Callable  # (model, ratio peftcore, ratio torch) -> the summary line


def seeded_values(name, shape):
    """Seeded small values for a zero-initialised weight, keyed by its AdapterHub name."""
    import zlib

    import numpy as np
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


# ------------------------------------------------------------------ child side

def torch_model(spec, args, mode):
    """(model, info): transformers' model with `adapters`' version of the mode's config (built
    from peftcore's adapterhub_dict(), so both sides run the same configuration)."""
    import torch
    model, info = harness.torch_model(args)
    if mode != "bare":
        import adapters
        info["adapters"] = adapters.__version__
        adapters.init(model)
        config = adapters.AdapterConfig.load(spec.config_of(mode).adapterhub_dict())
        model.add_adapter("default", config=config)
        model.train_adapter("default")
        if mode == "adapter":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(spec.seeded):
                        p.copy_(torch.from_numpy(seeded_values(name, tuple(p.shape))))
    return model, info


def peftcore_model(spec, args, mode):
    import peftcore
    model = harness.peftcore_model(args)
    if mode != "bare":
        model = peftcore.get_peft_model(model, spec.config_of(mode, task_type="SEQ_CLS"))
    if mode == "adapter":
        for name, p in model.named_parameters():
            if name.endswith(spec.seeded):
                p[...] = seeded_values(name[len("base_model.model."):], tuple(p.shape))
    return model


def child_torch(spec, args):
    model, info = torch_model(spec, args, args.mode)
    batch = torch_batch(args, MODELS[args.model]["vocab_size"])
    return torch_run(args, model, batch, info, args.mode in spec.train_modes, ADAMW)


def child_peftcore(spec, args):
    import peftcore
    peftcore.set_num_threads(args.threads)
    backend = peftcore.backend_info()
    info = {"blis": backend.get("blis_arch"), "isa": backend.get("isa")}
    model = peftcore_model(spec, args, args.mode)
    batch = make_batch(args, MODELS[args.model]["vocab_size"])
    return peftcore_run(args, model, batch, info, args.mode in spec.train_modes, ADAMW)


def child_paired(spec, args):
    """peftcore's and adapters-on-torch's training steps alternating in one process."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    theirs, _ = torch_model(spec, args, args.mode)
    return harness.paired_train(args, peftcore_model(spec, args, args.mode), theirs, ADAMW)


def child_interleaved(spec, args):
    """Adapter vs bare inference in one process, forwards alternating (order flips)."""
    import peftcore
    peftcore.set_num_threads(args.threads)
    return harness.interleaved_inference(args, peftcore_model(spec, args, "bare"),
                                         peftcore_model(spec, args, "adapter"), name="adapter")


CHILDREN = {"prepare": lambda spec, args: child_prepare(args), "torch": child_torch,
            "peftcore": child_peftcore, "paired": child_paired, "interleaved": child_interleaved}


# ------------------------------------------------------------------ parent side

def parse_args(spec):
    ap = argparse.ArgumentParser(description=spec.title)
    ap.add_argument("--models", default="minilm", help="comma-separated, from " + ", ".join(MODELS))
    ap.add_argument("--modes", default=",".join(spec.modes), help="default: %(default)s")
    ap.add_argument("--no-paired", action="store_true",
                    help="skip the training steps alternating with torch's in one process")
    harness.add_run_arguments(ap, rounds_help="runs per framework and mode",
                              quick_help="smoke test: batch 4 x seq 32, 1 + 1 steps")
    harness.add_child_arguments(ap, CHILDREN, spec.modes)
    args = harness.finish_run_arguments(ap.parse_args(), ap)
    if args.child:
        return args
    args.model_list = harness.parse_list(args.models, MODELS, "model", ap)
    args.mode_list = harness.parse_list(args.modes, spec.modes, "mode", ap)
    return args


def run(spec, script):
    """The bench of `spec`, its children run as `script`."""
    args = parse_args(spec)
    if args.child:
        print_result(CHILDREN[args.child](spec, args))
        return 0
    print(f"{spec.title}: batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"{args.warmup} + {args.steps} steps, {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{load_average()}\n{harness.describe_isa(args)}", flush=True)
    harness.warn_if_busy()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="peftcore_adapter_bench_") as tmp:
        for model in args.model_list:
            folder = Path(tmp) / model
            harness.run_child(script, "prepare", args, model, folder, "bare")
            speeds = {}
            for mode in args.mode_list:
                runs = {fw: [] for fw in FRAMEWORKS}
                for fw in harness.round_order(FRAMEWORKS, args.rounds):
                    r = harness.run_child(script, fw, args, model, folder, mode)
                    runs[fw].append(r)
                    print(f"    {mode:8s} {fw:8s} {r['seq_per_s']:8.2f} seq/s  peak "
                          f"{r['peak_mb']:.0f} MB  trainable {r['info']['trainable']:,}  "
                          f"other processes used {r['others_cores'] or 0:.2f} cores", flush=True)
                speeds[mode] = {fw: harness.combine_rounds(rs) for fw, rs in runs.items()}
                rows.append(harness.speed_row(model, spec.labels[mode], speeds[mode]["peftcore"],
                                              speeds[mode]["torch"], rss_ratio=False))
                if mode in spec.train_modes:
                    separate = (speeds[mode]["peftcore"]["seq_per_s"]
                                / speeds[mode]["torch"]["seq_per_s"])
                    line = (f"{model}: {spec.labels[mode]} peftcore / adapters-on-torch: "
                            f"{separate:.2f}x in separate processes")
                    ratio = separate
                    if not args.no_paired:
                        r = harness.run_child(script, "paired", args, model, folder, mode)
                        ratio = r["ratio"]
                        line += (f", {ratio:.2f}x paired in one process (quartiles "
                                 f"{r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f}; peftcore "
                                 f"{r['peftcore_seq_per_s']:.2f} seq/s, torch "
                                 f"{r['torch_seq_per_s']:.2f})")
                    notes.append(line + f" (target >= 2): {'met' if ratio >= 2 else 'MISSED'}")
                    print(notes[-1], flush=True)
            if {"adapter", "bare"} <= set(speeds):
                r = harness.run_child(script, "interleaved", args, model, folder, "bare")
                torch_ratio = (speeds["adapter"]["torch"]["seq_per_s"]
                               / speeds["bare"]["torch"]["seq_per_s"])
                notes.append(spec.infer_note(model, r["ratio"], torch_ratio))
                print(notes[-1], flush=True)
    print()
    harness.print_table(("model", "mode", "peftcore seq/s", "torch seq/s", "ratio",
                         "peftcore RSS MB", "torch RSS MB"), rows)
    print()
    for note in notes:
        print(note)
    return 0


def _config_of(mode, **kwargs):
    import peftcore
    name = {"pfeiffer": "SeqBnConfig", "houlsby": "DoubleSeqBnConfig",
            "adapter": "SeqBnConfig"}.get(mode)
    return None if name is None else getattr(peftcore, name)(**kwargs)


def _infer_note(model, ratio, torch_ratio):
    return (f"{model}: peftcore adapter / bare inference, interleaved = {ratio:.3f} (target >= "
            f"0.90): {'met' if ratio >= 0.90 else 'MISSED'}; adapters-on-torch: "
            f"{torch_ratio:.3f}")


BOTTLENECK = Spec(
    title="bottleneck bench (peftcore beside AdapterHub adapters on torch)",
    modes=("pfeiffer", "houlsby", "adapter", "bare"), train_modes=("pfeiffer", "houlsby"),
    labels={"pfeiffer": "Pfeiffer train step", "houlsby": "Houlsby train step",
            "adapter": "infer, Pfeiffer adapter", "bare": "infer, bare model"},
    config_of=_config_of, seeded=("adapter_up.weight",), infer_note=_infer_note)


if __name__ == "__main__":
    sys.exit(run(BOTTLENECK, __file__))
