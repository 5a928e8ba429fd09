"""``python -m clear_lab.models``: every registered backbone, its CLEAR placements, latent hook and deviations."""

from __future__ import annotations

from clear_lab.models import MODELS


def describe() -> str:
    lines = []
    for name, cls in MODELS.items():
        placements = [p for p in ("input", "latent") if cls.refusal(p) is None]
        lines.append(f"{name}: CLEAR {', '.join(placements) or 'not applicable'} (default parameters)")
        lines.append(f"  latent hook: {cls.latent_hook or 'none'}")
        lines.append(f"  defaults: {cls.default_params}")
        lines.extend(f"  deviation: {d}" for d in cls.deviations)
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
