"""Low-rank adapters (LoRA, through peft) on an inflated model's temporal layers.

Training only rank-``r`` updates of the temporal attention's linear layers, with every other weight
frozen, needs a fraction of the temporal layers' gradients and optimiser state, and exports a few
hundred kilobytes instead of the whole temporal weights. At init an adapter adds exactly zero (peft
starts ``B`` at zero), so the adapted model equals the model it was added to. The adapters save alone
(:func:`save_temporal_lora`), load onto any model with the same temporal layers
(:func:`load_temporal_lora`), and merge into the weights (:func:`merge_temporal_lora`), after which
the model is an ordinary one with its usual state-dict keys.

peft is an optional dependency (``pip install 'videoldm[lora]'``); it is imported when an adapter is made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

LORA_WEIGHTS_NAME = "temporal_lora.safetensors"
LORA_CONFIG_NAME = "temporal_lora_config.json"
# The linear layers of TemporalAttention (the 3D convolutions are run through their weights directly,
# models/temporal.conv_video, so an adapter there would be bypassed).
LORA_TARGETS = ("proj_in", "to_qkv", "self_out", "to_q_cross", "to_kv_cross", "cross_out", "ff.0", "ff.2", "proj_out")
_ADAPTER = "default"


@dataclass(frozen=True)
class TemporalLoraOptions:
    """A LoRA on the temporal layers: ``rank`` r, scale ``alpha / rank`` (``alpha`` None: the rank, scale 1),
    on the temporal attention layers named in ``target`` (any of :data:`LORA_TARGETS`)."""

    rank: int = 8
    alpha: float | None = None
    target: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        unknown = sorted(set(self.target) - set(LORA_TARGETS))
        if unknown or not self.target:
            raise ValueError(f"target must be a non-empty subset of {list(LORA_TARGETS)}, got {list(self.target)}")
        object.__setattr__(self, "target", tuple(self.target))


def add_temporal_lora(model: nn.Module, options: TemporalLoraOptions, seed: int = 0) -> list[nn.Parameter]:
    """Freeze every weight of ``model`` (an inflated model: its ``temporal`` layers) and add LoRA adapters to the
    target layers; returns the adapters' parameters, the only trainable ones. ``seed`` draws the adapters'
    ``A`` matrices (``B`` starts at zero: the model's output is unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model  # optional dependency (the lora extra)

    config = LoraConfig(r=options.rank, lora_alpha=options.alpha or options.rank, target_modules=list(options.target))
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model.temporal, adapter_name=_ADAPTER)
    adapters = [parameter for name, parameter in model.temporal.named_parameters() if ".lora_" in name]
    if not adapters:
        raise ValueError(f"none of the target layers {list(options.target)} is in this model's temporal layers")
    for parameter in adapters:
        parameter.requires_grad_(True)
    return adapters


def temporal_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights alone (keys under the temporal layers, without the adapter name)."""
    from peft import get_peft_model_state_dict  # optional dependency (the lora extra)

    return get_peft_model_state_dict(model.temporal, adapter_name=_ADAPTER)


def save_temporal_lora(model: nn.Module, options: TemporalLoraOptions, directory: str | Path) -> Path:
    """Write the adapters of ``model`` (float32 safetensors) and their options to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().float().contiguous().cpu() for key, value in temporal_lora_state_dict(model).items()}
    save_file(state, directory / LORA_WEIGHTS_NAME)
    (directory / LORA_CONFIG_NAME).write_text(json.dumps(asdict(options), indent=2) + "\n")
    return directory


def read_lora_options(directory: str | Path) -> TemporalLoraOptions:
    """The options saved with a LoRA by :func:`save_temporal_lora`; FileNotFoundError names the missing file."""
    path = Path(directory) / LORA_CONFIG_NAME
    if not path.is_file() or not (Path(directory) / LORA_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"no temporal LoRA at {directory} (expected {LORA_CONFIG_NAME} and {LORA_WEIGHTS_NAME})")
    values: dict[str, Any] = json.loads(path.read_text())
    return TemporalLoraOptions(**values)


def load_temporal_lora(model: nn.Module, directory: str | Path, merge: bool = False) -> nn.Module:
    """Add the LoRA saved in ``directory`` to ``model``'s temporal layers (in place) and, with ``merge``, merge it
    into their weights; returns ``model``. Its layers must be the ones the LoRA was trained on."""
    from peft import set_peft_model_state_dict  # optional dependency (the lora extra)

    options = read_lora_options(directory)
    add_temporal_lora(model, options)
    state = load_file(Path(directory) / LORA_WEIGHTS_NAME)
    result = set_peft_model_state_dict(model.temporal, state, adapter_name=_ADAPTER)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{directory}: this LoRA does not fit the model's temporal layers (unexpected {unexpected[:3]})")
    model.requires_grad_(False)
    return merge_temporal_lora(model) if merge else model


def merge_temporal_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model``'s temporal layers into the weights and remove it (in place): the model then
    has its usual layers and state-dict keys. Returns ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # optional dependency (the lora extra)

    adapted = [(name, module) for name, module in model.temporal.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge(adapter_names=[_ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.temporal.get_submodule(parent_name) if parent_name else model.temporal
        setattr(parent, child, module.get_base_layer())
    return model
