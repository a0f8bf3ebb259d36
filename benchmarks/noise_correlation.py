"""Choose a pipeline's ``default_noise_correlation``: sweep the share of initial noise a video's frames have in
common and compare the samples' motion with real training clips (held-out footage is kept for the measurements).

For each correlation, ``--videos`` 16-frame samples of the Video LDM (and of the same network with every alpha 1,
the image LDM per frame, for contrast): the mean absolute frame change and the warping error along each video's
own DIS flow, beside the same figures of real clips from the film's training scenes. The candidate default is
the correlation whose Video LDM samples move most like the real clips: the smallest ``distance``, the sum of the
absolute log ratios of the two figures to the real clips'.

    python benchmarks/noise_correlation.py --film PREPARED_FILM --model DIR [--correlations 0,0.8,0.9,0.95,0.98]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from real_video import CLIP_FRAMES, centre, decode, motion, sample_latents

from videoldm import VideoLDMPipeline
from videoldm.data.film import film_source
from videoldm.data.sources import ClipFormat
from videoldm.embedded import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--film", required=True, help="the moviepy 2.2.1 sdist, the film, or its prepared directory")
    parser.add_argument("--model", default="bunny", help="pipeline directory or shipped model name")
    parser.add_argument("--correlations", default="0,0.8,0.9,0.95,0.98")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--real-clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = film_source(args.film, ClipFormat(num_frames=CLIP_FRAMES, fps=12, height=64, width=64), split="train")
    starts = clips.clip_starts()
    real = torch.stack([centre(clips.clip_frames(first)) for first in starts[:: max(1, len(starts) // args.real_clips)]])
    reference = motion(real)
    print(json.dumps({"real training clips": len(real), **reference}), flush=True)
    pipe = VideoLDMPipeline.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for correlation in (float(value) for value in args.correlations.split(",")):
        row = {"noise_correlation": correlation}
        for label, image_only in (("image_ldm", True), ("video_ldm", False)):
            latents = sample_latents(pipe, args.videos, args.seed, num_frames=CLIP_FRAMES, image_only=image_only,
                                     noise_correlation=correlation)
            row[label] = motion(decode(pipe, latents, "image" if image_only else "video"))
        row["distance"] = sum(abs(math.log(row["video_ldm"][name] / reference[name])) for name in reference)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
