"""Check a saved pipeline directory before loading it: cheap reads of its JSON files and weight headers.

Loading a pipeline reads every weight; sampling with it can take minutes. Every fault a user can
cause with the directory they point at (a missing or truncated weight file, a malformed config, an
image pipeline where a video pipeline is wanted) is found here first, from the JSON files and the
safetensors headers alone, and reported as :class:`PipelineDirectoryError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

MODEL_INDEX = "model_index.json"
REQUIRED_COMPONENTS = ("unet", "vae", "scheduler")
UPSAMPLER_COMPONENTS = ("upsampler", "scheduler", "low_res_scheduler")  # a VideoUpsamplerPipeline's
_CONFIG_NAMES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# A pipeline's own number of denoising steps (model_index.json's ``default_num_inference_steps``): the
# fewest its makers measured at full quality. Pipelines that do not say get the usual 25.
DEFAULT_NUM_INFERENCE_STEPS = 25


class PipelineDirectoryError(ValueError):
    """A pipeline directory is missing, malformed, truncated or of the wrong kind; names the file."""


@dataclass(frozen=True)
class PipelineInfo:
    """What a pipeline directory holds, read without loading any weights.

    ``components`` maps each present component to its ``(library, class name)``; ``configs`` maps
    it to its parsed config (``config.json`` or ``scheduler_config.json``); ``default_steps`` is the
    pipeline's own number of denoising steps (:data:`DEFAULT_NUM_INFERENCE_STEPS` when it names none).
    """

    path: Path
    components: dict[str, tuple[str, str]]
    configs: dict[str, dict[str, Any]]
    default_steps: int = DEFAULT_NUM_INFERENCE_STEPS

    @property
    def conditioning(self) -> str:
        """``"text"`` (text encoder + tokenizer), ``"label"`` (label encoder) or ``"none"``."""
        if "text_encoder" in self.components and "tokenizer" in self.components:
            return "text"
        return "label" if "label_encoder" in self.components else "none"

    @property
    def is_video(self) -> bool:
        """Whether the UNet is an inflated :class:`~videoldm.models.unet.VideoUNet`."""
        return self.components["unet"][1] == "VideoUNet"

    @property
    def has_context_conditioning(self) -> bool:
        """Whether the UNet is a prediction model (a VideoUNet with ``context_channels``)."""
        return self.is_video and bool(self.configs["unet"].get("context_channels"))

    @property
    def frame_rate_regimes(self) -> int:
        """Frame-rate regimes of the interpolation model (component ``interpolator``); 0 if there is none."""
        if "interpolator" not in self.components:
            return 0
        return int(self.configs["interpolator"].get("frame_rate_regimes") or 0)

    @property
    def has_upsampler(self) -> bool:
        """Whether the pipeline holds a video upsampler (components ``upsampler``, ``upsampler_scheduler``, ``low_res_scheduler``)."""
        return all(name in self.components for name in ("upsampler", "upsampler_scheduler", "low_res_scheduler"))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the pixel frames the pipeline makes by default."""
        vae = self.configs["vae"]
        vae = vae.get("autoencoder_config", vae)  # a TemporalDecoder nests its image autoencoder's config
        unet = self.configs["unet"]
        unet = unet.get("unet_config", unet)
        size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        return int(vae.get("out_channels", 3)), size, size

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler's training timesteps: the most inference steps it can take."""
        return int(self.configs["scheduler"].get("num_train_timesteps", 1000))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineDirectoryError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(value, dict):
        raise PipelineDirectoryError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _check_weights(folder: Path) -> None:
    files = [file for file in folder.iterdir() if file.name.endswith(_WEIGHT_SUFFIXES)]
    if not files:
        raise PipelineDirectoryError(f"{folder} holds no weights (*.safetensors or *.bin)")
    for file in files:
        if file.suffix != ".safetensors":
            continue
        try:
            # The header names every tensor's byte range; safetensors checks it covers the file, so
            # a truncated or overwritten file fails here without reading the tensors.
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise PipelineDirectoryError(f"{file}: not a complete safetensors file ({error})") from None


def check_model_folder(folder: str | Path) -> dict[str, Any]:
    """Parse a component folder's config and, for a model (``config.json``), check its weight headers;
    returns the config. Raises :class:`PipelineDirectoryError` naming the faulty file."""
    folder = Path(folder)
    config_file = next((folder / name for name in _CONFIG_NAMES if (folder / name).is_file()), None)
    if config_file is None:
        raise PipelineDirectoryError(f"{folder} has no {' or '.join(_CONFIG_NAMES)}")
    config = _read_json(config_file)
    if config_file.name == "config.json":
        _check_weights(folder)
    return config


def inspect_pipeline_directory(path: str | Path, required: tuple[str, ...] = REQUIRED_COMPONENTS) -> PipelineInfo:
    """Validate the pipeline directory ``path`` from its JSON files and weight headers; raises
    :class:`PipelineDirectoryError` on the first fault, naming the file and what was expected.

    ``required``: the components it must have (a Video LDM pipeline's by default;
    :data:`UPSAMPLER_COMPONENTS` for an upsampler pipeline)."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineDirectoryError(f"model directory {path} does not exist")
    if not (path / MODEL_INDEX).is_file():
        raise PipelineDirectoryError(
            f"{path} is not a pipeline directory (no {MODEL_INDEX}); make one with `videoldm inflate`"
        )
    index = _read_json(path / MODEL_INDEX)
    components: dict[str, tuple[str, str]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry == [None, None]:
            continue
        if len(entry) != 2 or not all(isinstance(part, str) for part in entry):
            raise PipelineDirectoryError(f"{path / MODEL_INDEX}: entry {name!r} must be [library, class], got {entry}")
        folder = path / name
        if not folder.is_dir():
            raise PipelineDirectoryError(f"{path / MODEL_INDEX} lists {name!r} but {folder} is missing")
        configs[name] = check_model_folder(folder)
        components[name] = (entry[0], entry[1])
    missing = [name for name in required if name not in components]
    if missing:
        kind = "an upsampler" if required == UPSAMPLER_COMPONENTS else "a Video LDM"
        raise PipelineDirectoryError(f"{path / MODEL_INDEX} has no {', '.join(missing)}: not {kind} pipeline")
    default_steps = index.get("default_num_inference_steps", DEFAULT_NUM_INFERENCE_STEPS)
    if isinstance(default_steps, bool) or not isinstance(default_steps, int) or default_steps < 1:
        raise PipelineDirectoryError(
            f"{path / MODEL_INDEX}: default_num_inference_steps must be a whole number >= 1, got {default_steps!r}")
    return PipelineInfo(path=path, components=components, configs=configs, default_steps=default_steps)
