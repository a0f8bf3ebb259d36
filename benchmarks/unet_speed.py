"""Seconds per denoising step of the VideoUNet against diffusers' video UNets, on the same shapes.

Per size, all models have random weights (nothing is downloaded) and matching channels, layers
and attention heads (diffusers' ``UNet2DConditionModel(attention_head_dim=...)`` sets the NUMBER
of heads; heads are ``channels // head_dim`` at every level, for every model):

* VideoUNet like SVD (conv (3,1,1) + attention) versus diffusers' ``UNetSpatioTemporalConditionModel``
  (SVD's UNet; its 3-number ``added_time_ids`` embedding is its own extra): parameters, FLOPs
  (``torch.utils.flop_counter``, one forward), seconds per step (one UNet call), ratio ours / SVD;
  and the temporal overhead of that VideoUNet over its image UNet.
* VideoUNet with temporal attention only (after every spatial block, ``attention_everywhere``)
  versus ``UNetMotionModel.from_unet2d`` (AnimateDiff, motion modules after every block) on the
  same image UNet: each one's seconds per step over the image UNet's.
* Achieved FLOP/s of the SVD-like VideoUNet as a fraction of this machine's fp32 matmul rate
  (the fastest of ten 2048^3 products, measured before and after each size, the higher of the two:
  one slow measurement would flatter every fraction; same run, same threads); likewise for its
  temporal layers alone (their FLOPs over the time they add to the image UNet).
* The machine's limits for the two ratios: ``svd_ratio_floor``, ours if all its FLOPs ran at the
  matmul peak, over SVD as measured; ``temporal_overhead_floor``, the image UNet as measured plus
  the temporal layers' FLOPs at the peak, over the image UNet. No kernel work goes below them.
* ``--profile``: per size, where one forward's time goes (``torch.profiler`` self times by
  operator group, and the wall time outside any operator: Python and dispatch).

Models that share an image UNet share its weight tensors (memory only; the math is unchanged).
Timings are medians of interleaved rounds (peers in turn) after a warm-up call that also counts
the FLOPs. SVD's blocks fix 32 norm groups, so the embedded-size row uses the embedded model's
layout with channels (64, 128) instead of its (48, 96).

    python benchmarks/unet_speed.py [--sizes embedded mid sd15] [--repeats 5] [--sd15-repeats 2]
                                    [--threads 2] [--json PATH] [--profile]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel, UNetSpatioTemporalConditionModel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from timing import interleaved_medians, machine_note, matmul_peak_flops

from videoldm import VideoUNet


@dataclass(frozen=True)
class Size:
    """A UNet configuration and the video batch it denoises: ``(batch, frames, 4, latent, latent)``."""

    channels: tuple[int, ...]
    cross_attention_blocks: int  # the first levels have cross-attention, the rest are plain ResNet levels
    cross_attention_dim: int
    text_tokens: int
    batch: int
    frames: int
    latent: int
    head_dim: int = 64
    layers_per_block: int = 2

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per level, the same for every model."""
        return tuple(channels // self.head_dim for channels in self.channels)

    def block_types(self, down: str, down_attention: str, up: str, up_attention: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(down, up) block type names with cross-attention in the first ``cross_attention_blocks`` levels."""
        kinds = [level < self.cross_attention_blocks for level in range(len(self.channels))]
        return (tuple(down_attention if k else down for k in kinds),
                tuple(up_attention if k else up for k in reversed(kinds)))


SIZES = {
    "embedded": Size((64, 128), 2, 64, 2, batch=2, frames=16, latent=8, head_dim=32),
    "mid": Size((128, 256, 512), 2, 256, 77, batch=1, frames=16, latent=16),
    "sd15": Size((320, 640, 1280, 1280), 3, 768, 77, batch=1, frames=8, latent=32),
}


def image_unet(size: Size) -> UNet2DConditionModel:
    """A random image UNet of ``size`` (SD-1.5's layout: cross-attention levels, then plain levels)."""
    down, up = size.block_types("DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D")
    return UNet2DConditionModel(
        sample_size=size.latent, in_channels=4, out_channels=4, layers_per_block=size.layers_per_block,
        block_out_channels=size.channels, down_block_types=down, up_block_types=up,
        cross_attention_dim=size.cross_attention_dim, attention_head_dim=size.heads,
    ).eval()


def svd_unet(size: Size) -> UNetSpatioTemporalConditionModel:
    """diffusers' SVD UNet with the image UNet's channels, layers and heads."""
    down, up = size.block_types("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")
    return UNetSpatioTemporalConditionModel(
        sample_size=size.latent, in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
        block_out_channels=size.channels, layers_per_block=size.layers_per_block,
        cross_attention_dim=size.cross_attention_dim, num_attention_heads=size.heads, num_frames=size.frames,
    ).eval()


def share_weights(model: torch.nn.Module, source: torch.nn.Module, prefix: str = "") -> None:
    """Make ``model``'s parameters under ``prefix`` the very tensors of ``source`` with the same names."""
    own = model.state_dict()
    shared = {prefix + key: value for key, value in source.state_dict().items() if prefix + key in own}
    model.load_state_dict(shared, strict=False, assign=True)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of scalars in ``model``'s parameters."""
    return sum(p.numel() for p in model.parameters())


def counted_flops(function: Callable[[], Any]) -> int:
    """FLOPs of one call of ``function`` (torch's flop counter: matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


# torch.profiler operator names by what they do; every other operator counts as "other operators"
OPERATOR_GROUPS: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"),
    "convolution": ("aten::mkldnn_convolution", "aten::slow_conv3d_forward", "aten::_slow_conv2d_forward",
                    "aten::convolution_overrideable"),
    "attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_attention_math"),
    "normalisation": ("aten::native_group_norm", "aten::native_layer_norm"),
    "layout copies": ("aten::copy_", "aten::cat", "aten::clone"),
}
PROFILE_COLUMNS = (*OPERATOR_GROUPS, "other operators", "outside operators")


def operator_profile(function: Callable[[], Any], rounds: int = 3) -> dict[str, float]:
    """Seconds per call of ``function`` by :data:`PROFILE_COLUMNS`, plus ``"wall"``.

    Operator groups sum the profiler's self CPU times (no double counting of nested operators);
    "outside operators" is the profiled wall time less all of them: Python, module calls, dispatch
    (and the profiler's own overhead, which inflates it a little).
    """
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(rounds):
            function()
        wall = (time.perf_counter() - start) / rounds
    seconds = dict.fromkeys(PROFILE_COLUMNS, 0.0)
    for event in profiler.key_averages():
        group = next((g for g, names in OPERATOR_GROUPS.items() if event.key in names), "other operators")
        seconds[group] += event.self_cpu_time_total / 1e6 / rounds
    seconds["outside operators"] = wall - sum(seconds.values())
    return seconds | {"wall": wall}


def measure(name: str, size: Size, repeats: int, profiled: bool = False) -> dict[str, Any]:
    """All comparisons at one size; returns the figures for the table and the JSON."""
    torch.manual_seed(0)
    sample = torch.randn(size.batch, size.frames, 4, size.latent, size.latent)
    states = torch.randn(size.batch, size.text_tokens, size.cross_attention_dim)
    frames_states = states.repeat_interleave(size.frames, 0)
    image = image_unet(size)
    ours = VideoUNet.from_image_unet(image, conv_kernel_size=(3, 1, 1), attention_head_dim=size.head_dim).eval()
    share_weights(ours, image, "unet.")
    svd = svd_unet(size)
    calls = {
        "image": lambda: image(sample.flatten(0, 1), 500, frames_states),
        "ours": lambda: ours(sample, 500, states),
        "svd": lambda: svd(sample, 500, states, added_time_ids=torch.zeros(size.batch, 3)),
    }
    result: dict[str, Any] = {"size": name, "shape": list(sample.shape)}
    with torch.no_grad():
        flops = {key: counted_flops(call) for key, call in calls.items()}  # also the warm-up
        seconds = interleaved_medians(calls, repeats, warm_up=False)
    result |= {
        "params_ours": count_parameters(ours), "params_svd": count_parameters(svd),
        "flops_image": flops["image"], "flops_ours": flops["ours"], "flops_svd": flops["svd"],
        "s_image": seconds["image"], "s_ours": seconds["ours"], "s_svd": seconds["svd"],
        "svd_ratio": seconds["ours"] / seconds["svd"],
        "temporal_overhead_ratio": seconds["ours"] / seconds["image"],
    }
    if profiled:
        with torch.no_grad():
            result["profile"] = {key: operator_profile(call) for key, call in calls.items()}
    del svd, calls

    attention_only = VideoUNet.from_image_unet(image, temporal_kinds=("attention",), attention_everywhere=True,
                                               attention_head_dim=size.head_dim).eval()
    share_weights(attention_only, image, "unet.")
    adapter = MotionAdapter(block_out_channels=size.channels, motion_layers_per_block=size.layers_per_block,
                            motion_num_attention_heads=size.heads, motion_max_seq_length=max(32, size.frames))
    animatediff = UNetMotionModel.from_unet2d(image, adapter).eval()
    share_weights(animatediff, image)
    calls = {
        "image": lambda: image(sample.flatten(0, 1), 500, frames_states),
        "ours": lambda: attention_only(sample, 500, states),
        # UNetMotionModel takes (B, C, T, H, W) and per-frame states, as AnimateDiffPipeline passes them
        "animatediff": lambda: animatediff(sample.transpose(1, 2), 500, frames_states),
    }
    with torch.no_grad():
        flops = {key: counted_flops(call) for key, call in calls.items()}
        seconds = interleaved_medians(calls, repeats, warm_up=False)
    return result | {
        "temporal_params_attention_only": count_parameters(attention_only.temporal),
        "temporal_params_animatediff": count_parameters(animatediff) - count_parameters(image),
        "flops_attention_only": flops["ours"], "flops_animatediff": flops["animatediff"],
        "s_image_2": seconds["image"], "s_attention_only": seconds["ours"], "s_animatediff": seconds["animatediff"],
        "attention_only_overhead_ratio": seconds["ours"] / seconds["image"],
        "animatediff_overhead_ratio": seconds["animatediff"] / seconds["image"],
    }


def with_peak_figures(result: dict[str, Any], peak: float) -> dict[str, Any]:
    """``result`` plus the figures that need the matmul peak ``peak`` (FLOP/s): fractions and floors."""
    temporal_flops = result["flops_ours"] - result["flops_image"]
    return result | {
        "matmul_peak_flops": peak, "peak_fraction": result["flops_ours"] / result["s_ours"] / peak,
        "image_peak_fraction": result["flops_image"] / result["s_image"] / peak,
        "temporal_peak_fraction": temporal_flops / (result["s_ours"] - result["s_image"]) / peak,
        "svd_ratio_floor": result["flops_ours"] / peak / result["s_svd"],
        "temporal_overhead_floor": 1 + temporal_flops / peak / result["s_image"],
    }


def print_tables(results: list[dict[str, Any]], note: str) -> None:
    """The three markdown tables, and the operator profile's when it was measured."""
    def shape(r: dict[str, Any]) -> str:
        return f"{r['size']} {'x'.join(map(str, r['shape']))}"
    print(f"CPU, {note}; medians of interleaved rounds\n")
    print("| size, latents (B x T x C x H x W) | params ours / SVD | GFLOPs ours / SVD | s/step ours | s/step SVD "
          "| ours / SVD | floor at peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {shape(r)} | {r['params_ours'] / 1e6:.1f} M / {r['params_svd'] / 1e6:.1f} M "
              f"({100 * (r['params_ours'] / r['params_svd'] - 1):+.0f} %) | {r['flops_ours'] / 1e9:.1f} / "
              f"{r['flops_svd'] / 1e9:.1f} | {r['s_ours']:.3f} | {r['s_svd']:.3f} | {r['svd_ratio']:.2f} "
              f"| {r['svd_ratio_floor']:.2f} |")
    print("\n| size | image UNet s/step | + conv (3,1,1) + attention (ours) | floor at peak | + attention only (ours) "
          "| + AnimateDiff motion modules |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['size']} | {r['s_image']:.3f} | {r['temporal_overhead_ratio']:.2f}x | "
              f"{r['temporal_overhead_floor']:.2f}x | {r['attention_only_overhead_ratio']:.2f}x | "
              f"{r['animatediff_overhead_ratio']:.2f}x |")
    print("\n| size | GFLOPs image / ours / SVD | achieved GFLOP/s (ours) | fp32 matmul peak GFLOP/s | fraction "
          "| fraction: image UNet / temporal layers |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['size']} | {r['flops_image'] / 1e9:.1f} / {r['flops_ours'] / 1e9:.1f} / {r['flops_svd'] / 1e9:.1f} "
              f"| {r['flops_ours'] / r['s_ours'] / 1e9:.1f} | {r['matmul_peak_flops'] / 1e9:.1f} | {r['peak_fraction']:.2f} "
              f"| {r['image_peak_fraction']:.2f} / {r['temporal_peak_fraction']:.2f} |")
    profiled = [r for r in results if "profile" in r]
    if profiled:
        print("\nOne forward, ms by operator group (torch.profiler self times; profiled wall time):\n")
        print(f"| size | model | wall | {' | '.join(PROFILE_COLUMNS)} |")
        print("|---|---|---:|" + "---:|" * len(PROFILE_COLUMNS))
        for r in profiled:
            for model, seconds in r["profile"].items():
                cells = " | ".join(f"{1000 * seconds[column]:.1f}" for column in PROFILE_COLUMNS)
                print(f"| {r['size']} | {model} | {1000 * seconds['wall']:.1f} | {cells} |")


def main() -> None:
    """Run the comparisons at each size and print the tables (and write ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per size")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timed rounds at SD-1.5 size (a round is minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=str, default=None, help="write the figures per size to this file")
    parser.add_argument("--profile", action="store_true", help="also break one forward of each model down by operator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    note = machine_note()
    results = []
    for name in args.sizes:
        repeats = args.sd15_repeats if name == "sd15" else args.repeats
        # the peak around each size: the neighbours' load drifts over minutes
        peak_before = matmul_peak_flops()
        result = measure(name, SIZES[name], repeats, args.profile)
        results.append(with_peak_figures(result, max(peak_before, matmul_peak_flops())))
        print(f"[{name} done]", flush=True)
    print()
    print_tables(results, note)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"machine": note, "sizes": {r["size"]: r for r in results}}, file, indent=2)


if __name__ == "__main__":
    main()
