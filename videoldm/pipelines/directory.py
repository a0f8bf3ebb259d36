"""Check a saved pipeline directory before loading it: cheap reads of its JSON files and weight headers.

Loading a pipeline reads every weight; sampling with it can take minutes. Every fault a user can
cause with the directory they point at (a missing or truncated weight file, a malformed config, an
image pipeline where a video pipeline is wanted) is found here first, from the JSON files and the
safetensors headers alone, and reported as :class:`PipelineDirectoryError` naming the file. What
the directory's models make (:func:`frame_format`) and take (:func:`conditioning_fault`) is read
from the same configs. Torch-free: requests are checked before the network code is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ..defaults import DEFAULT_FPS, DEFAULT_NUM_INFERENCE_STEPS
from ..models.configs import downsampling_factor, frame_size_multiple, image_model_config

MODEL_INDEX = "model_index.json"
REQUIRED_COMPONENTS = ("unet", "vae", "scheduler")
UPSAMPLER_COMPONENTS = ("upsampler", "scheduler", "low_res_scheduler")  # a VideoUpsamplerPipeline's
_CONFIG_NAMES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class PipelineDirectoryError(ValueError):
    """A pipeline directory is missing, malformed, truncated or of the wrong kind; names the file."""


@dataclass(frozen=True)
class PipelineInfo:
    """What a pipeline directory holds, read without loading any weights.

    ``components`` maps each present component to its ``(library, class name)``; ``configs`` maps
    it to its parsed config (``config.json`` or ``scheduler_config.json``); ``default_steps`` is the
    pipeline's own number of denoising steps (:data:`DEFAULT_NUM_INFERENCE_STEPS` when it names none),
    ``default_fps`` the frame rate of its videos (:data:`DEFAULT_FPS` when it names none).
    """

    path: Path
    components: dict[str, tuple[str, str]]
    configs: dict[str, dict[str, Any]]
    default_steps: int = DEFAULT_NUM_INFERENCE_STEPS
    default_fps: float = DEFAULT_FPS

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
        """``(channels, height, width)`` of the pixel frames the pipeline makes by default (:func:`frame_format`)."""
        frames = pipeline_frame_format(self)
        return frames.channels, frames.height, frames.width

    @property
    def size_multiple(self) -> int:
        """What the height and width of the frames the pipeline makes or trains on must be multiples of."""
        return frame_size_multiple(self.configs["vae"], self.configs["unet"])

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler's training timesteps: the most inference steps it can take."""
        return int(self.configs["scheduler"].get("num_train_timesteps", 1000))


CONDITIONING_KINDS = ("text", "label", "none")
_KIND_NAMES = {"text": "text-conditional", "label": "label-conditional", "none": "unconditional"}


def conditioning_fault(kind: str, *, prompt: bool = False, negative_prompt: bool = False, labels: bool = False) -> str | None:
    """Why a model of conditioning ``kind`` (``"text"``, ``"label"`` or ``"none"``) cannot take a request with
    a prompt / negative prompt / labels, or None if it can."""
    if prompt and labels:
        return "give a prompt or labels, not both"
    name = _KIND_NAMES[kind]
    if kind != "text" and (prompt or negative_prompt):
        if not prompt:
            advice = "it takes no negative prompt"
        else:
            advice = "pass labels instead of a prompt" if kind == "label" else "it takes no prompt"
        return f"this pipeline is {name}: it has no text encoder; {advice}"
    if kind != "label" and labels:
        advice = "pass a prompt instead of labels" if kind == "text" else "it takes no labels"
        return f"this pipeline is {name}: it has no label encoder; {advice}"
    return None


@dataclass(frozen=True)
class FrameFormat:
    """Pixel frames a pipeline's models were made for: ``height`` x ``width``, ``channels``; its latents' ``latent_channels``."""

    height: int
    width: int
    channels: int
    latent_channels: int


def frame_format(vae_config: dict[str, Any], unet_config: dict[str, Any] | None = None) -> FrameFormat:
    """The frames of an autoencoder (and UNet): the UNet's ``sample_size`` times the autoencoder's
    downsampling (the autoencoder's own ``sample_size`` without a UNet), its channels.

    Configs of a :class:`TemporalDecoder` / :class:`VideoUNet` hold their image model's config
    inside (``autoencoder_config`` / ``unet_config``); either form is taken.
    """
    vae = image_model_config(vae_config)
    factor = downsampling_factor(vae)
    if unet_config is not None:
        size = image_model_config(unet_config)["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
        height, width = height * factor, width * factor
    else:
        size = vae["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
    return FrameFormat(int(height), int(width), int(vae.get("in_channels", 3)), int(vae.get("latent_channels", 4)))


def pipeline_frame_format(info: PipelineInfo) -> FrameFormat:
    """:func:`frame_format` of a pipeline directory, from its configs alone."""
    return frame_format(info.configs["vae"], info.configs["unet"])


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
            with safe_open(str(file), framework="numpy") as weights:  # numpy: reading a header needs no torch
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
    default_fps = index.get("default_fps", DEFAULT_FPS)
    if isinstance(default_fps, bool) or not isinstance(default_fps, (int, float)) or not 0 < default_fps < float("inf"):
        raise PipelineDirectoryError(f"{path / MODEL_INDEX}: default_fps must be a positive number, got {default_fps!r}")
    return PipelineInfo(path=path, components=components, configs=configs, default_steps=default_steps,
                        default_fps=float(default_fps))
