"""Class-label conditioning: labels -> the ``(B, L, D)`` token sequence the UNet cross-attends to."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class LabelEncoder(ModelMixin, ConfigMixin):
    """Embeds up to ``max_labels`` class labels per sample as cross-attention tokens.

    A label of ``-1`` (absent digit, or dropped for classifier-free guidance) maps to a learned
    null token, so the all-``-1`` input is the unconditional branch.
    """

    @register_to_config
    def __init__(self, num_classes: int = 10, max_labels: int = 2, embedding_dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes + 1, embedding_dim)
        self.slot_embedding = nn.Parameter(torch.zeros(max_labels, embedding_dim))

    def null_labels(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """All-null labels ``(B, max_labels)`` for the unconditional branch."""
        return torch.full((batch, self.config.max_labels), -1, dtype=torch.long, device=device)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels (B, K)`` long in ``[-1, num_classes)``, ``K <= max_labels`` -> tokens ``(B, max_labels, D)``."""
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        if labels.ndim == 1:
            labels = labels[:, None]
        batch, count = labels.shape
        if count > self.config.max_labels:
            raise ValueError(f"got {count} labels per sample, this encoder takes at most {self.config.max_labels}")
        if labels.min() < -1 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must lie in [-1, {self.config.num_classes - 1}], got {labels.tolist()}")
        if count < self.config.max_labels:
            labels = torch.cat([labels, self.null_labels(batch, labels.device)[:, count:]], dim=1)
        indices = torch.where(labels < 0, torch.full_like(labels, self.config.num_classes), labels)
        return self.embedding(indices) + self.slot_embedding
