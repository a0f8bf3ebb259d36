"""Training cost of the embedded Video LDM UNet: temporal layers only (the paper's video fine-tuning,
spatial layers frozen) versus the whole UNet, each with and without gradient checkpointing.

One training step = the denoising loss (:class:`~videoldm.training.objective.DiffusionObjective`
with the model's own noise schedule) on random latents and label conditioning of the embedded
model's shapes, backward, AdamW step. Every setting runs in a fresh subprocess, so that its peak
RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: weights, optimiser state,
activations) belongs to it alone. Step times are medians of ``--steps`` steps after one warm-up
step, as wall-clock seconds and as CPU seconds of the process (``time.process_time``): on a shared
machine the wall clock measures the neighbours too; with one thread the CPU time is the work done.

    python benchmarks/training.py [--batch 4] [--frames 16] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = [("temporal", False), ("temporal", True), ("whole", False), ("whole", True)]


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def measure(trained: str, checkpointing: bool, batch: int, frames: int, steps: int, threads: int) -> dict[str, float]:
    """Train the embedded UNet in this process; median step seconds (wall, CPU), peak RSS MiB, trained parameters."""
    import torch
    from diffusers import DDPMScheduler

    from videoldm.embedded import embedded_model_dir
    from videoldm.models.unet import VideoUNet
    from videoldm.training.objective import DiffusionObjective

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_dir = embedded_model_dir()
    unet = VideoUNet.from_pretrained(model_dir / "unet", torch_dtype=torch.float32).train()
    if trained == "temporal":
        unet.freeze_spatial()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    objective = DiffusionObjective(DDPMScheduler.from_pretrained(model_dir / "scheduler"))
    config = unet.config.unet_config
    size = config["sample_size"]
    latents = torch.randn(batch, frames, config["in_channels"], size, size)
    context = torch.randn(batch, 2, config["cross_attention_dim"])
    generator = torch.Generator().manual_seed(0)
    wall, cpu = [], []
    for _ in range(steps + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = objective.loss(unet, latents, {"encoder_hidden_states": context}, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return {"step_s": statistics.median(wall[1:]), "cpu_s": statistics.median(cpu[1:]), "peak_mb": _peak_rss_mb(),
            "parameters": sum(p.numel() for p in parameters)}


def run_isolated(trained: str, checkpointing: bool, args: argparse.Namespace) -> dict[str, float]:
    """:func:`measure` in a fresh Python process; returns its figures."""
    command = [sys.executable, __file__, "--worker", trained, "--batch", str(args.batch), "--frames", str(args.frames),
               "--steps", str(args.steps), "--threads", str(args.threads)] + (["--checkpointing"] if checkpointing else [])
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print a markdown table: trained part | gradient checkpointing | step time | peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="videos per step")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--worker", choices=["temporal", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.checkpointing, args.batch, args.frames, args.steps, args.threads)))
        return

    print(f"embedded UNet, batch {args.batch} x {args.frames} frames, fp32, CPU, {args.threads} thread(s); "
          f"median of {args.steps} steps after a warm-up step; peak RSS of the whole process\n")
    print("| trained | parameters | gradient checkpointing | step, wall s | step, CPU s | peak RSS MB |")
    print("|---|---:|---|---:|---:|---:|")
    for trained, checkpointing in SETTINGS:
        result = run_isolated(trained, checkpointing, args)
        print(f"| {'temporal layers' if trained == 'temporal' else 'whole UNet'} | {result['parameters'] / 1e6:.2f} M "
              f"| {'on' if checkpointing else 'off'} | {result['step_s']:.2f} | {result['cpu_s']:.2f} | {result['peak_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
