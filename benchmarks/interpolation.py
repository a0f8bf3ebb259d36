"""Interpolation on held-out moving digits: the interpolation model against naive answers, one run.

For each factor (x4, x16) and each key-frame spacing, ``--videos`` test-split videos (handwriting
never seen in training) are rendered at the target frame rate, with speeds such that consecutive
key frames are 1 - 2.5 px apart (as in the key-frame model's own videos: the cascade's case) or
4 - 8 px apart (large motion). Every ``factor``-th frame is kept as a key frame (``--keys`` of them
at x4, ``--keys-x16`` at x16) and the in-between frames are made by:

* the model: ``pipe.interpolation_pipeline()(keys, factor)`` (x4: one pass, regime 0; x16: two passes, regimes 0
  then 1), no label (the null label), ``--steps`` steps, once per context guidance scale in
  ``--context-guidance`` (guidance over the key frames);
* linear blending of the two neighbouring key frames;
* frame repetition (each key frame held until the next);
* the model with temporal layers off (``image_only=True``: the image LDM alone; the key frames only
  reach the model through the temporal layers, so this shows what they contribute; measured at the
  first spacing only, as it ignores the key frames).

Measured on the in-between frames only (key frames excluded), against the real frames: PSNR and
SSIM (:mod:`videoldm.metrics.consistency`, pixels in [0, 1]) and the centroid trajectory error
(pixels between the intensity centroids of made and real frames). The key frames themselves, after
the autoencoder, set the ceiling (their PSNR is printed). Writes a side-by-side GIF of the first
videos at x4 (key frames held / blend / model / real).

    python benchmarks/interpolation.py [--videos 64] [--keys 5] [--keys-x16 2] [--steps 10] [--context-guidance 1 2]
                                       [--factors 4 16] [--gif docs/interpolation.gif] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from digits_measures import centroid_of_mass
from quality_digits import CENTROID_THRESHOLD, tile
from videoldm import CascadePipeline, VideoInterpolationPipeline
from videoldm.data.io import write_video
from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
from videoldm.embedded import embedded_model_dir
from videoldm.metrics.consistency import psnr, ssim

# px between consecutive key frames: the key-frame model's own speeds (1 - 2.5 px per frame), and large motion
KEY_SPACINGS = {"1-2.5 px": (1.0, 2.5), "4-8 px": (4.0, 8.0)}


def real_videos(factor: int, num_keys: int, count: int, spacing: tuple[float, float]) -> torch.Tensor:
    """Held-out videos ``(N, factor * (K - 1) + 1, 1, H, W)`` in [-1, 1] whose key frames (every ``factor``-th) are ``spacing`` px apart."""
    config = MovingDigitsConfig(split="test", num_frames=factor * (num_keys - 1) + 1,
                                min_speed=spacing[0] / factor, max_speed=spacing[1] / factor)
    return torch.stack([generate_video(index, config).frames for index in range(count)])


def linear_blend(keys: torch.Tensor, factor: int) -> torch.Tensor:
    """``(N, K, ...)`` -> ``(N, factor * (K - 1) + 1, ...)``: each frame the linear blend of its two key frames."""
    weights = torch.arange(factor, dtype=keys.dtype) / factor
    weights = weights.view(1, 1, factor, *([1] * (keys.ndim - 2)))
    between = (1 - weights) * keys[:, :-1, None] + weights * keys[:, 1:, None]
    return torch.cat([between.flatten(1, 2), keys[:, -1:]], dim=1)


def frame_repetition(keys: torch.Tensor, factor: int) -> torch.Tensor:
    """``(N, K, ...)`` -> ``(N, factor * (K - 1) + 1, ...)``: each key frame held until the next."""
    return torch.cat([keys[:, :-1].repeat_interleave(factor, dim=1), keys[:, -1:]], dim=1)


@torch.no_grad()
def model_row(pipe: VideoInterpolationPipeline, keys: torch.Tensor, factor: int, args: argparse.Namespace,
              context_guidance: float = 1.0, image_only: bool = False) -> tuple[torch.Tensor, float]:
    """The interpolation model's videos (N, T, 1, H, W) in [-1, 1] and the seconds they took."""
    videos, start = [], time.perf_counter()
    for first in range(0, len(keys), args.batch):
        chunk = keys[first : first + args.batch]
        generator = torch.Generator().manual_seed(args.seed + first)
        videos.append(pipe(chunk, factor, num_inference_steps=args.steps, generator=generator,
                           context_guidance_scale=context_guidance, image_only=image_only,
                           output_type="pt").frames.float() * 2 - 1)
        print(f"  x{factor} {'image-only ' if image_only else ''}model, cg {context_guidance:g}: {first + len(chunk)}/{len(keys)} videos, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return torch.cat(videos), time.perf_counter() - start


def model_name(context_guidance: float) -> str:
    return f"model, context guidance {context_guidance:g}"


def measures(made: torch.Tensor, real: torch.Tensor, factor: int) -> dict[str, float]:
    """PSNR, SSIM and centroid error of the in-between frames of ``made`` against ``real`` (both in [-1, 1])."""
    between = torch.arange(real.shape[1]) % factor != 0
    made01, real01 = (made[:, between] + 1) / 2, (real[:, between] + 1) / 2
    made_c = centroid_of_mass(made[:, between], threshold=CENTROID_THRESHOLD)
    real_c = centroid_of_mass(real[:, between], threshold=CENTROID_THRESHOLD)
    error = (made_c - real_c).norm(dim=-1)
    return {"psnr": psnr(made01, real01).mean().item(), "ssim": ssim(made01, real01).mean().item(),
            "centroid_error": error[torch.isfinite(error)].mean().item(),
            "centroid_missing": (~torch.isfinite(error)).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(embedded_model_dir()))
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--keys", type=int, default=5, help="key frames per video at x4")
    parser.add_argument("--keys-x16", type=int, default=2, help="key frames per video at x16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--context-guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--spacings", nargs="+", choices=list(KEY_SPACINGS), default=list(KEY_SPACINGS),
                        help="key-frame spacings to measure (the temporal-layers-off row: the first only)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gif", type=Path, default=None, help="side-by-side GIF of the x4 results")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CascadePipeline.from_pretrained(args.model, dtype=torch.float32).interpolation_pipeline()
    pipe.set_progress_bar_config(disable=True)

    results: dict[str, dict[str, dict[str, float]]] = {}
    for factor in args.factors:
        num_keys = args.keys if factor == 4 else args.keys_x16
        for spacing_index, spacing_name in enumerate(args.spacings):
            spacing = KEY_SPACINGS[spacing_name]
            real = real_videos(factor, num_keys, args.videos, spacing)
            keys = real[:, ::factor]
            made, seconds = {}, {}
            for scale in args.context_guidance:
                made[model_name(scale)], seconds[scale] = model_row(pipe, keys, factor, args, scale)
            made |= {"linear blend": linear_blend(keys, factor), "frame repetition": frame_repetition(keys, factor)}
            if spacing_index == 0:
                made["model, temporal layers off"], _ = model_row(pipe, keys, factor, args, image_only=True)
            condition = f"x{factor}, keys {spacing_name} apart"
            results[condition] = {name: measures(video, real, factor) for name, video in made.items()}
            for scale in args.context_guidance:
                name = model_name(scale)
                key_psnr = psnr((made[name][:, ::factor] + 1) / 2, (keys + 1) / 2).mean().item()
                results[condition][name] |= {"key_frame_psnr": key_psnr, "seconds_per_video": seconds[scale] / args.videos}
            if factor == 4 and args.gif is not None and spacing_index == len(args.spacings) - 1:
                best = model_name(args.context_guidance[-1])
                shown = torch.stack([frame_repetition(keys, factor), made["linear blend"], made[best], real], dim=1)[:4]
                frames = torch.cat([tile(video) for video in shown], dim=2)  # videos stacked vertically
                write_video(frames.clamp(-1, 1), args.gif, fps=16)
                print(f"wrote {args.gif}")

    print(f"\n{args.videos} held-out videos per condition, {args.keys} key frames (x4) / {args.keys_x16} (x16), "
          f"{args.steps} steps; in-between frames only\n")
    print("| condition | method | PSNR, dB | SSIM | centroid error, px |")
    print("|---|---|---:|---:|---:|")
    for condition, rows in results.items():
        for name, r in rows.items():
            print(f"| {condition} | {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['centroid_error']:.2f} |")
    for condition, rows in results.items():
        for scale in args.context_guidance:
            r = rows[model_name(scale)]
            print(f"{condition}, context guidance {scale:g}: key frames after the autoencoder {r['key_frame_psnr']:.2f} dB; "
                  f"{r['seconds_per_video']:.2f} s per video; model - blend {r['psnr'] - rows['linear blend']['psnr']:+.2f} dB")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
