"""Long videos from the embedded model: the prediction model's rollout against three baselines, one run.

Every row samples the same single-digit videos (video ``i`` shows digit ``i % 10``, label guidance 2,
its own seed ``seed + i``) of ``--frames`` frames:

* rollout S=2: windows of 16 frames, each conditioned on the last 2 frames made (the paper's
  prediction model), context guidance 1 and ``--context-guidance``; on request (``--rows s2-best``) also
  with ``window_candidates=--window-candidates`` (each window sampled K times, the steadiest entry kept);
* rollout S=1: conditioned on the last frame only (how SVD-style extension continues a clip);
* independent windows: S=0, every 16-frame window a fresh sample;
* one window: all frames denoised together (the 16-frame model stretched to N frames);
* real held-out: test-split moving digits of the same length (the reference).

Measures, per 16-frame window of the video (the drift curve) and summarised:

* identity: fraction of frames whose class (a small CNN trained here on train-split digits) is the label;
* appearance persistence: normalised cross-correlation of each frame's digit crop (14x14 around the
  intensity centroid) with the video's own first-window crop: the same handwriting, not just the
  same class (real data: ~1; a digit that changes shape drops);
* motion smoothness: |c[t+1] - 2c[t] + c[t-1]| of the centroid (pixels), bounce triples excluded
  as in ``quality_digits.py``;
* seam ratio: mean acceleration of the triples that straddle a window boundary over that of the
  triples inside windows (1 = no seam; "-" for one window of all frames, which has no boundary);
  for the context rows, where it lies (:func:`seam_breakdown`: the entry and exit triples, speed
  change and turn, the triples the bounce filter leaves out, the acceleration by window position).

Then seconds per frame and peak RSS of the whole ``videoldm generate`` process (batch 1) at 64, 256
and 512 frames, rollout versus one window.

    python benchmarks/long_video.py [--seeds 32] [--frames 512] [--steps 25] [--context-guidance 2]
        [--workers 2 --threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from digits_measures import centroid_of_mass, classify_frames, train_digit_classifier
from quality_digits import CENTROID_THRESHOLD, GUIDANCE, smoothness, tile
from timing import add_device_option, checked_device
from videoldm import VideoLDMPipeline
from videoldm.data.io import write_video
from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
from videoldm.embedded import embedded_model_dir

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 16
CROP = 14
ROW_KEYS = ("s2", "s2-guided", "s2-best", "s1", "s0", "one")


@dataclass
class Row:
    name: str
    window_frames: int
    context_frames: int
    context_guidance: float = 1.0
    window_candidates: int = 1


def real_videos(labels: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Held-out single-digit videos ``(N, T, 1, H, W)`` whose digits are ``labels``."""
    config = MovingDigitsConfig(split="test", two_digit_prob=0.0, num_frames=num_frames)
    videos, index = [], 0
    for label in labels.tolist():
        while True:
            sample = generate_video(index, config)
            index += 1
            if int(sample.labels[0]) == label:
                videos.append(sample.frames)
                break
    return torch.stack(videos)


_SAMPLER: dict = {}


def start_sampler(model: Path | None, threads: int, device: str) -> None:
    """Load the pipeline onto ``device`` once per process (each worker of ``--workers``, or the main process)."""
    torch.set_num_threads(threads)
    pipe = VideoLDMPipeline.from_pretrained(model or embedded_model_dir(), dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    _SAMPLER["pipe"] = pipe


@torch.no_grad()
def sample_batch(task: tuple[Row, torch.Tensor, int, argparse.Namespace]) -> tuple[torch.Tensor, float]:
    """Videos ``(n, T, 1, H, W)`` in [-1, 1] of one batch of a row and the seconds they took.

    Video ``first + i`` has its own generator (``seed + first + i``), so a video is the same whichever
    process samples its batch.
    """
    row, chunk, first, args = task
    start = time.perf_counter()
    conditioning = torch.stack([chunk, torch.full_like(chunk, -1)], dim=1)
    generators = [torch.Generator().manual_seed(args.seed + first + i) for i in range(len(chunk))]
    pieces = _SAMPLER["pipe"].generate_frames(
        labels=conditioning, num_videos=len(chunk), num_frames=args.frames, num_inference_steps=args.steps,
        guidance_scale=GUIDANCE, context_guidance_scale=row.context_guidance, window_frames=row.window_frames,
        context_frames=row.context_frames, window_candidates=row.window_candidates, generator=generators,
    )
    videos = torch.cat(list(pieces), dim=1).float().cpu()
    seconds = time.perf_counter() - start
    print(f"  {row.name}: videos {first}..{first + len(chunk) - 1}, {seconds:.0f} s", flush=True)
    return videos, seconds


def sample_rows(rows: list[Row], labels: torch.Tensor, args: argparse.Namespace) -> list[tuple[torch.Tensor, float]]:
    """Every row's videos ``(N, T, 1, H, W)`` and the seconds its batches took (summed over processes).

    With ``--workers`` > 1 the batches of all rows are shared among that many processes of ``--threads``
    threads each (stopping the main process mid-run leaves them running: stop its process group).
    """
    tasks = [(row, labels[first : first + args.batch], first, args)
             for row in rows for first in range(0, len(labels), args.batch)]
    if args.workers == 1:  # the main process's pipeline (main() started it)
        done = [sample_batch(task) for task in tasks]
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=start_sampler,
                                 initargs=(args.model, args.threads, args.device)) as pool:
            done = list(pool.map(sample_batch, tasks))
    batches = len(range(0, len(labels), args.batch))
    return [(torch.cat([videos for videos, _ in done[i : i + batches]]),
             sum(seconds for _, seconds in done[i : i + batches])) for i in range(0, len(done), batches)]


def digit_crops(videos: torch.Tensor) -> torch.Tensor:
    """``(N, T, 1, H, W)`` -> ``(N, T, CROP*CROP)`` crops centred on each frame's intensity centroid (zeros if none)."""
    n, t, _, h, w = videos.shape
    centres = centroid_of_mass(videos, threshold=CENTROID_THRESHOLD).nan_to_num(h / 2).round().long()
    padded = F.pad(videos[:, :, 0], (CROP, CROP, CROP, CROP), value=-1.0)
    crops = torch.empty(n, t, CROP * CROP)
    for i in range(n):
        for j in range(t):
            y, x = (centres[i, j] + CROP - CROP // 2).tolist()
            crops[i, j] = padded[i, j, y : y + CROP, x : x + CROP].reshape(-1)
    return crops


def appearance_persistence(videos: torch.Tensor) -> torch.Tensor:
    """``(N, T)`` correlation of each frame's digit crop with the mean crop of the video's first window."""
    crops = digit_crops(videos)
    reference = crops[:, :WINDOW].mean(dim=1, keepdim=True)
    a = crops - crops.mean(dim=-1, keepdim=True)
    b = reference - reference.mean(dim=-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)


def centroid_motion(videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroid velocity ``(N, T-1, 2)``, acceleration ``(N, T-2)`` at centre frames ``1..T-2``, and which
    accelerations are valid (no bounce)."""
    c = centroid_of_mass(videos, threshold=CENTROID_THRESHOLD)
    velocity = c[:, 1:] - c[:, :-1]
    norm = (velocity[:, 1:] - velocity[:, :-1]).norm(dim=-1)
    valid = torch.isfinite(norm) & ~((velocity[:, 1:] * velocity[:, :-1]) < 0).any(dim=-1)
    return velocity, norm, valid


def boundary_triples(num_frames: int, row: Row) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over the centre frames ``1..T-2`` of the frame triples that straddle a rollout window boundary:
    (last old, last old, first new) and (last old, first new, second new), ``start`` being the first new
    frame of windows 2, 3, ... of ``row`` (none for one window of all frames)."""
    entry = torch.zeros(num_frames - 2, dtype=torch.bool)
    exit_ = torch.zeros_like(entry)
    for start in range(row.window_frames, num_frames, row.window_frames - row.context_frames):
        entry[start - 2] = True  # centre frame start - 1
        if start < num_frames - 1:  # centre frame start, when the video goes on past it
            exit_[start - 1] = True
    return entry, exit_


def seam_ratio(videos: torch.Tensor, row: Row) -> float:
    """Boundary over in-window acceleration; boundaries where a rollout window's first new frame lies."""
    _, norm, valid = centroid_motion(videos)
    entry, exit_ = boundary_triples(videos.shape[1], row)
    straddles = entry | exit_
    boundary, inside = norm[:, straddles][valid[:, straddles]], norm[:, ~straddles][valid[:, ~straddles]]
    return (boundary.mean() / inside.mean()).item() if len(boundary) and len(inside) else float("nan")


def seam_breakdown(videos: torch.Tensor, row: Row) -> dict[str, float | list[float]]:
    """Where a seam's acceleration lies, each over the same quantity inside windows (1 = none).

    ``entry``: the triples (given, given, first new) (centre frame ``start - 1``); ``exit``: (given,
    first new, second new). At the entry step, the velocity change split into its part along the
    previous velocity (``speed``: the motion speeds up or slows down) and across it (``turn``: the
    motion changes direction); bounces are excluded as in :func:`centroid_motion`.
    ``reversed_entry`` / ``reversed_inside``: the share of entry / in-window triples that exclusion
    drops (a velocity component changing sign), and ``entry_every_triple``, the entry ratio without it,
    so that a seam hidden as "bounces" would show.
    ``by_position``: mean acceleration (px) by the centre frame's position in windows 2, 3, ...
    (position 0 is the first context frame, so position ``S - 1`` is the entry triple's centre and
    position 0 with S = 2 the centre of the window before's last triple).
    """
    velocity, norm, valid = centroid_motion(videos)
    previous, change = velocity[:, :-1], velocity[:, 1:] - velocity[:, :-1]  # at centre frames 1..T-2
    direction = previous / previous.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    along = (change * direction).sum(-1)
    across = (change - along[..., None] * direction).norm(dim=-1)
    entry, exit_ = boundary_triples(videos.shape[1], row)
    inside = ~(entry | exit_)

    finite = torch.isfinite(norm)

    def mean(values: torch.Tensor, where: torch.Tensor, keep: torch.Tensor = valid) -> float:
        return values[:, where][keep[:, where]].mean().item()

    def reversed_share(where: torch.Tensor) -> float:
        return (finite[:, where] & ~valid[:, where]).sum().item() / max(finite[:, where].sum().item(), 1)

    stride = row.window_frames - row.context_frames
    centres = torch.arange(1, videos.shape[1] - 1)
    later = centres >= stride  # window 2 starts at frame ``stride`` (its first context frame)
    position = centres % stride
    return {"entry": mean(norm, entry) / mean(norm, inside), "exit": mean(norm, exit_) / mean(norm, inside),
            "speed": mean(along.abs(), entry) / mean(along.abs(), inside),
            "turn": mean(across, entry) / mean(across, inside),
            "reversed_entry": reversed_share(entry), "reversed_inside": reversed_share(inside),
            "entry_every_triple": mean(norm, entry, finite) / mean(norm, inside, finite),
            "by_position": [mean(norm, later & (position == p)) for p in range(stride)]}


def per_window(values: torch.Tensor) -> list[float]:
    """``(N, T)`` -> mean per 16-frame window."""
    return [values[:, start : start + WINDOW].float().mean().item() for start in range(0, values.shape[1], WINDOW)]


def smoothness_per_window(videos: torch.Tensor) -> list[float]:
    return [smoothness(videos[:, start : start + WINDOW])[0] for start in range(0, videos.shape[1], WINDOW)]


def generate_cost(model: Path | None, frames: int, steps: int, one_window: bool) -> tuple[float, float]:
    """Seconds per frame and peak RSS (GB) of a whole ``videoldm generate`` process."""
    with tempfile.TemporaryDirectory() as folder:
        args = ["--frames", str(frames), "--steps", str(steps), "--label", "3", "--out", str(Path(folder) / "v.mp4")]
        if model is not None:
            args += ["--model", str(model)]
        if one_window:
            args += ["--window", str(frames), "--context-frames", "0"]
        output = subprocess.run([sys.executable, __file__, "--worker", json.dumps(args)], check=True,
                                capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return result["seconds"] / frames, result["rss_gb"]


def worker(args: list[str]) -> None:
    from videoldm.cli import main

    start = time.perf_counter()
    try:
        main(["generate", *args])
    except SystemExit as exit_info:
        if exit_info.code:
            raise
    seconds = time.perf_counter() - start
    # VmHWM, not getrusage's ru_maxrss: on Linux the latter keeps the parent's peak across fork + exec
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "rss_gb": peak_kb / 2**20}))


def plot_drift(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric, title in zip(axes, ("identity", "appearance", "smoothness"),
                                 ("digit identity (higher better)", "appearance persistence (higher better)",
                                  "motion smoothness, px (lower better)")):
        for name, curve in curves.items():
            ax.plot([WINDOW * (i + 0.5) for i in range(len(curve[metric]))], curve[metric], label=name)
        ax.set_title(title)
        ax.set_xlabel("frame")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="pipeline directory (default: the embedded model)")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context-guidance", type=float, default=2.0)
    parser.add_argument("--context-frames", type=int, default=2,
                        help="context frames S of the rollout rows s2 and s2-guided (the model was trained on S <= 2)")
    parser.add_argument("--cost-frames", type=int, nargs="*", default=[64, 256, 512])
    parser.add_argument("--cost-repeats", type=int, default=1, help="interleaved runs per cost cell (medians)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per sampling process")
    add_device_option(parser, "the rows' sampling (the classifier, the measures and --cost-frames' processes stay on the CPU)")
    parser.add_argument("--workers", type=int, default=1,
                        help="sampling processes sharing the rows' batches (s/frame sums their batches' times)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--cost-only", action="store_true", help="only the s/frame and peak RSS table")
    parser.add_argument("--window-candidates", type=int, default=4,
                        help="samples per window of the s2-best row (window_candidates: the steadiest entry is kept)")
    parser.add_argument("--rows", nargs="*", choices=ROW_KEYS, default=[key for key in ROW_KEYS if key != "s2-best"],
                        help="generated rows to run (default: all but s2-best, which costs --window-candidates "
                             "times s2-guided); the real row is always measured")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    checked_device(parser, args.device)
    if args.window_candidates < 1:
        parser.error(f"--window-candidates must be >= 1, got {args.window_candidates}")
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.cost_only:
        print_cost_table(args)
        return
    torch.set_num_threads(args.threads)
    total_start = time.perf_counter()
    classifier, accuracy = train_digit_classifier(steps=600, seed=0)
    print(f"digit classifier: held-out accuracy {accuracy:.4f}", flush=True)
    labels = torch.arange(args.seeds) % 10
    start_sampler(args.model, args.threads, args.device)
    has_context = _SAMPLER["pipe"].unet.has_context_conditioning
    context = args.context_frames
    rows = {"s2": Row(f"rollout S={context}, context guidance 1", WINDOW, context),
            "s2-guided": Row(f"rollout S={context}, context guidance {args.context_guidance:g}", WINDOW, context,
                             args.context_guidance),
            "s2-best": Row(f"rollout S={context}, context guidance {args.context_guidance:g}, best of "
                           f"{args.window_candidates} windows", WINDOW, context, args.context_guidance,
                           args.window_candidates),
            "s1": Row("rollout S=1 (last frame only)", WINDOW, 1),
            "s0": Row("independent windows (S=0)", WINDOW, 0),
            "one": Row("one window of all frames", args.frames, 0)}
    rows = [rows[key] for key in ROW_KEYS if key in args.rows]
    if not has_context:
        rows = [row for row in rows if row.context_frames == 0]

    results, curves, samples = [], {}, {}
    real = real_videos(labels, args.frames)
    real_row = Row("real held-out", WINDOW, 2)
    for row, (videos, seconds) in zip([real_row, *rows], [(real, None), *sample_rows(rows, labels, args)]):
        frames = videos.shape[0] * videos.shape[1]
        predicted = classify_frames(classifier, videos.flatten(0, 1)).argmax(-1).view(videos.shape[:2])
        identity = predicted == labels[:, None]
        appearance = appearance_persistence(videos)
        curves[row.name] = {"identity": per_window(identity), "appearance": per_window(appearance),
                            "smoothness": smoothness_per_window(videos)}
        samples[row.name] = videos[:4]
        results.append({
            "row": row.name,
            "identity_last": curves[row.name]["identity"][-1],
            "identity": identity.float().mean().item(),
            "appearance_last": curves[row.name]["appearance"][-1],
            "smoothness": smoothness(videos)[0],
            "seam": seam_ratio(videos, row) if row is not real_row else float("nan"),
            "seam_breakdown": seam_breakdown(videos, row) if row.context_frames and row is not real_row else None,
            "s_per_frame": None if seconds is None else seconds / frames,
        })

    real_smooth = results[0]["smoothness"]
    print()
    print(f"{args.seeds} single-digit videos x {args.frames} frames per row (32x32), labels cycling 0..9, label "
          f"guidance {GUIDANCE}, {args.steps} steps, seeds {args.seed}..{args.seed + args.seeds - 1}, "
          f"{args.workers} sampling process(es) of {args.threads} CPU thread(s); digit classifier held-out accuracy {accuracy:.4f}.")
    print()
    print("| row | identity, last window | identity, all | appearance, last window | smoothness px (x real) "
          "| seam ratio | s/frame (batch) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        seam = "-" if math.isnan(r["seam"]) else f"{r['seam']:.2f}"
        speed = "-" if r["s_per_frame"] is None else f"{r['s_per_frame']:.3f}"
        print(f"| {r['row']} | {r['identity_last']:.3f} | {r['identity']:.3f} | {r['appearance_last']:.3f} "
              f"| {r['smoothness']:.3f} ({r['smoothness'] / real_smooth:.2f}x) | {seam} | {speed} |")

    breakdowns = [r for r in results if r["seam_breakdown"] is not None]
    if breakdowns:
        print("\nWhere the seams lie, each over the same measure inside windows (1 = no seam): acceleration of the "
              "(given, given, first new) and (given, first new, second new) triples; at the first new frame, the "
              "velocity change along the motion (speed) and across it (turn).\n")
        print("| row | entry acceleration | exit acceleration | speed change | turn | reversed, entry / inside "
              "| entry, every triple |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in breakdowns:
            b = r["seam_breakdown"]
            print(f"| {r['row']} | {b['entry']:.2f} | {b['exit']:.2f} | {b['speed']:.2f} | {b['turn']:.2f} "
                  f"| {b['reversed_entry']:.2f} / {b['reversed_inside']:.2f} | {b['entry_every_triple']:.2f} |")
        print("\nReversed: the share of triples left out as bounces (a velocity component changes sign); "
              "entry, every triple: the entry ratio with none left out. "
              "Acceleration (px) by the centre frame's position in windows 2, 3, ... (0: the first context frame):")
        for r in breakdowns:
            print(f"  {r['row']}: " + " ".join(f"{value:.2f}" for value in r["seam_breakdown"]["by_position"]))

    plot_drift(curves, args.out_dir / "long_video_drift.png")
    (args.out_dir / "long_video.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                               "rows": results, "curves": curves}, indent=1))
    gif_rows = [name for name in samples if name.startswith(("real", "one window"))
                or (name.startswith("rollout S=") and name.endswith("context guidance 1"))]
    gif = torch.cat([tile(samples[name][:, : min(args.frames, 256)], scale=2) for name in gif_rows], dim=-2)
    write_video(gif, args.out_dir / "long_video.gif", fps=16)
    print(f"\ndrift curve: {args.out_dir / 'long_video_drift.png'} (numbers: long_video.json); GIF (rows: {', '.join(gif_rows)}; first 4 videos, "
          f"first 256 frames): {args.out_dir / 'long_video.gif'}")

    print_cost_table(args)
    print(f"\nTotal wall time: {time.perf_counter() - total_start:.0f} s")


def print_cost_table(args: argparse.Namespace) -> None:
    """Seconds per frame and peak RSS of whole ``videoldm generate`` processes, rollout vs one window."""
    if not args.cost_frames:
        return
    # Whole processes vary by tens of MB in peak RSS from run to run: rounds are interleaved (every
    # length and mode once per round) and the table shows medians.
    runs: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for _ in range(args.cost_repeats):
        for frames in args.cost_frames:
            for one_window in (False, True):
                runs.setdefault((frames, one_window), []).append(generate_cost(args.model, frames, args.steps, one_window))
    print(f"\n`videoldm generate`, batch 1, {args.steps} steps, whole process, median of {args.cost_repeats} "
          "interleaved run(s) (the peak RSS range in parentheses):\n")
    print("| frames | rollout s/frame | rollout peak RSS GB | one window s/frame | one window peak RSS GB |")
    print("|---:|---:|---:|---:|---:|")

    def cell(frames: int, one_window: bool) -> str:
        seconds, rss = (sorted(values) for values in zip(*runs[(frames, one_window)]))
        spread = f" ({rss[0]:.2f}-{rss[-1]:.2f})" if len(rss) > 1 else ""
        return f"{statistics.median(seconds):.3f} | {statistics.median(rss):.2f}{spread}"

    for frames in args.cost_frames:
        print(f"| {frames} | {cell(frames, False)} | {cell(frames, True)} |", flush=True)


if __name__ == "__main__":
    main()
