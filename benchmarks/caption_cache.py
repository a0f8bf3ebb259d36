"""The text conditioning of a training step: captions through a Stable-Diffusion-1.5-size CLIP text encoder
(random weights of its published configuration, nothing downloaded) against their states read from a
latent cache made by ``videoldm encode`` (what a training step on such a cache does instead).

Each setting runs in a fresh subprocess, so its peak RSS (VmHWM: the interpreter, torch, and for the
encoder its weights and activations) is its own. Per step: ``--batch`` captions of 77 tokens encoded
(the text encoder loaded once, before the timed steps), or ``--batch`` states ``(77, 768)`` read from
a safetensors shard, as ``CachedLatents`` reads them. Medians of ``--steps`` steps after a warm-up.

    python benchmarks/caption_cache.py [--batch 8] [--steps 5] [--threads 2]
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

SETTINGS = ("text encoder", "cached states")
# openai/clip-vit-large-patch14's text model, as Stable Diffusion 1.5 uses it
CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu")


def measure(setting: str, batch: int, steps: int, threads: int, workdir: Path) -> dict[str, float]:
    """Median seconds of one step's conditioning and this process's peak RSS, MiB."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from timing import peak_rss_mb

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if setting == "text encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        encoder = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT)).eval()
        tokens = torch.randint(0, CLIP_TEXT["vocab_size"], (batch, 77))

        def step() -> torch.Tensor:
            with torch.no_grad():
                return encoder(tokens)[0]
    else:
        shard = workdir / "states.safetensors"
        save_file({"encoder_hidden_states": torch.randn(256, 77, 768).half()}, str(shard))
        handle = safe_open(str(shard), framework="pt")
        rows = torch.randint(0, 256, (steps + 1, batch)).tolist()

        def step() -> torch.Tensor:
            picked = rows.pop()
            return torch.stack([handle.get_slice("encoder_hidden_states")[row].float() for row in picked])

    seconds = []
    for index in range(steps + 1):
        started = time.perf_counter()
        states = step()
        if index:
            seconds.append(time.perf_counter() - started)
    assert states.shape == (batch, 77, 768)
    return {"seconds": statistics.median(seconds), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)  # one measurement, in a subprocess
    args = parser.parse_args()
    if min(args.batch, args.steps, args.threads) < 1:
        parser.error("--batch, --steps and --threads must be at least 1")
    with tempfile.TemporaryDirectory() as workdir:
        if args.setting is not None:
            print(json.dumps(measure(args.setting, args.batch, args.steps, args.threads, Path(workdir))))
            return
        results = {}
        for setting in SETTINGS:
            command = [sys.executable, __file__, "--setting", setting, "--batch", str(args.batch), "--steps",
                       str(args.steps), "--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[setting] = json.loads(output.strip().splitlines()[-1])
    print(f"{args.batch} captions a step, {args.threads} thread(s), medians of {args.steps} steps\n")
    print("| conditioning | s / step | peak RSS, MiB |\n|---|---:|---:|")
    for setting, result in results.items():
        print(f"| {setting} | {result['seconds']:.4f} | {result['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
