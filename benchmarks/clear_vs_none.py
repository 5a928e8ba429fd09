"""Does CLEAR help a backbone? Train it with and without CLEAR over several seeds and test the difference.

    python benchmarks/clear_vs_none.py --dataset default --model freedom --seeds 10 11 12 13 14
    python benchmarks/clear_vs_none.py --dataset control --model freedom --seeds 10 11 12 13 14

For each seed both runs share everything but the projection (same seed, data, settings). Reported: test Recall@20
and NDCG@20 per seed, mean and 95% t-interval over seeds, a paired t-test over seeds, and paired tests over users
(bootstrap of the mean difference and Wilcoxon signed-rank) on each user's metric averaged over the seeds. k is the
permutation null's suggestion unless --k is given. Runs are cached (runs/cache), so a rerun only re-reads them.
Runs one training at a time (never in parallel on a small machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    from clear_lab.data import load_dataset
    from clear_lab.datasets import dataset_modalities, resolve_dataset
    from clear_lab.projection import permutation_null
    from clear_lab.runs import cached_train
    from clear_lab.stats import mean_ci, paired_bootstrap, paired_seeds_test, paired_wilcoxon
    from clear_lab.train import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="default", help="preset name, folder, or tiktok")
    p.add_argument("--model", default="freedom")
    p.add_argument("--placement", default="input", choices=["input", "latent"])
    p.add_argument("--k", type=int, default=None, help="CLEAR rank (default: the permutation null's suggestion)")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14])
    p.add_argument("--set", nargs="+", default=None, help="model hyper-parameters key=value")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args()

    from clear_lab.cli import _parse_set

    path = resolve_dataset(args.dataset)
    data = load_dataset(path, modalities=dataset_modalities(args.dataset, path))
    a, b = data.modalities[:2]
    k = args.k
    if k is None:
        k = permutation_null(data.features[a], data.features[b], n_permutations=20, seed=0).suggested_k
    params = _parse_set(args.set)
    runs = {"none": [], "clear": []}
    for seed in args.seeds:
        for arm, clear in (("none", "none"), ("clear", args.placement)):
            cfg = TrainConfig(model=args.model, params=params, clear=clear, k=k if clear != "none" else None,
                              lam=args.lam, seed=seed, threads=args.threads, progress=False, device="cpu")
            res = cached_train(data, cfg, args.cache_dir)
            runs[arm].append(res)
            print(f"seed {seed} {arm:5s} test recall@20 {res.record['test']['recall@20']:.4f} "
                  f"ndcg@20 {res.record['test']['ndcg@20']:.4f} (best epoch {res.record['best_epoch']})",
                  flush=True)

    summary = {"dataset": args.dataset, "model": args.model, "placement": args.placement, "k": int(k),
               "lam": args.lam, "seeds": args.seeds, "params": params, "metrics": {}}
    for metric in ("recall@20", "ndcg@20", "recall@10", "ndcg@10"):
        per_seed = {arm: np.array([r.record["test"][metric] for r in rs]) for arm, rs in runs.items()}
        users = runs["none"][0].test.users
        for arm in runs:  # per-user pairing needs the same users in every run
            assert all(np.array_equal(r.test.users, users) for r in runs[arm])
        per_user = {arm: np.mean([r.test.per_user[metric] for r in rs], axis=0) for arm, rs in runs.items()}
        m = {arm: dict(zip(("mean", "low", "high"), mean_ci(v))) for arm, v in per_seed.items()}
        m["per_seed"] = {arm: v.tolist() for arm, v in per_seed.items()}
        m["relative_gain"] = float(per_seed["clear"].mean() / per_seed["none"].mean() - 1)
        m["seeds_paired_t"] = paired_seeds_test(per_seed["clear"], per_seed["none"])
        m["users_bootstrap"] = paired_bootstrap(per_user["clear"], per_user["none"], n_boot=10000, seed=0)
        m["users_wilcoxon"] = paired_wilcoxon(per_user["clear"], per_user["none"])
        summary["metrics"][metric] = m

    r = summary["metrics"]["recall@20"]
    print(f"\n{args.model} on {args.dataset}, CLEAR {args.placement} k={k} lam={args.lam}, seeds {args.seeds}")
    print("| arm | test R@20 mean [95% CI] | test N@20 mean [95% CI] |\n|---|---|---|")
    for arm in ("none", "clear"):
        n = summary["metrics"]["ndcg@20"][arm]
        print(f"| {arm} | {r[arm]['mean']:.4f} [{r[arm]['low']:.4f}, {r[arm]['high']:.4f}] | "
              f"{n['mean']:.4f} [{n['low']:.4f}, {n['high']:.4f}] |")
    print(f"relative gain R@20 {100 * r['relative_gain']:+.2f}%; "
          f"seeds paired t p = {r['seeds_paired_t']['p_value']:.4f}; "
          f"users bootstrap diff {r['users_bootstrap']['mean_diff']:+.4f} "
          f"[{r['users_bootstrap']['low']:+.4f}, {r['users_bootstrap']['high']:+.4f}] "
          f"p = {r['users_bootstrap']['p_value']:.4f}; Wilcoxon p = {r['users_wilcoxon']['p_value']:.4g}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
