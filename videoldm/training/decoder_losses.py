"""Objective for fine-tuning the temporal decoder (Video LDM Sec. 3.2), in the style of the LDM autoencoders.

Generator (temporal decoder layers only; the image autoencoder is frozen)::

    loss = L1(x, x_hat) [+ perceptual_weight * perceptual(x, x_hat)] + lambda * disc_factor * (-mean D(x_hat))
    lambda = disc_weight * clamp(||grad_w L_rec|| / (||grad_w L_adv|| + 1e-4), 0, 1e4)

with ``w`` the decoder's last trainable layer (its output 3D conv) and ``disc_factor = 0`` before
``disc_start`` steps (discriminator warm-up). The discriminator is a :class:`VideoDiscriminator`
trained with the hinge loss on real and decoded videos.

The perceptual term is pluggable and omitted unless a callable is given (frames ``(N, C, H, W)`` in
[-1, 1] -> per-frame distance): :class:`videoldm.training.perceptual.PerceptualLoss` provides an
LPIPS-style one, built by ``PerceptualLoss.from_files`` from local VGG16 weights (and, optionally,
LPIPS's channel weights); the decoder stage does that when its ``perceptual`` config names them.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from ..models.autoencoder import TemporalDecoder
from ..models.discriminator import VideoDiscriminator, hinge_d_loss, hinge_g_loss

PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DecoderFinetuneObjective(nn.Module):
    """Generator and discriminator losses for the temporal decoder; videos are ``(B, T, C, H, W)`` in [-1, 1].

    Per training step the trainer calls :meth:`generator_loss` (backward + step on
    :meth:`trainable_parameters`), then :meth:`discriminator_loss` with
    :attr:`last_reconstruction` as ``fake`` (backward + step on :meth:`discriminator_parameters`).
    """

    def __init__(
        self,
        decoder: TemporalDecoder,
        discriminator: VideoDiscriminator,
        *,
        disc_start: int = 0,
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        perceptual_loss: PerceptualLoss | None = None,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.decoder = decoder.freeze_spatial()
        self.discriminator = discriminator
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = perceptual_weight
        self.last_reconstruction: torch.Tensor | None = None

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The generator's trainable parameters: the decoder's temporal layers and blend logits."""
        return self.decoder.temporal_parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The discriminator's parameters (optimised separately)."""
        return self.discriminator.parameters()

    def _disc_factor(self, step: int) -> float:
        return self.disc_factor if step >= self.disc_start else 0.0

    def reconstruction_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Mean L1 (+ weighted mean perceptual distance of the frames) between ``(B, T, C, H, W)`` videos."""
        loss = (real - fake).abs().mean()
        if self.perceptual_loss is not None:
            perceptual = self.perceptual_loss(fake.flatten(0, 1), real.flatten(0, 1)).mean()
            loss = loss + self.perceptual_weight * perceptual
        return loss

    def adaptive_weight(self, reconstruction: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """``disc_weight * clamp(|grad rec| / (|grad adv| + 1e-4), 0, 1e4)`` at the last layer; scalar, detached.

        Balances the two gradients where they enter the decoder. Without a graph (validation under
        ``torch.no_grad``) it is 0, as in LDM.
        """
        if not torch.is_grad_enabled():
            return torch.zeros((), device=reconstruction.device)
        last_layer = self.decoder.last_layer_weight()
        (rec_grad,) = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
        (adv_grad,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
        weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
        return self.disc_weight * weight.clamp(0.0, 1e4).detach()

    def generator_loss(
        self, real: torch.Tensor, latents: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Decode ``latents`` ``(B, T, c, h, w)`` and score against ``real`` ``(B, T, C, H, W)``; returns (loss, logs).

        The decoded video is kept, detached, in :attr:`last_reconstruction`.
        """
        fake = self.decoder.decode(latents)
        self.last_reconstruction = fake.detach()
        reconstruction = self.reconstruction_loss(real, fake)
        logs = {"generator/reconstruction": reconstruction.item()}
        loss = reconstruction
        disc_factor = self._disc_factor(step)
        if disc_factor > 0:
            # the discriminator is a fixed critic here: keep its weights out of this graph
            flags = [parameter.requires_grad for parameter in self.discriminator.parameters()]
            self.discriminator.requires_grad_(False)
            try:
                adversarial = hinge_g_loss(self.discriminator(fake))
            finally:
                for parameter, flag in zip(self.discriminator.parameters(), flags):
                    parameter.requires_grad_(flag)
            weight = self.adaptive_weight(reconstruction, adversarial)
            loss = loss + weight * disc_factor * adversarial
            logs |= {"generator/adversarial": adversarial.item(), "generator/adaptive_weight": weight.item()}
        logs |= {"generator/loss": loss.item(), "generator/disc_factor": disc_factor}
        return loss, logs

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the discriminator on ``real`` and ``fake`` ``(B, T, C, H, W)``; returns (loss, logs).

        Before ``disc_start`` the loss is multiplied by 0 (every parameter still gets a gradient).
        """
        real_scores = self.discriminator(real.detach())
        fake_scores = self.discriminator(fake.detach())
        disc_factor = self._disc_factor(step)
        loss = disc_factor * hinge_d_loss(real_scores, fake_scores)
        logs = {
            "discriminator/loss": loss.item(),
            "discriminator/logits_real": real_scores.mean().item(),
            "discriminator/logits_fake": fake_scores.mean().item(),
        }
        return loss, logs
