"""Decoding latent videos to pixels: whole (:func:`decode_latents`) or streamed piece by piece.

Every stage that decodes a long video streams it (:func:`stream_decode`): a
:class:`StreamingDecoder`'s overlapping, cross-faded decoder windows run across the pieces, so the
stream decodes exactly what one ``TemporalDecoder.decode`` of the whole latent video would, piece
boundaries leave no decoder seam, and nothing grows with the length.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from diffusers import AutoencoderKL
from einops import rearrange

from ..defaults import DECODERS
from ..models.autoencoder import (
    TemporalDecoder,
    frame_windows,
    unscale_latents,
    window_weights,
)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 8, decoder: str = "video") -> torch.Tensor:
    """Decode scaled latents ``(B, T, c, h, w)`` to pixels ``(B, T, C, H, W)`` in [-1, 1], ``chunk_size`` frames at a time.

    A :class:`~videoldm.models.autoencoder.TemporalDecoder` decodes with its temporal layers
    (``decoder="video"``) or as the image decoder (``decoder="image"``); a plain ``AutoencoderKL``
    always decodes frame by frame, unscaling with ``z / scaling_factor + shift_factor`` and, like
    diffusers' Stable Diffusion pipelines, in float32 when it is float16 with ``force_upcast``
    (its weights are float16 again afterwards; pixels come back in the VAE's dtype).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be 'video' or 'image', got {decoder!r}")
    if isinstance(vae, AutoencoderKL):
        return _decode_image_vae(vae, latents, chunk_size)
    return vae.decode(latents, chunk_size=chunk_size, overlap=decoder_overlap(chunk_size),
                      temporal=decoder == "video").clamp(-1, 1)


def _decode_image_vae(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    dtype = vae.dtype
    # float16 AutoencoderKL decoders can overflow to NaN; force_upcast marks those diffusers upcasts.
    upcast = dtype == torch.float16 and vae.config.force_upcast
    decode_dtype = torch.float32 if upcast else dtype
    frames = rearrange(latents.to(decode_dtype), "b t c h w -> (b t) c h w")
    frames = unscale_latents(vae, frames)
    if upcast:
        # nn.Module.to: ModelMixin.to logs a float32-modules warning on every dtype cast.
        torch.nn.Module.to(vae, decode_dtype)
    try:
        decoded = torch.cat([vae.decode(chunk).sample for chunk in frames.split(chunk_size)])
    finally:
        if upcast:
            torch.nn.Module.to(vae, dtype)
    return rearrange(decoded.to(dtype), "(b t) c h w -> b t c h w", b=latents.shape[0]).clamp(-1, 1)


def decoder_overlap(chunk_size: int) -> int:
    """Frames shared by consecutive decoder windows of ``chunk_size`` frames (a quarter, at most ``chunk_size - 1``)."""
    return min(chunk_size // 4, max(chunk_size - 1, 0))


class StreamingDecoder:
    """Decode a latent video pushed in pieces, returning each pixel frame as soon as it is final.

    ``push(latents (B, n, c, h, w))`` returns the frames ``(B, k, C, H, W)`` in [-1, 1] completed by
    that piece (None if none); ``flush()`` returns the rest. For a :class:`TemporalDecoder` with
    ``decoder="video"`` the frames equal ``vae.decode(all_latents, chunk_size, overlap)`` (windows of
    ``chunk_size`` frames sharing ``decoder_overlap(chunk_size)`` cross-faded frames); other
    decoders are frame-wise and decode each piece directly. ``decode`` is the frame-wise decoding
    function ``(latents) -> pixels`` used for those.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        decode: Callable[[torch.Tensor], torch.Tensor],
        chunk_size: int = 8,
        decoder: str = "video",
    ) -> None:
        self.vae = vae
        self.decode = decode
        self.temporal = isinstance(vae, TemporalDecoder) and decoder == "video"
        self.chunk_size = chunk_size
        self.overlap = decoder_overlap(chunk_size)
        # the cross-fade of the frames shared by two windows, as TemporalDecoder.decode weights them
        shared_windows = frame_windows(2 * chunk_size - self.overlap, chunk_size, self.overlap)
        self.ramp = window_weights(shared_windows)[1][: self.overlap]
        self.pending: torch.Tensor | None = None  # latents whose frames are not final yet
        self.tail: torch.Tensor | None = None  # pixels of the last window's shared frames, unweighted

    def _decode_window(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(latents, temporal=True)
        if self.tail is not None and self.overlap:
            ramp = self.ramp.to(pixels.device, pixels.dtype)[None, :, None, None, None]
            pixels = torch.cat(
                [(1 - ramp) * self.tail + ramp * pixels[:, : self.overlap], pixels[:, self.overlap :]], dim=1
            )
        return pixels

    def push(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Add latent frames ``(B, n, c, h, w)``; return the pixel frames ``(B, k, C, H, W)`` now final (or None)."""
        if not self.temporal:
            return self.decode(latents)
        self.pending = latents if self.pending is None else torch.cat([self.pending, latents], dim=1)
        done = []
        while self.pending.shape[1] >= self.chunk_size:
            pixels = self._decode_window(self.pending[:, : self.chunk_size])
            keep = self.chunk_size - self.overlap
            done.append(pixels[:, :keep])
            self.tail = pixels[:, keep:] if self.overlap else None
            self.pending = self.pending[:, keep:]
        return torch.cat(done, dim=1).clamp(-1, 1) if done else None

    def flush(self) -> torch.Tensor | None:
        """The remaining frames ``(B, k, C, H, W)`` (None if there are none); the stream is then empty."""
        if not self.temporal or self.pending is None:
            return None
        if self.tail is not None and self.pending.shape[1] == self.overlap:
            pixels = self.tail  # the last window ended the video: its shared frames keep weight 1
        elif self.pending.shape[1]:
            pixels = self._decode_window(self.pending)
        else:
            pixels = None
        self.pending, self.tail = None, None
        return None if pixels is None else pixels.clamp(-1, 1)


def stream_decode(
    vae: torch.nn.Module,
    pieces: Iterable[torch.Tensor],
    chunk_size: int = 8,
    decoder: str = "video",
    *,
    primer: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """Decode latent ``pieces`` ``(B, n, c, h, w)`` as they come: yields pixels ``(B, k, C, H, W)`` in [-1, 1].

    The pieces together decode as :func:`decode_latents` of their concatenation, memory bounded in
    its length. ``primer`` ``(B, p, c, h, w)``: latents before the first piece whose pixels are not
    yielded but which the temporal decoder's first window cross-fades from (a continued video's
    last frames, so its first new frame has no seam). ``device``: where each piece is decoded.
    """
    stream = StreamingDecoder(vae, lambda z: decode_latents(vae, z, chunk_size, decoder), chunk_size, decoder)
    if primer is not None:
        stream.push(primer)
    for piece in pieces:
        pixels = stream.push(piece if device is None else piece.to(device))
        if pixels is not None:
            yield pixels
    rest = stream.flush()
    if rest is not None:
        yield rest
