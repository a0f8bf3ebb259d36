"""Cost of inflation: parameter counts for Stable Diffusion 1.5's UNet configuration (random weights,
nothing downloaded) and the forward-time ratio of an inflated small UNet to its image model.

Run: python benchmarks/inflation_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from videoldm import VideoUNet

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SMALL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(48, 96),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=24, norm_num_groups=16,
)


def count(parameters) -> int:
    """Number of scalars in ``parameters``."""
    return sum(p.numel() for p in parameters)


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)

    with torch.device("meta"):  # shapes only: SD 1.5 sized counts without allocating 860M floats
        sd_image = UNet2DConditionModel(**SD15_UNET)
        variants = {
            "conv (3,3,3) + attention": VideoUNet(unet_config=dict(sd_image.config)),
            "conv (3,1,1) + attention": VideoUNet(unet_config=dict(sd_image.config), conv_kernel_size=(3, 1, 1)),
        }
    print("| SD 1.5 UNet config | spatial params | temporal params | temporal / spatial |")
    print("|---|---:|---:|---:|")
    for name, sd in variants.items():
        spatial, temporal = count(sd.spatial_parameters()), count(sd.temporal_parameters())
        print(f"| {name} | {spatial / 1e6:.1f} M | {temporal / 1e6:.1f} M | {temporal / spatial:.2f} |")

    image = UNet2DConditionModel(**SMALL_UNET).eval()
    video = VideoUNet.from_image_unet(image).eval()
    sample = torch.randn(2, args.frames, 4, 8, 8)
    context = torch.randn(2, 2, 64)
    with torch.no_grad():
        video_time = median_seconds(lambda: video(sample, 500, context), args.repeats)
        image_time = median_seconds(
            lambda: image(sample.flatten(0, 1), 500, context.repeat_interleave(args.frames, 0)), args.repeats
        )
    print()
    print(f"| embedded-size UNet, 2 videos x {args.frames} frames | image model | inflated | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| forward, median of {args.repeats} (CPU, {torch.get_num_threads()} threads) | "
          f"{image_time * 1e3:.1f} ms | {video_time * 1e3:.1f} ms | {video_time / image_time:.2f} |")


if __name__ == "__main__":
    main()
