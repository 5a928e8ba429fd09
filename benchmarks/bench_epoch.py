"""Benchmark: seconds per training epoch, seconds per full-ranking evaluation, peak memory, and what CLEAR adds.

Each configuration runs in its own subprocess (one at a time, never in parallel: two torch processes on a 2-core
machine slow each other down many times over), so peak RSS belongs to that configuration alone.

    python benchmarks/bench_epoch.py --data data/baby-like --model freedom --epochs 3 --threads 1
    python benchmarks/bench_epoch.py --data ../shared/data/baby-interactions --model lightgcn --set n_layers=4

Prints a table and writes JSON (``--json``). Epoch times exclude the first epoch when more than one ran (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_one(args: argparse.Namespace) -> dict:
    """Train a few epochs of one configuration in this process and report its timings."""
    import torch

    from clear_lab.cli import _parse_set
    from clear_lab.data import load_dataset
    from clear_lab.models import get_model
    from clear_lab.train import TrainConfig, apply_input_clear, train

    torch.set_num_threads(args.threads)
    cls = get_model(args.model)
    t0 = time.perf_counter()
    data = load_dataset(args.data, load_all_features=cls.uses_features)
    load_s = time.perf_counter() - t0
    config = TrainConfig(model=args.model, params=_parse_set(args.set), clear=args.clear, k=args.k,
                         epochs=args.epochs, patience=10**6, seed=999, device=args.device, threads=args.threads,
                         progress=False)
    projection_s = None
    if args.clear == "input":
        t0 = time.perf_counter()
        apply_input_clear(data, config)  # timed alone; train() repeats it (small next to training)
        projection_s = time.perf_counter() - t0
    rec = train(data, config).record
    train_times = [h["train_seconds"] for h in rec["history"]]
    eval_times = [h["eval_seconds"] for h in rec["history"] if "eval_seconds" in h]
    steady = train_times[1:] if len(train_times) > 1 else train_times
    cpu = [h["train_cpu_seconds"] for h in rec["history"]]
    cpu = cpu[1:] if len(cpu) > 1 else cpu
    return {"model": args.model, "clear": args.clear, "k": args.k, "data": str(args.data), "threads": args.threads,
            "device": rec["environment"]["device"], "epochs": len(train_times), "load_seconds": load_s,
            "build_seconds": rec["seconds"]["build"], "train_epoch_seconds": sum(steady) / len(steady),
            "train_epoch_seconds_all": train_times, "train_epoch_cpu_seconds": sum(cpu) / len(cpu),
            "eval_seconds": sum(eval_times) / len(eval_times),
            "projection_seconds": projection_s,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "dataset": {k: rec["data"][k] for k in ("n_users", "n_items", "n_train", "features")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MMRec-format folder")
    p.add_argument("--model", default="freedom")
    p.add_argument("--k", type=int, default=4, help="CLEAR rank for the CLEAR configurations")
    p.add_argument("--placements", default="none,input", help="comma-separated CLEAR placements to time")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="+", default=None, help="model hyper-parameters, key=value")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one placement in this process
    args = p.parse_args()

    if args.one is not None:
        args.clear = args.one
        print(json.dumps(run_one(args)))
        return 0

    results = []
    for placement in args.placements.split(","):
        cmd = [sys.executable, __file__, "--one", placement, "--data", args.data, "--model", args.model,
               "--k", str(args.k), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--device", args.device] + (["--set", *args.set] if args.set else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"{'model':10s} {'clear':7s} {'threads':>7s} {'train s/epoch':>13s} {'cpu s/epoch':>11s} "
          f"{'eval s':>8s} "
          f"{'proj s':>7s} {'peak GB':>8s}")
    for r in results:
        proj = f"{r['projection_seconds']:.2f}" if r["projection_seconds"] is not None else "-"
        print(f"{r['model']:10s} {r['clear']:7s} {r['threads']:7d} {r['train_epoch_seconds']:13.3f} "
              f"{r['train_epoch_cpu_seconds']:11.3f} {r['eval_seconds']:8.3f} {proj:>7s} {r['peak_rss_gb']:8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
