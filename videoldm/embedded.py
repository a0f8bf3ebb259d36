"""The embedded default model: a small moving-digits Video LDM shipped inside the package."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL_DIR = Path(__file__).parent / "weights" / "digits"


def embedded_model_dir() -> Path:
    """Directory of the shipped moving-digits pipeline; a clear error if the package lacks it."""
    if not (EMBEDDED_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is missing from {EMBEDDED_MODEL_DIR}: reinstall videoldm from a full checkout, "
            "or train it with `videoldm train configs/digits_video.yaml` and pass --model"
        )
    return EMBEDDED_MODEL_DIR
