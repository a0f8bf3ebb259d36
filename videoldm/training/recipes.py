"""Recipe files: find them (a path, or a recipe bundled with the package by name), parse and check them.

A recipe is a YAML mapping: ``stage`` (one of :data:`~videoldm.training.stages.STAGES`),
``output_dir``, an optional ``train:`` section (:class:`~videoldm.training.trainer.TrainSettings`),
an optional ``validation:`` section (:class:`~videoldm.training.validation.ValidationSettings`)
and the stage's own arguments. Every key and the type of every value are checked against the
stage's signature here, so a typo or a wrongly typed value is one :class:`RecipeError` naming the
file and the key, before any model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import RecipeError, check_arguments, options_section
from ..data.build import infer_kind
from .stages import STAGES, AutoencoderStage, ImageLDMStage
from .trainer import TrainSettings
from .validation import ValidationSettings

RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"
# a recipe's entries that are not its stage's arguments
RECIPE_SECTIONS = ("stage", "output_dir", "train", "validation")


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (``videoldm train NAME`` finds them)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself if it is a file, else the bundled recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise RecipeError(
        f"{name_or_path}: no such recipe file, nor a bundled recipe of that name (bundled: {', '.join(bundled_recipes())})"
    )


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and check a recipe YAML; returns its mapping (``stage``, ``output_dir``, ``train``, stage arguments)."""
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "malformed"
        raise RecipeError(f"{path}: not valid YAML ({problem}{where})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe entries, got {type(recipe).__name__}")
    for key in ("stage", "output_dir"):
        if key not in recipe:
            raise RecipeError(f"{path}: no {key!r} entry")
    if recipe["stage"] not in STAGES:
        raise RecipeError(f"{path}: unknown stage {recipe['stage']!r}; expected one of {sorted(STAGES)}")
    if not isinstance(recipe["output_dir"], str):
        raise RecipeError(f"{path}: output_dir must be a path, got {recipe['output_dir']!r}")
    options_section(TrainSettings, recipe.get("train", {}), f"{path}: train")
    if recipe.get("validation") is not None:
        options_section(ValidationSettings, recipe["validation"], f"{path}: validation")
    stage_arguments = {key: value for key, value in recipe.items() if key not in RECIPE_SECTIONS}
    check_arguments(STAGES[recipe["stage"]].__init__, stage_arguments, str(path))
    return recipe


def data_override(recipe: dict[str, Any], path: str) -> dict[str, Any]:
    """The recipe's ``data:`` section for training on ``path`` instead (``videoldm train --data PATH``): the
    source kind ``path`` holds, and the recipe's clip entries (``num_frames``, ``fps``, ``size``, ``buckets``)
    where that kind takes them. A ValueError if ``path`` holds no data the stage can train on."""
    images = issubclass(STAGES[recipe["stage"]], (AutoencoderStage, ImageLDMStage))
    kind = infer_kind(path, images=images)
    clip = {key: value for key, value in recipe.get("data", {}).items() if key in ("num_frames", "fps", "size", "buckets")}
    if kind == "latents":
        clip = {}
    if kind not in ("folder", "csv"):
        clip.pop("buckets", None)
    if images:
        clip.pop("num_frames", None)
    return {"kind": kind, "path": path, **clip}
