"""Video upsampling x4 on held-out moving digits: the video upsampler against the per-frame one and bicubic, one run.

``--videos`` test-split videos (handwriting never seen in training) are rendered at 128x128 (digits
48 px, 4 - 10 px per frame: the key-frame model's videos, four times larger), ``--frames`` frames
each, and area-downsampled to 32x32. Each low-resolution video is upsampled back by:

* the video upsampler: ``pipe.upsampler_pipeline()(video, noise_level=L)``, ``--steps`` steps;
* the per-frame upsampler: the same model with its temporal layers off (``image_only=True``),
  the same noise level, steps and seeds;
* bicubic interpolation;
* with ``--segment-frames N``, also the video upsampler in segments of N frames (``segment_frames=N``:
  one sampler run each, continuing the last frames of the one before as given frames), against the
  same upsampler in one run (``segment_frames=None``): the flicker error at the segment boundaries
  (the frame pair from the last given frame to the first new one) and elsewhere.

Measured against the real 128x128 frames (pixels in [0, 1]): PSNR and SSIM per frame; the flicker
error (:func:`videoldm.metrics.consistency.flicker_error`: how far the frame-to-frame changes are
from the real ones; the paper's claim is that the video upsampler is temporally consistent where
the per-frame one is not); the warping error (:func:`videoldm.metrics.consistency.warping_error`,
Lai et al. 2018: how far each frame is from the one before moved along the true motion of the
digits, which this data set knows exactly; it never compares with the real frames, so a mistake
carried along with the motion does not count, and the real frames score the floor of bilinear
warping); and identity, the share of frames on which a digit classifier trained here on 128x128
digits gives the same class as on the real frame (sharpness that keeps the digit
recognisable). Writes a side-by-side GIF (low resolution / bicubic / per-frame / video / real).

    python benchmarks/upsampler.py [--videos 64] [--frames 8] [--steps 10] [--noise-level 20] [--gif docs/upsampler.gif] [--device cuda]
    python benchmarks/upsampler.py --frames 28 --segment-frames 16   # + the segment boundary
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from digits_measures import classify_frames, train_digit_classifier, true_backward_flow
from timing import add_device_option, checked_device
from videoldm import CascadePipeline
from videoldm.data.io import write_video
from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
from videoldm.embedded import embedded_model_dir
from videoldm.metrics.consistency import flicker_error, psnr, ssim, warping_error
from videoldm.models.upsampler import downsample_frames, resize_frames
from videoldm.defaults import DEFAULT_UPSAMPLER_WINDOW_OVERLAP
from videoldm.pipelines.planning import SegmentFrames, plan_segments

HIGH_RES = MovingDigitsConfig(split="test", canvas_size=128, digit_size=48, min_speed=4.0, max_speed=10.0)
SCALE = 4


def real_videos(count: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out videos ``(N, T, 1, 128, 128)`` in [-1, 1], their true backward flow ``(N, T-1, 2, 128, 128)``
    and where it is valid ``(N, T-1, 128, 128)``."""
    config = MovingDigitsConfig(**{**HIGH_RES.__dict__, "num_frames": num_frames})
    samples = [generate_video(index, config) for index in range(count)]
    flows, valid = zip(*(true_backward_flow(sample, config) for sample in samples))
    return torch.stack([sample.frames for sample in samples]), torch.stack(flows), torch.stack(valid)


@torch.no_grad()
def upsampled(pipe: CascadePipeline, low_res: torch.Tensor, args: argparse.Namespace, name: str, image_only: bool,
              segment_frames: SegmentFrames = "auto") -> tuple[torch.Tensor, float]:
    """The upsampler's videos ``(N, T, 1, 128, 128)`` in [-1, 1] and the seconds they took."""
    videos, start = [], time.perf_counter()
    for first in range(0, len(low_res), args.batch):
        chunk = low_res[first : first + args.batch]
        generator = torch.Generator().manual_seed(args.seed + first)
        videos.append(pipe.upsampler_pipeline()(chunk, noise_level=args.noise_level, num_inference_steps=args.steps,
                                                image_only=image_only, segment_frames=segment_frames,
                                                generator=generator).cpu())
        print(f"  {name}: {first + len(chunk)}/{len(low_res)} videos, {time.perf_counter() - start:.0f} s", flush=True)
    return torch.cat(videos), time.perf_counter() - start


def identity(classifier: torch.nn.Module, made: torch.Tensor, real: torch.Tensor) -> float:
    """Share of frames whose predicted digit class equals the one predicted on the real frame."""
    predicted = classify_frames(classifier, made.flatten(0, 1)).argmax(-1)
    reference = classify_frames(classifier, real.flatten(0, 1)).argmax(-1)
    return (predicted == reference).float().mean().item()


def measures(made: torch.Tensor, real: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor,
             classifier: torch.nn.Module) -> dict[str, float]:
    made01, real01 = (made.clamp(-1, 1) + 1) / 2, (real + 1) / 2
    return {"psnr": psnr(made01, real01).mean().item(), "ssim": ssim(made01, real01).mean().item(),
            "flicker": flicker_error(made01, real01).mean().item(),
            "warping": warping_error(made01, flow, valid).mean().item(), "identity": identity(classifier, made, real)}


def segment_boundary_pairs(num_frames: int, segment_frames: int) -> torch.Tensor:
    """``(T-1,)`` mask of the frame pairs (t, t+1) from a segment's last given frame to its first new one."""
    pairs = torch.zeros(num_frames - 1, dtype=torch.bool)
    for segment in plan_segments(num_frames, segment_frames, DEFAULT_UPSAMPLER_WINDOW_OVERLAP)[1:]:
        pairs[segment.start + DEFAULT_UPSAMPLER_WINDOW_OVERLAP - 1] = True
    return pairs


def flicker_at(made: torch.Tensor, real: torch.Tensor, pairs: torch.Tensor) -> tuple[float, float]:
    """Flicker error (pixels in [0, 1]) of ``made`` ``(N, T, 1, H, W)`` over the frame ``pairs`` ``(T-1,)`` and the others."""
    made01, real01 = (made.clamp(-1, 1) + 1) / 2, (real + 1) / 2
    per_pair = torch.stack([flicker_error(made01[:, t : t + 2], real01[:, t : t + 2]) for t in range(len(pairs))], dim=1)
    return per_pair[:, pairs].mean().item(), per_pair[:, ~pairs].mean().item()


def side_by_side(videos: list[torch.Tensor]) -> torch.Tensor:
    """Videos ``(T, 1, H, W)`` -> one ``(T, 1, H, len * W)`` video, side by side."""
    return torch.cat(videos, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(embedded_model_dir()))
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--noise-level", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    add_device_option(parser, "the upsamplers (the classifier and the measures stay on the CPU)")
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--gif", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--segment-frames", type=int, default=None,
                        help="also run the video upsampler in segments of this many frames (needs --frames beyond it)")
    args = parser.parse_args()
    checked_device(parser, args.device)
    if args.segment_frames is not None and not DEFAULT_UPSAMPLER_WINDOW_OVERLAP < args.segment_frames < args.frames:
        parser.error(f"--segment-frames must lie between {DEFAULT_UPSAMPLER_WINDOW_OVERLAP + 1} and --frames - 1 "
                     f"({args.frames - 1}), got {args.segment_frames}")
    torch.set_num_threads(args.threads)
    pipe = CascadePipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)

    start = time.perf_counter()
    classifier, accuracy = train_digit_classifier(HIGH_RES, steps=args.classifier_steps, seed=0)
    print(f"digit classifier at 128x128: held-out accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    real, flow, valid = real_videos(args.videos, args.frames)
    low_res = downsample_frames(real, SCALE)
    made, seconds = {}, {}
    made["video upsampler"], seconds["video upsampler"] = upsampled(pipe, low_res, args, "video upsampler", False, None)
    if args.segment_frames is not None:
        segmented = f"video upsampler, segments of {args.segment_frames}"
        made[segmented], seconds[segmented] = upsampled(pipe, low_res, args, segmented, False, args.segment_frames)
    made["per-frame upsampler"], seconds["per-frame upsampler"] = upsampled(pipe, low_res, args, "per-frame upsampler", True)
    made["bicubic"] = resize_frames(low_res, tuple(real.shape[-2:])).clamp(-1, 1)
    results = {name: measures(video, real, flow, valid, classifier) for name, video in made.items()}
    real_warping = warping_error((real + 1) / 2, flow, valid).mean().item()
    for name, total in seconds.items():
        results[name]["seconds_per_frame"] = total / real.shape[:2].numel()

    if args.gif is not None:
        nearest = F.interpolate(low_res.flatten(0, 1), scale_factor=SCALE, mode="nearest").unflatten(0, low_res.shape[:2])
        rows = [side_by_side([nearest[i], made["bicubic"][i], made["per-frame upsampler"][i], made["video upsampler"][i], real[i]])
                for i in range(min(3, args.videos))]
        write_video(torch.cat(rows, dim=-2), args.gif, fps=4)
        print(f"wrote {args.gif}")

    print(f"\n{args.videos} held-out videos of {args.frames} frames, 32x32 -> 128x128, noise level {args.noise_level}, "
          f"{args.steps} steps\n")
    print("| method | PSNR, dB | SSIM | flicker error | warping error | identity kept | s / frame |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        timing = f"{r['seconds_per_frame']:.3f}" if "seconds_per_frame" in r else "-"
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['flicker']:.4f} | {r['warping']:.4f} | "
              f"{r['identity']:.3f} | {timing} |")
    print(f"| real frames | - | - | 0 | {real_warping:.4f} | - | - |")
    video, frame = results["video upsampler"], results["per-frame upsampler"]
    print(f"flicker: video upsampler {100 * (1 - video['flicker'] / frame['flicker']):.1f}% lower than per-frame; "
          f"warping error: {100 * (1 - video['warping'] / frame['warping']):.1f}% lower; "
          f"PSNR: video upsampler {video['psnr'] - results['bicubic']['psnr']:+.2f} dB over bicubic")
    results["real frames"] = {"warping": real_warping}
    if args.segment_frames is not None:
        pairs = segment_boundary_pairs(args.frames, args.segment_frames)
        print(f"\nflicker error at the {int(pairs.sum())} segment boundary pair(s) of each video (segments of "
              f"{args.segment_frames}: the last given frame to the first new one) and at the other pairs:\n")
        print("| method | flicker at segment boundaries | flicker elsewhere |")
        print("|---|---:|---:|")
        for name, video in made.items():
            at, elsewhere = flicker_at(video, real, pairs)
            results[name]["flicker_at_segment_boundaries"], results[name]["flicker_elsewhere"] = at, elsewhere
            print(f"| {name} | {at:.4f} | {elsewhere:.4f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
