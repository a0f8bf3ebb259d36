"""The models shipped inside the package: the moving-digits Video LDM (the default) and the bunny model
(Big Buck Bunny, real footage); ``--model NAME`` picks one by name."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_MODEL_DIR = WEIGHTS_DIR / "digits"
# name -> how to make it when the package lacks it
SHIPPED_MODELS = {
    "digits": "reinstall videoldm from a full checkout, or train it with the digits_* recipes and pass --model",
    "bunny": "reinstall videoldm from a full checkout, or train it with the bunny_* recipes and pass --model",
}


def shipped_model_dir(name: str = "digits") -> Path:
    """Directory of the shipped pipeline ``name`` (one of :data:`SHIPPED_MODELS`); a clear error if the package lacks it."""
    directory = WEIGHTS_DIR / name
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped {name} model is missing from {directory}: {SHIPPED_MODELS[name]}")
    return directory


def embedded_model_dir() -> Path:
    """Directory of the shipped moving-digits pipeline, the default model."""
    return shipped_model_dir("digits")


def resolve_model(model: str | Path | None) -> Path:
    """A ``--model`` value as a directory: None is the digits model, a shipped model's name (where no such
    directory exists) that model, anything else the path itself."""
    if model is None:
        return embedded_model_dir()
    if str(model) in SHIPPED_MODELS and not Path(model).exists():
        return shipped_model_dir(str(model))
    return Path(model)
