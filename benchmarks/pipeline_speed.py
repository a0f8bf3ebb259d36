"""Seconds per generated frame and peak memory of whole pipelines, and training step time, against diffusers.

1. ``videoldm generate`` with the embedded default model and settings (the whole process: imports, loading,
   sampling, decoding, writing the video), at 16 and 64 frames: wall seconds per frame and the
   process's peak RSS.
2. ``VideoLDMPipeline`` versus diffusers' ``AnimateDiffPipeline`` built from the same random image
   UNet (``unet_speed.SIZES["embedded"]``), the same tiny ``AutoencoderKL``, scheduler (DDIM) and
   tiny random CLIP text encoder: ours with temporal attention after every spatial block (the
   layout of AnimateDiff's motion modules) and ours as inflated by default (conv (3,3,3) +
   attention). Same prompt, guidance 7.5, steps, decode chunk of 16 frames. Seconds per frame are
   medians of interleaved runs in one process; peak RSS of each setting is measured alone in a
   fresh process (one run).
3. Training step time, temporal layers only (spatial frozen), batch 4 x 16 frames: the same
   VideoUNets versus ``UNetMotionModel`` with only its motion modules trained; one step = noise
   prediction loss, backward, AdamW step; medians of interleaved steps after a warm-up step.

    python benchmarks/pipeline_speed.py [--frames 16 64] [--steps 10] [--cli-steps 25] [--repeats 3] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNetMotionModel
from timing import interleaved_medians, machine_note, peak_rss_mb
from unet_speed import SIZES, image_unet

from videoldm import VideoLDMPipeline, VideoUNet

PROMPT = "a digit moves"
PIPELINES = ("ours, attention only", "ours, conv (3,3,3) + attention", "AnimateDiff")


def tiny_text_encoder(hidden_size: int) -> tuple[Any, Any]:
    """A random 1-layer CLIP text encoder and a character-level CLIP tokenizer (nothing downloaded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*string.ascii_lowercase, *string.digits, *string.punctuation]:
        vocab.setdefault(token, len(vocab))
        vocab.setdefault(token + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval(), tokenizer


def tiny_vae() -> AutoencoderKL:
    """A random AutoencoderKL with 2x downsampling: RGB ``(3, 16, 16)`` <-> latents ``(4, 8, 8)``."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                         norm_num_groups=32, layers_per_block=1, sample_size=16).eval()


def scheduler() -> DDIMScheduler:
    """SD's scaled-linear DDIM scheduler."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False)


def video_unets(max_frames: int, names: Sequence[str] = PIPELINES) -> dict[str, torch.nn.Module]:
    """The video UNets ``names``, each inflated from the same random image UNet (its own copy of the weights)."""
    size = SIZES["embedded"]
    torch.manual_seed(0)
    image = image_unet(size)
    adapter = MotionAdapter(block_out_channels=size.channels, motion_layers_per_block=size.layers_per_block,
                            motion_num_attention_heads=size.heads, motion_max_seq_length=max(32, max_frames))
    builders = {
        PIPELINES[0]: lambda: VideoUNet.from_image_unet(image, temporal_kinds=("attention",), attention_everywhere=True,
                                                        attention_head_dim=size.head_dim),
        PIPELINES[1]: lambda: VideoUNet.from_image_unet(image, attention_head_dim=size.head_dim),
        PIPELINES[2]: lambda: UNetMotionModel.from_unet2d(image, adapter),
    }
    return {name: builders[name]() for name in names}


def build_pipelines(max_frames: int, names: Sequence[str] = PIPELINES) -> dict[str, Any]:
    """The pipelines ``names``, sharing VAE, text encoder, tokenizer and scheduler configuration."""
    torch.manual_seed(1)
    vae = tiny_vae()
    text_encoder, tokenizer = tiny_text_encoder(SIZES["embedded"].cross_attention_dim)
    pipelines = {}
    for name, unet in video_unets(max_frames, names).items():
        unet.eval()
        if isinstance(unet, VideoUNet):
            pipe = VideoLDMPipeline(unet=unet, vae=vae, scheduler=scheduler(), text_encoder=text_encoder, tokenizer=tokenizer)
        else:
            pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       motion_adapter=None, scheduler=scheduler())
        pipe.set_progress_bar_config(disable=True)
        pipelines[name] = pipe
    return pipelines


def generate_call(pipe: Any, frames: int, steps: int) -> Callable[[], Any]:
    """One video of ``frames`` frames (np output), the same settings for every pipeline."""
    return lambda: pipe(PROMPT, num_frames=frames, num_inference_steps=steps, guidance_scale=7.5, decode_chunk_size=16,
                        output_type="np", generator=torch.Generator().manual_seed(0))


def training_calls(batch: int, frames: int) -> dict[str, Callable[[], Any]]:
    """One training step per video UNet: spatial weights frozen, temporal (motion) weights trained with AdamW."""
    size = SIZES["embedded"]
    noise_schedule = scheduler()
    torch.manual_seed(2)
    latents = torch.randn(batch, frames, 4, size.latent, size.latent)
    states = torch.randn(batch, size.text_tokens, size.cross_attention_dim)
    calls = {}
    for name, unet in video_unets(frames).items():
        unet.train()
        if isinstance(unet, VideoUNet):
            unet.freeze_spatial()
            predict = lambda noisy, t, unet=unet: unet(noisy, t, states).sample
        else:
            unet.freeze_unet2d_params()  # trains the motion modules only
            # UNetMotionModel: (B, C, T, H, W) latents and per-frame states
            predict = lambda noisy, t, unet=unet: unet(noisy.transpose(1, 2), t, states.repeat_interleave(frames, 0)).sample.transpose(1, 2)
        optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)

        def step(predict=predict, optimizer=optimizer) -> None:
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,))
            alpha_bar = noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
            noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
            loss = torch.nn.functional.mse_loss(predict(noisy, t), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        calls[name] = step
    return calls


def run_generate_cli(frames: int, steps: int, threads: int) -> dict[str, float]:
    """``videoldm generate`` in a fresh process: wall seconds and peak RSS (MiB) of the whole process."""
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, __file__, "--worker", "cli", "--worker-frames", str(frames), "--steps", str(steps),
                   "--threads", str(threads), "--worker-out", str(Path(directory) / "video.mp4")]
        start = time.perf_counter()
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]}


def pipeline_peak_rss(name: str, frames: int, steps: int, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process that builds pipeline ``name`` alone and runs it once."""
    command = [sys.executable, __file__, "--worker", name, "--worker-frames", str(frames), "--steps", str(steps),
               "--threads", str(threads)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def worker(args: argparse.Namespace) -> None:
    """Run one setting in this (fresh) process and print its peak RSS as JSON."""
    torch.set_num_threads(args.threads)
    if args.worker == "cli":
        from videoldm.cli import app

        app(["generate", "--out", args.worker_out, "--frames", str(args.worker_frames), "--steps", str(args.steps)],
            standalone_mode=False)
    else:
        pipelines = build_pipelines(args.worker_frames, [args.worker])
        with torch.no_grad():
            generate_call(pipelines[args.worker], args.worker_frames, args.steps)()
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def main() -> None:
    """Print the three markdown tables (and write ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of the pipeline comparison")
    parser.add_argument("--cli-steps", type=int, default=25, help="denoising steps of `videoldm generate` (its default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--worker", choices=["cli", *PIPELINES], help=argparse.SUPPRESS)
    parser.add_argument("--worker-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=str, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    note = machine_note()
    report: dict[str, Any] = {"machine": note, "cli": {}, "pipelines": {}, "training": {}}

    print(f"`videoldm generate --frames N --steps {args.cli_steps}` (embedded default; whole process; {note})\n")
    print("| frames | wall s | s / frame | peak RSS MB |\n|---:|---:|---:|---:|")
    for frames in args.frames:
        runs = [run_generate_cli(frames, args.cli_steps, args.threads) for _ in range(args.repeats)]
        seconds = sorted(run["seconds"] for run in runs)[len(runs) // 2]
        report["cli"][frames] = {"seconds": seconds, "s_per_frame": seconds / frames, "peak_mb": max(r["peak_mb"] for r in runs)}
        print(f"| {frames} | {seconds:.1f} | {seconds / frames:.3f} | {report['cli'][frames]['peak_mb']:.0f} |", flush=True)

    print(f"\nPipelines from the same tiny random UNet / VAE / text encoder, {args.steps} DDIM steps, guidance 7.5\n")
    print("| pipeline | frames | s / frame | vs AnimateDiff | peak RSS MB |\n|---|---:|---:|---:|---:|")
    pipelines = build_pipelines(max(args.frames))
    for frames in args.frames:
        with torch.no_grad():
            seconds = interleaved_medians({name: generate_call(pipe, frames, args.steps) for name, pipe in pipelines.items()},
                                          args.repeats)
        for name in PIPELINES:
            peak = pipeline_peak_rss(name, frames, args.steps, args.threads)
            report["pipelines"].setdefault(name, {})[frames] = {"s_per_frame": seconds[name] / frames, "peak_mb": peak,
                                                                "vs_animatediff": seconds[name] / seconds["AnimateDiff"]}
            print(f"| {name} | {frames} | {seconds[name] / frames:.4f} | {seconds[name] / seconds['AnimateDiff']:.2f} "
                  f"| {peak:.0f} |", flush=True)

    print(f"\nTraining step, temporal layers only, batch {args.train_batch} x 16 frames, AdamW\n")
    print("| model | step s | vs AnimateDiff |\n|---|---:|---:|")
    seconds = interleaved_medians(training_calls(args.train_batch, 16), args.repeats)
    for name in PIPELINES:
        report["training"][name] = {"step_s": seconds[name], "vs_animatediff": seconds[name] / seconds["AnimateDiff"]}
        print(f"| {name} | {seconds[name]:.3f} | {seconds[name] / seconds['AnimateDiff']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
