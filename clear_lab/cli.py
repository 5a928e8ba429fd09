"""The ``clear-lab`` command line (also ``python -m clear_lab``).

Subcommands: ``generate`` (planted-redundancy data in MMRec format), ``diagnose`` (how much the modalities share),
``project`` (write CLEAR-projected feature files), ``train`` (a backbone with or without CLEAR), ``figures`` (run
the notebooks). Flags are a contract: they are added, never renamed. Every error exits non-zero with one line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import yaml


def _modalities(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError("--modalities expects a comma-separated list such as image,text")
    return names


def _parse_set(pairs: list[str] | None) -> dict:
    """``--set key=value``: values read as YAML scalars or lists (``1e-4``, ``true``, ``[1, 2]``)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: cannot read {value!r} as a YAML value ({exc})") from exc
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the float everybody means
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _add_rank_flags(p: argparse.ArgumentParser, lam: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, help="CLEAR rank: number of shared directions removed")
    g.add_argument("--ratio", type=float, help="CLEAR rank by energy ratio in (0, 1] of squared singular values")
    if lam:
        p.add_argument("--lam", type=float, default=1.0, help="projection strength in [0, 1] (default 1: null space)")


def _add_feature_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modalities", help="comma-separated modality names, e.g. image,text (default: every "
                                        "<name>_feat.npy in --data)")
    p.add_argument("--features", nargs="+", metavar="NAME=PATH", help="feature file of a modality, overriding "
                                                                      "<data>/<name>_feat.npy")


def cmd_generate(args) -> int:
    from clear_lab.synthetic import generate_preset

    out = generate_preset(args.preset, args.out, seed=args.seed, name=args.name)
    print(f"wrote {args.preset} data to {out}")
    return 0


def cmd_diagnose(args) -> int:
    from clear_lab.data import load_feature_folder, parse_feature_overrides
    from clear_lab.diagnose import diagnose, load_planted_bases

    feats = load_feature_folder(args.data, _modalities(args.modalities), parse_feature_overrides(args.features))
    if len(feats) != 2:
        raise ValueError(f"diagnose compares exactly two modalities; found {len(feats)} "
                         f"({', '.join(feats)}): pick two with --modalities")
    (a, xa), (b, xb) = feats.items()
    planted = load_planted_bases(args.data, [a, b])
    pa, pb = planted if planted else (None, None)
    report = diagnose(xa, xb, k=args.k, ratio=args.ratio, lam=args.lam, n_permutations=args.permutations,
                      seed=args.seed, planted_a=pa, planted_b=pb, names=(a, b))
    report["data"] = str(args.data)
    _write_json(args.json, report)
    s = report["singular_values"]
    floor = "none" if report["null_floor"] is None else f"{report['null_floor']:.3g}"
    print(f"{a} x {b}: top singular values {', '.join(f'{v:.3g}' for v in s[:6])}; null floor {floor}; "
          f"suggested k {report['suggested_k']}; k used {report['k_used']}; wrote {args.json}")
    return 0


def cmd_project(args) -> int:
    from clear_lab.data import feature_path, load_feature_folder, parse_feature_overrides
    from clear_lab.projection import CLEARProjector

    src, dst = Path(args.data).resolve(), Path(args.out).resolve()
    if src == dst:
        raise ValueError(f"--out {args.out} is the --data folder: projected files would overwrite the raw ones")
    if args.k is None and args.ratio is None:
        raise ValueError("project needs --k or --ratio")
    feats = load_feature_folder(args.data, _modalities(args.modalities), parse_feature_overrides(args.features))
    if len(feats) != 2:
        raise ValueError(f"CLEAR projects exactly two modalities; found {len(feats)} ({', '.join(feats)}): "
                         "pick two with --modalities")
    (a, xa), (b, xb) = feats.items()
    targets = [feature_path(dst, a), feature_path(dst, b), dst / "clear_projector.npz"]
    clash = [str(t) for t in targets if t.exists()]
    if clash and not args.force:
        raise ValueError(f"{clash[0]} exists; pass --force to overwrite")
    proj = CLEARProjector(k=args.k, ratio=args.ratio, lam=args.lam).fit(xa, xb)
    pa, pb = proj.transform(xa, xb)
    dst.mkdir(parents=True, exist_ok=True)
    import numpy as np

    np.save(targets[0], np.ascontiguousarray(pa, dtype=np.float32))
    np.save(targets[1], np.ascontiguousarray(pb, dtype=np.float32))
    proj.save(targets[2])
    copied = []
    for inter in sorted(src.glob("*.inter")):  # so the output is a complete MMRec dataset folder
        if not (dst / inter.name).exists() or args.force:
            shutil.copy2(inter, dst / inter.name)
            copied.append(inter.name)
    print(f"projected {a} and {b} with k = {proj.k_}, lam = {args.lam}; wrote {targets[0].name}, "
          f"{targets[1].name}, {targets[2].name}{', ' + ', '.join(copied) if copied else ''} to {dst}")
    return 0


def cmd_train(args) -> int:
    from clear_lab.data import load_dataset, parse_feature_overrides
    from clear_lab.models import get_model
    from clear_lab.train import TrainConfig, train

    model_cls = get_model(args.model)
    mods = _modalities(args.modalities)
    if args.clear != "none" and args.k is None and args.ratio is None:
        raise ValueError(f"--clear {args.clear} needs --k or --ratio")
    data = load_dataset(args.data, modalities=mods, features=parse_feature_overrides(args.features),
                        load_all_features=model_cls.uses_features)
    config = TrainConfig(model=args.model, params=_parse_set(args.set), clear=args.clear, k=args.k,
                         ratio=args.ratio, lam=args.lam, clear_modalities=tuple(mods[:2]) if mods and
                         len(mods) >= 2 and args.clear != "none" else None, epochs=args.epochs,
                         patience=args.patience, seed=args.seed, device=args.device, threads=args.threads,
                         progress=not args.no_progress, mask_valid_at_test=args.mask_valid_at_test,
                         cache_dir=args.cache_dir, latent_refresh_every=args.refresh_every)
    result = train(data, config)
    out = result.save(args.json)
    t = result.record["test"] or {}
    print(f"{args.model} clear={args.clear}: best valid epoch {result.record['best_epoch']}, test recall@20 "
          f"{t.get('recall@20', float('nan')):.4f}, ndcg@20 {t.get('ndcg@20', float('nan')):.4f}; "
          f"{result.record['seconds']['train_epoch_mean']:.3f} s per training epoch; wrote {out}")
    return 0


def cmd_figures(args) -> int:
    from clear_lab.figures import run_figures

    return run_figures(config=args.config, force=args.force, only=args.only, smoke=args.smoke)


def build_parser() -> argparse.ArgumentParser:
    from clear_lab.models import MODELS
    from clear_lab.synthetic import PRESETS

    parser = argparse.ArgumentParser(prog="clear-lab", description="CLEAR: null-space projection for cross-modal "
                                     "de-redundancy in multimodal recommendation, reproduced and explained.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write planted-redundancy synthetic data in MMRec format")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="data preset (default: default)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--name", default=None, help="dataset name: <name>.inter (default: the preset's)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("diagnose", help="cross-modal redundancy of two feature matrices: spectrum, null, CKA")
    p.add_argument("--data", required=True, help="folder with <modality>_feat.npy files (no .inter needed)")
    _add_feature_flags(p)
    _add_rank_flags(p)
    p.add_argument("--permutations", type=int, default=20, help="shuffles for the permutation null (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation null (default 0)")
    p.add_argument("--json", required=True, help="where to write the report (JSON)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("project", help="write CLEAR-projected feature files (and the fitted projector)")
    p.add_argument("--data", required=True, help="folder with <modality>_feat.npy files")
    _add_feature_flags(p)
    _add_rank_flags(p)
    p.add_argument("--out", required=True, help="output folder (must differ from --data); .inter files are copied")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("train", help="train a backbone with or without CLEAR; write the result record")
    p.add_argument("--data", required=True, help="MMRec-format folder: <name>.inter and <modality>_feat.npy")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="backbone")
    p.add_argument("--clear", default="none", choices=["none", "input", "latent"],
                   help="CLEAR placement: none, input (raw features) or latent (encoded embeddings)")
    _add_rank_flags(p)
    _add_feature_flags(p)
    p.add_argument("--epochs", type=int, default=1000, help="maximum epochs (default 1000)")
    p.add_argument("--patience", type=int, default=20,
                   help="MMRec's stopping_step: stop after patience+1 epochs without valid improvement (default 20)")
    p.add_argument("--seed", type=int, default=999, help="seed (default 999, MMRec's)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="model hyper-parameters, YAML values")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--refresh-every", type=int, default=None,
                   help="latent placement: refresh the basis every N steps (default: each epoch)")
    p.add_argument("--mask-valid-at-test", action="store_true", help="also mask valid items at test")
    p.add_argument("--cache-dir", default=None, help="cache feature-built graphs here (keyed by feature hash)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", required=True, help="where to write the result record (JSON)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("figures", help="run every notebook with papermill and write figures/ (cached runs)")
    p.add_argument("--config", default=None, help="figures config (default: notebooks/figures.yaml)")
    p.add_argument("--force", action="store_true", help="retrain instead of using cached runs")
    p.add_argument("--only", nargs="+", default=None, help="run only these notebooks (name prefixes)")
    p.add_argument("--smoke", action="store_true", help="smoke mode: tiny data and epochs")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"clear-lab {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
