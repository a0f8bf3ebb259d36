"""Seconds per output frame of each stage of the full cascade, and of the whole, on the embedded model; one run.

The stages are run one after another with their stage pipelines, as ``CascadePipeline`` chains them:
``--key-frames`` key frames (``video_pipeline().generate_frames``, label ``--label``, ``--steps`` steps), interpolation
x4 (regime 0) and again x4 (regime 1) for x16 (``interpolation_pipeline()``, ``--steps`` steps each window),
decoding with the temporal decoder (``decode_frames``), and upsampling x4 32x32 -> 128x128
(``upsampler_pipeline()``, ``--upsampler-steps`` steps, noise level ``--noise-level``). Each stage is
timed and divided by the frames it outputs; the whole by the final frames. ``--gif`` writes the
final video next to its key frames (each held for 16 frames, enlarged x4 nearest).

    python benchmarks/cascade.py [--key-frames 4] [--steps 25] [--upsampler-steps 10] [--gif docs/cascade.gif]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from videoldm import CascadePipeline
from videoldm.data.io import write_video
from videoldm.embedded import embedded_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(embedded_model_dir()))
    parser.add_argument("--key-frames", type=int, default=4)
    parser.add_argument("--label", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--upsampler-steps", type=int, default=10)
    parser.add_argument("--noise-level", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gif", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CascadePipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    conditioning = dict(labels=[[args.label]], guidance_scale=args.guidance, num_inference_steps=args.steps,
                        generator=generator)

    stages: list[tuple[str, float, int]] = []

    def timed(name: str, run):
        start = time.perf_counter()
        result = run()
        stages.append((name, time.perf_counter() - start, result.shape[1]))
        print(f"{name}: {stages[-1][1]:.1f} s, {result.shape[1]} frames", flush=True)
        return result

    with torch.no_grad():
        video, interpolation = pipe.video_pipeline(), pipe.interpolation_pipeline()
        keys = timed("key frames", lambda: torch.cat(list(video.generate_frames(
            num_frames=args.key_frames, output_type="latent", **conditioning)), dim=1))
        x4 = timed("interpolation x4", lambda: interpolation(latents=keys, factor=4, output_type="latent",
                                                                 **conditioning).frames)
        x16 = timed("interpolation x16 (second x4)", lambda: interpolation(
            latents=x4, factor=4, frame_rate_regime=1, output_type="latent", **conditioning).frames)
        pixels = timed("decoding (temporal decoder)", lambda: torch.cat(list(video.decode_frames(x16)), dim=1))
        high_res = timed("upsampling x4", lambda: pipe.upsampler_pipeline()(
            pixels, noise_level=args.noise_level, num_inference_steps=args.upsampler_steps, generator=generator))
        key_pixels = torch.cat(list(video.decode_frames(keys)), dim=1)

    final_frames = high_res.shape[1]
    total = sum(seconds for _, seconds, _ in stages)
    print(f"\n{args.key_frames} key frames -> {final_frames} frames of {high_res.shape[-1]}x{high_res.shape[-2]}; "
          f"{args.steps} steps (key frames, interpolation), {args.upsampler_steps} (upsampler); "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| stage | seconds | frames out | s / output frame |")
    print("|---|---:|---:|---:|")
    for name, seconds, frames in stages:
        print(f"| {name} | {seconds:.1f} | {frames} | {seconds / frames:.3f} |")
    print(f"| whole cascade | {total:.1f} | {final_frames} | {total / final_frames:.3f} |")
    if args.gif is not None:
        held = key_pixels.repeat_interleave(16, dim=1)[:, :final_frames]  # output frame 16k is key frame k
        enlarged = F.interpolate(held[0], scale_factor=4, mode="nearest")
        write_video(torch.cat([enlarged, high_res[0]], dim=-1), args.gif, fps=32)
        print(f"wrote {args.gif}")
    if args.json is not None:
        args.json.write_text(json.dumps({name: {"seconds": s, "frames": f} for name, s, f in stages}, indent=2))


if __name__ == "__main__":
    main()
