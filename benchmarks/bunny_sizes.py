"""Seconds per training step of the bunny model's stages at candidate sizes, to size them for a machine.

Every stage is built from its recipe in ``configs/`` (the film's 64x64 frames; random weights where the
previous stage is not trained yet), with the candidate's UNet or autoencoder widths and batch size; one
warm-up step, then the median of ``--steps`` steps of the trainer's own step (forward, backward,
optimiser, EMA). Peak RSS of each candidate is its own (one subprocess each).

    python benchmarks/bunny_sizes.py --film PREPARED_FILM_DIR [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# (stage, candidate name, recipe overrides)
CANDIDATES = [
    ("autoencoder", "AE [32, 64, 64], batch 16", {"model": {"block_out_channels": [32, 64, 64]}, "train": {"batch_size": 16}}),
    ("autoencoder", "AE [64, 128, 128], batch 16", {"model": {"block_out_channels": [64, 128, 128]}, "train": {"batch_size": 16}}),
    ("image_ldm", "UNet [64, 128, 192], batch 32", {"model": {"block_out_channels": [64, 128, 192]}, "train": {"batch_size": 32}}),
    ("image_ldm", "UNet [96, 192, 288], batch 32", {"model": {"block_out_channels": [96, 192, 288]}, "train": {"batch_size": 32}}),
    ("video", "UNet [64, 128, 192] + temporal + context, 2 x 16 frames", {"unet": [64, 128, 192], "train": {"batch_size": 2}}),
    ("decoder", "AE [32, 64, 64] + temporal decoder + discriminator, 4 x 8 frames", {"train": {"batch_size": 4}}),
    ("video", "UNet [96, 192, 288] + temporal + context, 2 x 16 frames", {"unet": [96, 192, 288], "train": {"batch_size": 2}}),
]


def merged(base: dict, extra: dict) -> dict:
    return {key: merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
            for key, value in {**base, **extra}.items()}


def recipe(name: str, film: str, output_dir: Path, **extra) -> dict:
    from videoldm.training.recipes import load_recipe

    values = load_recipe(CONFIGS / f"bunny_{name}.yaml")
    values["data"] = {**values["data"], "path": film}
    return merged(values, {"output_dir": str(output_dir), **extra})


def untrained_autoencoder(film: str, workdir: Path) -> Path:
    """The recipe's autoencoder with random weights, saved (the later stages load it)."""
    from videoldm.training.stages import AutoencoderStage

    autoencoder = recipe("autoencoder", film, workdir / "ae")
    AutoencoderStage(autoencoder["data"], autoencoder["model"]).vae.save_pretrained(workdir / "ae_final")
    return workdir / "ae_final"


def untrained_pipeline(film: str, workdir: Path, unet_widths: list[int]) -> Path:
    """An image pipeline directory of random weights with the candidate UNet widths (the video stage inflates it)."""
    from videoldm.training.stages import ImageLDMStage

    image = recipe("image_ldm", film, workdir / "ldm", autoencoder=str(untrained_autoencoder(film, workdir)),
                   model={"block_out_channels": unet_widths})
    stage = ImageLDMStage(image["data"], image["model"], image["autoencoder"], image["scheduler"], labels=False)
    stage.export(workdir / "image_final")
    return workdir / "image_final"


def measure(stage: str, overrides: dict, film: str, steps: int, threads: int) -> dict[str, float]:
    """Median seconds per step and peak RSS (MiB) of one candidate."""
    import torch

    from timing import peak_rss_mb
    from videoldm.training.stages import build_trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        extra = dict(overrides)
        if stage == "image_ldm":
            extra["autoencoder"] = str(untrained_pipeline(film, workdir, [32, 64, 96]) / "vae")
        if stage == "video":
            extra["image_model"] = str(untrained_pipeline(film, workdir, extra.pop("unet")))
        if stage == "decoder":
            extra.update(autoencoder=str(untrained_autoencoder(film, workdir)), disc_start=0)  # the discriminator's cost too
        values = recipe(stage, film, workdir / "run", **extra)
        values["train"].update(num_workers=0, steps=steps + 1, checkpoint_every=10**6)
        trainer = build_trainer(values)
        micro_batches = iter(trainer.batches(0, steps + 1))
        times = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            trainer._train_step(micro_batches)
            trainer._apply_step()
            times.append(time.perf_counter() - started)
        return {"seconds_per_step": statistics.median(times[1:]), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--film", required=True, help="a prepared film directory (data kind film) or the moviepy sdist")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run candidate N in this process
    args = parser.parse_args()
    if args.one is not None:
        stage, _, overrides = CANDIDATES[args.one]
        print(json.dumps(measure(stage, overrides, args.film, args.steps, args.threads)))
        return
    print(f"| stage | candidate | s/step (median of {args.steps}, {args.threads} threads) | peak RSS |")
    print("|---|---|---|---|")
    for index, (stage, name, _) in enumerate(CANDIDATES):
        run = subprocess.run([sys.executable, __file__, "--film", args.film, "--steps", str(args.steps),
                              "--threads", str(args.threads), "--one", str(index)], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(run.stderr[-3000:])
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {stage} | {name} | {result['seconds_per_step']:.2f} | {result['peak_rss_mb']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
