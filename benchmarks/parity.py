"""Our side of the parity table (docs/parity.md): train backbones at their default (MMRec) setting, one seed at a
time, and keep each result record.

    python benchmarks/parity.py --dataset default --models bpr lightgcn vbpr freedom bm3 --seeds 999 1 2
    python benchmarks/parity.py --dataset tiktok --models bpr lightgcn vbpr freedom bm3 lgmrec slmrec mgcn
    python benchmarks/parity.py --table --mmrec /path/to/mmrec/results   # print the markdown table

Every run uses MMRec's protocol with a common cap of ``--epochs`` (300: the MMRec runs it is compared with use the
same cap), one torch thread, CPU. A record is written to ``runs/parity/<dataset>_<model>_s<seed>.json`` and a run
whose record exists is skipped (``--force`` retrains). ``--table`` joins these records with the JSON summaries
of the MMRec runs (``--mmrec``: one ``<dataset>_<MODEL>_s<seed>.json`` per run, as written by the MMRec harness
described in docs/parity.md) and prints test Recall@20 / NDCG@20, the relative gap, best epochs and seconds per
training epoch of both. Runs one training at a time (never in parallel on a small machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path("runs/parity")


def run(args) -> int:
    from clear_lab.data import load_dataset
    from clear_lab.datasets import dataset_modalities, resolve_dataset
    from clear_lab.train import TrainConfig, train

    path = resolve_dataset(args.dataset)
    data = load_dataset(path, modalities=dataset_modalities(args.dataset, path))
    OUT.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for seed in args.seeds:
            out = OUT / f"{args.dataset}_{model}_s{seed}.json"
            if out.exists() and not args.force:
                print(f"{out} exists: skipped", flush=True)
                continue
            cfg = TrainConfig(model=model, seed=seed, epochs=args.epochs, threads=1, device=args.device,
                              progress=False, cache_dir=None)
            res = train(data, cfg)
            res.record["history"] = [{k: v for k, v in h.items() if k in ("epoch", "loss", "train_seconds",
                                                                           "train_cpu_seconds", "eval_seconds")}
                                     for h in res.record["history"]]
            out.write_text(json.dumps(res.record, indent=1) + "\n")
            r = res.record
            print(f"{args.dataset} {model} seed {seed}: test recall@20 {r['test']['recall@20']:.4f} "
                  f"ndcg@20 {r['test']['ndcg@20']:.4f} best epoch {r['best_epoch']} of {r['epochs_run']}, "
                  f"{r['seconds']['train_epoch_mean']:.3f} s/epoch", flush=True)
    return 0


def _ours(folder: Path) -> dict:
    rows = {}
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        key = (f.name.split("_")[0], r["config"]["model"], r["config"]["seed"])
        rows[key] = {"recall": r["test"]["recall@20"], "ndcg": r["test"]["ndcg@20"], "best": r["best_epoch"],
                     "ran": r["epochs_run"], "sec": r["seconds"]["train_epoch_mean"],
                     "cpu": r["seconds"]["train_epoch_cpu_mean"]}
    return rows


def _mmrec(folder: Path) -> dict:
    rows = {}
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if "test_at_best_valid_main" not in r:
            continue
        t = r["test_at_best_valid_main"]
        timing = r.get("timing", {})
        rows[(r["name"], r["model"].lower(), r["seed"])] = {
            "recall": t["recall@20"], "ndcg": t["ndcg@20"], "best": r.get("best_valid_epoch"),
            "ran": r.get("epochs_run"), "sec": timing.get("train_epoch_call_seconds", {}).get("mean"),
            "cpu": timing.get("train_epoch_call_cpu_seconds", {}).get("mean")}
    return rows


def table(args) -> int:
    from clear_lab.models import MODELS

    ours, theirs = _ours(OUT), _mmrec(Path(args.mmrec))
    grouped = defaultdict(lambda: {"ours": [], "mmrec": []})
    for key, row in ours.items():
        grouped[(key[0], key[1])]["ours"].append((key[2], row))
    for key, row in theirs.items():
        grouped[(key[0], key[1])]["mmrec"].append((key[2], row))
    order = list(MODELS)
    print("| data | model | seeds | R@20 ours | R@20 MMRec | gap | N@20 ours | N@20 MMRec | gap | best epoch ours / "
          "MMRec | s/epoch ours / MMRec (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (data, model) in sorted(grouped, key=lambda k: (k[0] != "default", order.index(k[1]) if k[1] in order else 99)):
        g = grouped[(data, model)]
        seeds_o = {s for s, _ in g["ours"]}
        seeds_m = {s for s, _ in g["mmrec"]}
        both = sorted(seeds_o & seeds_m)
        if not both:
            r_o, r_m = _mean(g["ours"], "recall", seeds_o), _mean(g["mmrec"], "recall", seeds_m)
            print(f"| {data} | {model} | - | {r_o} | {r_m} | not paired | | | | | |")
            continue

        def m(side, key, g=g, both=both):
            return _mean(g[side], key, set(both), raw=True)

        ro, rm, no, nm = m("ours", "recall"), m("mmrec", "recall"), m("ours", "ndcg"), m("mmrec", "ndcg")
        bo = "/".join(str(dict(g["ours"])[s]["best"]) for s in both)
        bm = "/".join(str(dict(g["mmrec"])[s]["best"]) for s in both)
        print(f"| {data} | {model} | {', '.join(map(str, both))} | {ro:.4f} | {rm:.4f} | {100 * (ro / rm - 1):+.1f}% | "
              f"{no:.4f} | {nm:.4f} | {100 * (no / nm - 1):+.1f}% | {bo} / {bm} | "
              f"{m('ours', 'sec'):.2f} / {m('mmrec', 'sec'):.2f} ({m('ours', 'cpu'):.2f} / {m('mmrec', 'cpu'):.2f}) |")
    return 0


def _mean(rows, key, seeds, raw=False):
    vals = [r[key] for s, r in rows if s in seeds and r.get(key) is not None]
    if not vals:
        return float("nan") if raw else "-"
    v = sum(vals) / len(vals)
    return v if raw else f"{v:.4f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="default", help="preset name, folder, or tiktok")
    p.add_argument("--models", nargs="+", default=["bpr", "lightgcn", "vbpr", "freedom"])
    p.add_argument("--seeds", type=int, nargs="+", default=[999])
    p.add_argument("--epochs", type=int, default=300, help="common epoch cap (default 300)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true")
    p.add_argument("--table", action="store_true", help="print the parity table instead of training")
    p.add_argument("--mmrec", default=None, help="folder of the MMRec runs' JSON summaries (with --table)")
    args = p.parse_args()
    if args.table:
        if not args.mmrec:
            p.error("--table needs --mmrec")
        return table(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
