"""Prompts and class labels -> the UNet's ``encoder_hidden_states``.

Which conditioning a model takes is one rule, :func:`~videoldm.pipelines.directory.conditioning_fault`:
the command line applies it to a pipeline directory's configs before loading it, the pipelines to
their loaded encoders.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.conditioning import LabelEncoder
from .directory import conditioning_fault

def encode_prompts(text_encoder: torch.nn.Module, tokenizer: Any, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """Prompts -> the text encoder's last hidden states ``(B, L, D)``, padded to the tokenizer's maximum length
    (as Stable Diffusion's pipelines do, so training and sampling see the same sequence)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


def per_video(value: str | list[str] | None, batch: int) -> list[str]:
    """A prompt (None: the empty prompt) repeated for ``batch`` videos, or a list of them as given."""
    return value if isinstance(value, list) else [value or ""] * batch


def encode_conditions(
    batch: int,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None,
    labels: torch.Tensor | list | None,
    *,
    text_encoder: torch.nn.Module | None,
    tokenizer: Any | None,
    label_encoder: LabelEncoder | None,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return (conditional, unconditional) ``encoder_hidden_states`` ``(B, L, D)`` (or ``None``).

    The unconditional states are ``None`` when both guidance branches would be the same (no
    labels, all-null labels, or each prompt equal to its negative prompt), so sampling runs one
    UNet pass per step instead of two. Conditioning the model cannot use is a ``ValueError``.
    """
    kind = "text" if text_encoder is not None else ("label" if label_encoder is not None else "none")
    fault = conditioning_fault(kind, prompt=prompt is not None, negative_prompt=negative_prompt is not None,
                               labels=labels is not None)
    if fault is not None:
        raise ValueError(fault)
    if kind == "text":
        prompts, negatives = per_video(prompt, batch), per_video(negative_prompt, batch)
        if len(prompts) != batch or len(negatives) != batch:
            raise ValueError(f"expected {batch} prompts, got {len(prompts)} and {len(negatives)} negative")
        conditional = encode_prompts(text_encoder, tokenizer, prompts, device)
        return conditional, None if negatives == prompts else encode_prompts(text_encoder, tokenizer, negatives, device)
    if kind == "label":
        null = label_encoder.null_labels(batch, device)
        if labels is None:
            labels = null
        labels = torch.as_tensor(labels, device=device).long()
        labels = labels.reshape(batch, -1) if labels.numel() == batch or labels.ndim == 2 else labels
        if labels.shape[0] != batch:
            raise ValueError(f"expected labels for {batch} videos, got shape {tuple(labels.shape)}")
        conditional = label_encoder(labels)
        # -1 is the null label: all-null labels are the unconditional branch itself.
        return conditional, None if bool((labels < 0).all()) else label_encoder(null)
    return None, None
