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
    for cand in (Path(dataset), data_dir / dataset, SHARED_DATA / dataset):
        if cand.is_dir() and any(cand.glob("*.inter")):
            return cand
    if dataset in PRESETS:
        return generate_preset(dataset, data_dir / dataset, seed=seed)
    raise DataError(f"dataset {dataset!r}: not a folder with a .inter file, not in {data_dir} or {SHARED_DATA}, "
                    f"and not a synthetic preset ({', '.join(sorted(PRESETS))})")


def dataset_modalities(dataset: str, path: Path) -> list[str] | None:
    """The two modalities to study for a known real set (``None``: every feature file in the folder)."""
    return KNOWN_MODALITIES.get(Path(dataset).name) or None
