"""Find a dataset by name: a synthetic preset (generated on first use), a folder under ``data/``, the real data
beside the project (``../shared/data``), or any path. Notebooks and the figures batch use this, so a parameter
``dataset: str = "default"`` is all a reader changes to switch data."""

from __future__ import annotations

from pathlib import Path

from clear_lab.data import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# the modalities each known real set carries (TikTok has visual + acoustic, no text)
KNOWN_MODALITIES = {"tiktok": ["image", "audio"], "baby-interactions": []}


def resolve_dataset(dataset: str, data_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The folder of ``dataset``.

    Order: an existing path; ``<data_dir>/<dataset>`` (default ``data/``); ``../shared/data/<dataset>``; a synthetic
    preset name, generated into ``<data_dir>/<dataset>`` on first use (seeded, so every reader gets the same data).
    """
    from clear_lab.synthetic import PRESETS, generate_preset

    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    generated = data_dir / dataset
    if dataset in PRESETS and generated.is_dir() and not _is_current(generated, dataset, seed):
        return generate_preset(dataset, generated, seed=seed)  # made by another generator version or config
    for cand in (Path(dataset), generated, SHARED_DATA / dataset):
        if cand.is_dir() and any(cand.glob("*.inter")):
            return cand
    if dataset in PRESETS:
        return generate_preset(dataset, generated, seed=seed)
    raise DataError(f"dataset {dataset!r}: not a folder with a .inter file, not in {data_dir} or {SHARED_DATA}, "
                    f"and not a synthetic preset ({', '.join(sorted(PRESETS))})")


def _is_current(folder: Path, preset: str, seed: int) -> bool:
    """Was ``folder`` generated from this preset, seed and generator version (per its meta.json)?"""
    import dataclasses
    import json

    from clear_lab.synthetic import GENERATOR_VERSION, PRESETS

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    want = dataclasses.asdict(PRESETS[preset])
    want["modalities"] = list(want["modalities"])
    return (meta.get("generator_version") == GENERATOR_VERSION and meta.get("seed") == seed
            and meta.get("config") == want)


def dataset_modalities(dataset: str, path: Path) -> list[str] | None:
    """The two modalities to study for a known real set (``None``: every feature file in the folder)."""
    return KNOWN_MODALITIES.get(Path(dataset).name) or None
