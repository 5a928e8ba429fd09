"""Our side of the parity table (docs/parity.md): train backbones at their default (MMRec) setting, one seed at a
time, and keep each result record.

    python benchmarks/parity.py --dataset default --models bpr lightgcn vbpr freedom bm3 --seeds 999 1 2
    python benchmarks/parity.py --dataset tiktok --models bpr lightgcn vbpr freedom bm3 lgmrec slmrec mgcn
    python benchmarks/parity.py --collect --mmrec /path/to/mmrec/results  # both sides -> docs/parity_runs.csv
    python benchmarks/parity.py --table [--write docs/parity.md]          # the markdown table of docs/parity.md

Every run uses MMRec's protocol with a common cap of ``--epochs`` (300: the MMRec runs it is compared with use the
same cap), one torch thread, CPU. A record is written to ``runs/parity/<dataset>_<model>_s<seed>.json`` and a run
whose record exists is skipped (``--force`` retrains). ``--collect`` writes one row per run of either side to
``docs/parity_runs.csv`` (ours from ``runs/parity``, MMRec's from the JSON summaries its harness wrote, ``--mmrec``;
docs/parity.md says how MMRec was run); ``--table`` prints test Recall@20 / NDCG@20 of both, the relative gap,
best epochs and seconds per training epoch from that file. Runs one training at a time.
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


CSV = Path("docs/parity_runs.csv")
FIELDS = ["side", "data", "model", "seed", "epoch_cap", "recall@20", "ndcg@20", "best_epoch", "epochs_run",
          "train_s_per_epoch", "train_cpu_s_per_epoch"]


def _ours(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        rows.append({"side": "clear-lab", "data": r["data"]["name"], "model": r["config"]["model"],
                     "seed": r["config"]["seed"], "epoch_cap": r["config"]["epochs"],
                     "recall@20": r["test"]["recall@20"], "ndcg@20": r["test"]["ndcg@20"],
                     "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                     "train_s_per_epoch": r["seconds"]["train_epoch_mean"],
                     "train_cpu_s_per_epoch": r["seconds"]["train_epoch_cpu_mean"]})
    return rows


def _mmrec(folder: Path) -> list[dict]:
    """The MMRec harness's JSON summaries (docs/parity.md says how MMRec was run)."""
    rows = []
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if "test_at_best_valid_main" not in r:
            continue
        timing = r.get("timing", {})
        rows.append({"side": "MMRec", "data": r["name"], "model": r["model"].lower(), "seed": r["seed"],
                     "epoch_cap": r.get("max_epochs"), "recall@20": r["test_at_best_valid_main"]["recall@20"],
                     "ndcg@20": r["test_at_best_valid_main"]["ndcg@20"], "best_epoch": r.get("best_valid_epoch"),
                     "epochs_run": r.get("epochs_run"),
                     "train_s_per_epoch": timing.get("train_epoch_call_seconds", {}).get("mean"),
                     "train_cpu_s_per_epoch": timing.get("train_epoch_call_cpu_seconds", {}).get("mean")})
    return rows


def collect(args) -> int:
    """Write docs/parity_runs.csv: one row per run of either side (the table is computed from it)."""
    import csv

    rows = _ours(OUT) + _mmrec(Path(args.mmrec))
    with CSV.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"{CSV}: {len(rows)} runs")
    return 0


def _load_csv() -> list[dict]:
    import csv

    with CSV.open() as fh:
        return list(csv.DictReader(fh))


def table(args) -> int:
    """Print the table, or with ``--write FILE`` put it between the ``<!-- parity-table -->`` markers of FILE."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _print_table()
    text = buf.getvalue()
    if not args.write:
        print(text, end="")
        return 0
    path = Path(args.write)
    doc = path.read_text()
    start, end = "<!-- parity-table:start -->\n", "<!-- parity-table:end -->"
    if start not in doc or end not in doc:
        raise SystemExit(f"{path}: no {start.strip()} ... {end} markers to write the table between")
    head, rest = doc.split(start, 1)
    path.write_text(head + start + text + rest[rest.index(end):])
    print(f"{path}: table of {text.count(chr(10)) - 2} rows written")
    return 0


def _print_table() -> None:
    """Markdown: per (data, model) the seeds both sides ran, the means of each side and the relative gaps."""
    from clear_lab.models import MODELS

    grouped = defaultdict(lambda: {"clear-lab": {}, "MMRec": {}})
    for row in _load_csv():
        grouped[(row["data"], row["model"])][row["side"]][int(row["seed"])] = row
    order = list(MODELS)
    print("| data | model | seeds | cap | R@20 ours | R@20 MMRec | gap | N@20 ours | N@20 MMRec | gap "
          "| best epoch ours / MMRec | train s/epoch ours / MMRec (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted(grouped, key=lambda k: (k[0] != "default", order.index(k[1]) if k[1] in order else 99))
    for data, model in keys:
        ours, theirs = grouped[(data, model)]["clear-lab"], grouped[(data, model)]["MMRec"]
        both = sorted(set(ours) & set(theirs))
        if not both:
            side = "ours only" if ours else "MMRec only"
            print(f"| {data} | {model} | {', '.join(map(str, sorted(ours or theirs)))} | | | | {side} | | | | | |")
            continue

        def mean(side, key, both=both):
            vals = [float(side[s][key]) for s in both if side[s][key] not in ("", None)]
            return sum(vals) / len(vals) if vals else float("nan")

        ro, rm, no, nm = (mean(ours, "recall@20"), mean(theirs, "recall@20"), mean(ours, "ndcg@20"),
                          mean(theirs, "ndcg@20"))
        caps = sorted({ours[s]["epoch_cap"] for s in both} | {theirs[s]["epoch_cap"] for s in both})
        best = "/".join(ours[s]["best_epoch"] for s in both) + " / " + "/".join(theirs[s]["best_epoch"] for s in both)
        secs = (f"{mean(ours, 'train_s_per_epoch'):.2f} / {mean(theirs, 'train_s_per_epoch'):.2f} "
                f"({mean(ours, 'train_cpu_s_per_epoch'):.2f} / {mean(theirs, 'train_cpu_s_per_epoch'):.2f})")
        print(f"| {data} | {model} | {', '.join(map(str, both))} | {', '.join(caps)} | {ro:.4f} | {rm:.4f} | "
              f"{100 * (ro / rm - 1):+.1f}% | {no:.4f} | {nm:.4f} | {100 * (no / nm - 1):+.1f}% | {best} | {secs} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="default", help="preset name, folder, or tiktok")
    p.add_argument("--models", nargs="+", default=["bpr", "lightgcn", "vbpr", "freedom"])
    p.add_argument("--seeds", type=int, nargs="+", default=[999])
    p.add_argument("--epochs", type=int, default=300, help="common epoch cap (default 300)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true")
    p.add_argument("--collect", action="store_true", help="write docs/parity_runs.csv from both sides' records")
    p.add_argument("--mmrec", default=None, help="folder of the MMRec runs' JSON summaries (with --collect)")
    p.add_argument("--table", action="store_true", help="print the parity table from docs/parity_runs.csv")
    p.add_argument("--write", default=None, help="with --table: write it between the markers of this file")
    args = p.parse_args()
    if args.collect:
        if not args.mmrec:
            p.error("--collect needs --mmrec")
        return collect(args)
    if args.table:
        return table(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
