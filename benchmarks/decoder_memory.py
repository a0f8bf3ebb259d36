"""Peak memory of decoding long videos: our chunked TemporalDecoder vs diffusers' AutoencoderKLTemporalDecoder.

Both models get a matched tiny random config (3 colour channels, block channels (32, 64), two
layers per block, 4 latent channels, 2x downsampling). Ours decodes with ``chunk_size=16`` and
``overlap=4`` (cross-faded windows); diffusers' decodes 16-frame chunks the way its Stable Video
Diffusion pipeline does (``decode_chunk_size=16``: independent chunks, concatenated). Every setting
runs in a fresh subprocess so that the allocator's high-water mark belongs to that decode alone;
the reported figure is the growth of peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) over the RSS
high-water mark just before decoding, plus the whole process's peak.

    python benchmarks/decoder_memory.py [--frames 16 64 256 1024] [--size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHUNK_SIZE, OVERLAP = 16, 4
MODEL_OPTIONS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=2,
    latent_channels=4,
)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def measure(implementation: str, num_frames: int, size: int) -> dict[str, float]:
    """Decode ``num_frames`` random latents of ``size x size`` in this process; peak RSS figures in MiB."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    from videoldm.models.autoencoder import TemporalDecoder

    torch.manual_seed(0)
    latents = torch.randn(1, num_frames, MODEL_OPTIONS["latent_channels"], size, size)
    if implementation == "ours":
        image_vae = AutoencoderKL(up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, **MODEL_OPTIONS)
        model = TemporalDecoder.from_autoencoder(image_vae).eval()
        del image_vae

        def decode() -> torch.Tensor:
            return model.decode(latents, chunk_size=CHUNK_SIZE, overlap=OVERLAP)

    else:
        model = AutoencoderKLTemporalDecoder(**MODEL_OPTIONS).eval()

        def decode() -> torch.Tensor:
            # the loop of StableVideoDiffusionPipeline.decode_latents with decode_chunk_size=16
            flat = latents.flatten(0, 1) / model.config.scaling_factor
            chunks = [
                model.decode(flat[start : start + CHUNK_SIZE], num_frames=flat[start : start + CHUNK_SIZE].shape[0])
                .sample
                for start in range(0, flat.shape[0], CHUNK_SIZE)
            ]
            return torch.cat(chunks).unflatten(0, (1, num_frames))

    before = _peak_rss_mb()
    with torch.inference_mode():
        video = decode()
    assert video.shape == (1, num_frames, 3, 2 * size, 2 * size)
    after = _peak_rss_mb()
    return {"decode_mb": after - before, "peak_mb": after}


def run_isolated(implementation: str, num_frames: int, size: int) -> dict[str, float]:
    """:func:`measure` in a fresh Python process; returns its figures."""
    command = [sys.executable, __file__, "--worker", implementation, "--frames", str(num_frames), "--size", str(size)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print a markdown table of decode peak-RSS growth (and process peak) for both decoders."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--size", type=int, default=32, help="latent height and width (pixels are twice that)")
    parser.add_argument("--worker", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.frames[0], args.size)))
        return

    print(f"latents {args.size}x{args.size} -> frames {2 * args.size}x{2 * args.size}, chunk {CHUNK_SIZE}, "
          f"overlap {OVERLAP} (ours); MB = peak RSS growth during decode (process peak in brackets)\n")
    print("| frames | ours MB | diffusers MB | ratio |")
    print("|---:|---:|---:|---:|")
    for num_frames in args.frames:
        ours = run_isolated("ours", num_frames, args.size)
        theirs = run_isolated("diffusers", num_frames, args.size)
        ratio = ours["decode_mb"] / theirs["decode_mb"] if theirs["decode_mb"] > 0 else float("nan")
        print(
            f"| {num_frames} | {ours['decode_mb']:.1f} ({ours['peak_mb']:.0f}) "
            f"| {theirs['decode_mb']:.1f} ({theirs['peak_mb']:.0f}) | {ratio:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
