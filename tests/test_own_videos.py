"""Training on users' videos end to end: the bundled recipes on a folder of real camera videos
with bad files among them (through the command line), a Stable-Diffusion-layout pipeline on
captioned clips from a CSV list or webdataset shards, and latent caching with `videoldm encode`."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BAD_VIDEOS, GOOD_VIDEOS

from videoldm.cli import main
from videoldm.data.latents import CachedLatents, encode_to_cache, shard_path
from videoldm.training.recipes import RECIPES_DIR, load_recipe
from videoldm.training.stages import build_trainer


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def captions_csv(video_folder: Path) -> Path:
    table = video_folder.parent / "captions.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption"])
        for name in (*GOOD_VIDEOS, *BAD_VIDEOS):
            writer.writerow([str(video_folder / name), f"a video called {Path(name).stem}"])
    return table


@pytest.fixture(scope="module")
def shards(video_folder: Path, tmp_path_factory) -> Path:
    import webdataset

    folder = tmp_path_factory.mktemp("own_shards")
    with webdataset.TarWriter(str(folder / "clips-000.tar")) as writer:
        for name in (*GOOD_VIDEOS, *BAD_VIDEOS):
            if name.endswith(".mp4"):
                writer.write({"__key__": Path(name).stem, "mp4": (video_folder / name).read_bytes(),
                              "txt": f"a video called {Path(name).stem}"})
    return folder


def tiny_sd_recipe(pipeline: Path, data: dict, output_dir: Path, steps: int = 2) -> dict:
    """configs/sd15_video.yaml on the tiny pipeline: 4-frame 16x16 clips, a few steps on the CPU."""
    recipe = load_recipe(RECIPES_DIR / "sd15_video.yaml")
    recipe["model"] = str(pipeline)
    recipe["output_dir"] = str(output_dir)
    recipe["data"] = {**data, "num_frames": 4, "fps": 8, "size": [16, 16]}
    assert recipe["train"]["mixed_precision"] == "bf16" and recipe["gradient_checkpointing"]
    # bf16 is the recipe's GPU setting; accelerate fixes the precision once per process, and the
    # other tests' trainers in this process run in float32.
    recipe["train"].update(steps=steps, batch_size=2, checkpoint_every=steps, warmup_steps=0, num_workers=0,
                           mixed_precision="no")
    return recipe


def test_video_finetune_on_a_folder_from_the_command_line(video_folder, tmp_path, capsys):
    """The README's path: `videoldm train video_finetune --data FOLDER`, then `videoldm generate`."""
    code, out, err = run_cli(["train", "video_finetune", "--data", video_folder, "--steps", 1, "--batch-size", 1,
                              "--output-dir", tmp_path / "run"], capsys)
    assert code == 0, err
    warned = {line.split(": ")[1].removeprefix("skipping ") for line in err.splitlines() if line.startswith("warning: skipping")}
    assert {Path(path).name for path in warned} == set(BAD_VIDEOS)
    assert "data: skipped 4 bad file(s): 1 empty file, 1 too short, 2 unreadable" in out
    # the fine-tuned pipeline keeps the embedded model's own step count
    assert json.loads((tmp_path / "run" / "final" / "model_index.json").read_text())["default_num_inference_steps"] == 10
    code, out, err = run_cli(["generate", "--model", tmp_path / "run" / "final", "--out", tmp_path / "sample.gif",
                              "--frames", 4, "--steps", 2], capsys)
    assert code == 0, err
    assert (tmp_path / "sample.gif").stat().st_size > 0


def test_only_the_first_process_names_the_skipped_files(video_folder, tmp_path, capsys, monkeypatch):
    """Under accelerate launch / torchrun every process checks the same files: rank 1 names none (the first
    does), and the end-of-run count is still made."""
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(["train", "video_finetune", "--data", video_folder, "--steps", 1, "--batch-size", 1,
                              "--output-dir", tmp_path / "run"], capsys)
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert "data: skipped 4 bad file(s): 1 empty file, 1 too short, 2 unreadable" in out


def test_a_folder_without_usable_videos_is_one_error_before_training(video_folder, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD_VIDEOS:
        shutil.copy(video_folder / name, bad / name)
    code, out, err = run_cli(["train", "video_finetune", "--data", bad, "--output-dir", tmp_path / "run"], capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: --data: {bad}: no usable video of at least 16 frames among 4 file(s) "
                           "(skipped 4 bad file(s): 1 empty file, 1 too short, 2 unreadable)"]
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(["train", "video_finetune", "--output-dir", tmp_path / "run"], capsys)
    assert code == 2 and "needs a path: set data.path in the recipe or give --data PATH" in err


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_sd_recipe_trains_temporal_layers_on_captioned_clips(kind, tiny_text_pipeline, captions_csv, shards, tmp_path):
    path = captions_csv if kind == "csv" else shards
    # 3 steps of 2 draw the shard's 6 samples once: every bad one is streamed past
    trainer = build_trainer(tiny_sd_recipe(tiny_text_pipeline, {"kind": kind, "path": str(path)}, tmp_path / "run", steps=3))
    stage = trainer.stage
    assert stage.source.skipped.total() == (4 if kind == "csv" else 0)  # shards are read as they stream
    batch = next(iter(trainer.batches(0, 1)))
    assert batch["video"].shape == (2, 4, 3, 16, 16)
    assert all(caption.startswith("a video called ") for caption in batch["caption"])
    spatial = {name: p.detach().clone() for name, p in stage.unet.unet.named_parameters()}
    temporal = {name: p.detach().clone() for name, p in stage.unet.temporal.named_parameters()}
    text = {name: p.detach().clone() for name, p in stage.text_encoder.named_parameters()}
    result = trainer.train()
    assert result.step == 3 and torch.isfinite(torch.tensor(result.logs["loss"]))
    assert all(torch.equal(p, spatial[name]) for name, p in stage.unet.unet.named_parameters())
    assert all(torch.equal(p, text[name]) for name, p in stage.text_encoder.named_parameters())
    assert any(not torch.equal(p, temporal[name]) for name, p in stage.unet.temporal.named_parameters())
    assert stage.source.skipped == Counter(BAD_VIDEOS.values())
    from videoldm import VideoLDMPipeline

    pipe = VideoLDMPipeline.from_pretrained(tmp_path / "run" / "final")
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red car", num_frames=3, num_inference_steps=2, guidance_scale=2.0, output_type="pt").frames
    assert frames.shape == (1, 3, 3, 16, 16)


def test_caption_dropout_replaces_captions_by_the_empty_one(tiny_text_pipeline, captions_csv, tmp_path):
    stage = build_trainer(tiny_sd_recipe(tiny_text_pipeline, {"kind": "csv", "path": str(captions_csv)}, tmp_path)).stage
    from videoldm.pipelines.conditioning import encode_prompts

    captions = ["a red car", "a blue bird"]
    encoded = encode_prompts(stage.text_encoder, stage.tokenizer, captions, "cpu")
    empty = encode_prompts(stage.text_encoder, stage.tokenizer, [""], "cpu")
    stage.captions.dropout = 0.0
    assert torch.equal(stage.captions({"caption": captions}, 2, draw_seeds=torch.tensor([5, 6])), encoded)
    stage.captions.dropout = 1.0
    assert torch.equal(stage.captions({"caption": captions}, 2, draw_seeds=torch.tensor([5, 6])), empty.expand(2, -1, -1))
    stage.captions.dropout = 1.0
    assert torch.equal(stage.captions({"encoder_hidden_states": encoded}, 2, draw_seeds=torch.tensor([5, 6])), empty.expand(2, -1, -1))


def test_encode_caches_latents_resumably_and_training_reads_them(tiny_text_pipeline, captions_csv, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["encode", "--data", captions_csv, "--model", tiny_text_pipeline, "--out", cache, "--num-frames", 4,
            "--fps", 8, "--shard-size", 1, "--batch-size", 2]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"wrote {cache}: 3 clips in 3 shard(s) (3 encoded by this run)" in out
    assert "data: skipped 4 bad file(s)" in out
    latents = CachedLatents(cache)
    first = [latents[i] for i in range(3)]
    assert first[0]["latents"].shape == (4, 4, 8, 8) and first[0]["encoder_hidden_states"].shape == (16, 16)

    shard_path(cache, 1).unlink()  # as if interrupted while shard 1 was being written
    with pytest.raises(ValueError, match="incomplete latent cache"):
        CachedLatents(cache)
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "(1 encoded by this run)" in out, err
    again = CachedLatents(cache)
    assert all(torch.equal(again[i]["latents"], first[i]["latents"]) for i in range(3))

    code, _, err = run_cli([*args[:-4], "--shard-size", 2, "--batch-size", 2], capsys)
    assert code == 2 and err.startswith(f"error: --out: {cache} holds a cache made with other settings (shard_size differ)")

    recipe = tiny_sd_recipe(tiny_text_pipeline, {"kind": "latents", "path": str(cache)}, tmp_path / "run", steps=1)
    recipe["data"] = {"kind": "latents", "path": str(cache)}
    trainer = build_trainer(recipe)
    batch = next(iter(trainer.batches(0, 1)))
    assert set(batch) == {"latents", "encoder_hidden_states", "draw_seed", "skipped_files"}
    assert trainer.train().step == 1


def test_training_on_embedded_captions_loads_no_text_encoder(tiny_text_pipeline, captions_csv, tmp_path, capsys, monkeypatch):
    """`videoldm encode` of a text model stores the caption states and the empty caption's; training on that cache
    loads no text encoder (caption dropout uses the cached empty states), and the export still holds it."""
    from videoldm.data.latents import NULL_PROMPT_FILE
    from videoldm.pipelines import components
    from videoldm.pipelines.components import load_components
    from videoldm.pipelines.conditioning import encode_prompts

    cache = tmp_path / "cache"
    code, out, err = run_cli(["encode", "--data", captions_csv, "--model", tiny_text_pipeline, "--out", cache,
                              "--num-frames", 4, "--fps", 8], capsys)
    assert code == 0, err
    parts = load_components(tiny_text_pipeline, ("text_encoder", "tokenizer"))
    empty = encode_prompts(parts["text_encoder"], parts["tokenizer"], [""], "cpu")
    assert torch.equal(CachedLatents(cache).null_states, empty)
    assert (cache / NULL_PROMPT_FILE).is_file()

    loaded: list[tuple[str, ...]] = []
    original = components.load_components
    monkeypatch.setattr("videoldm.training.stages.load_components",
                        lambda directory, names, *args, **kwargs: loaded.append(names) or original(directory, names, *args, **kwargs))
    recipe = tiny_sd_recipe(tiny_text_pipeline, {"kind": "latents", "path": str(cache)}, tmp_path / "run", steps=1)
    recipe["data"] = {"kind": "latents", "path": str(cache)}
    trainer = build_trainer(recipe)
    assert trainer.stage.text_encoder is None and "text_encoder" not in loaded[0]
    trainer.stage.captions.dropout = 1.0  # every caption dropped: the cached empty states
    states = trainer.stage.captions({"encoder_hidden_states": torch.zeros(2, *empty.shape[1:])}, 2, torch.tensor([1, 2]))
    assert torch.equal(states, empty.expand(2, -1, -1))
    assert trainer.train().step == 1
    assert loaded[-1] == ("text_encoder", "tokenizer")  # only for the export
    assert (tmp_path / "run" / "final" / "text_encoder").is_dir() and (tmp_path / "run" / "final" / "tokenizer").is_dir()


def test_processes_split_the_shards_into_the_same_cache(tiny_text_pipeline, video_folder, tmp_path):
    import warnings

    from videoldm.data.sources import ClipFormat, VideoFolder
    from videoldm.models.autoencoder import encode_video
    from videoldm.pipelines.components import load_components

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = VideoFolder(video_folder, ClipFormat(num_frames=4, fps=8, height=16, width=16))
    vae = load_components(tiny_text_pipeline, ("vae",))["vae"]

    def encode(video: torch.Tensor) -> torch.Tensor:
        return encode_video(vae, video, sample=False)

    description = {"data": str(video_folder)}
    encode_to_cache(source, encode, tmp_path / "one", description, shard_size=2, progress=False)
    for rank in (0, 1):  # process 0 writes cache.json first
        encode_to_cache(source, encode, tmp_path / "two", description, shard_size=2, process_index=rank,
                        num_processes=2, progress=False)
    one, two = CachedLatents(tmp_path / "one"), CachedLatents(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert all(torch.equal(one[i]["latents"], two[i]["latents"]) for i in range(3))


def test_keep_captions_stores_text_and_training_encodes_it(tiny_text_pipeline, captions_csv, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = run_cli(["encode", "--data", captions_csv, "--model", tiny_text_pipeline, "--out", cache,
                              "--num-frames", 4, "--fps", 8, "--keep-captions"], capsys)
    assert code == 0, err
    sample = CachedLatents(cache)[0]
    assert set(sample) == {"latents", "caption"} and sample["caption"].startswith("a video called")
    recipe_file = tmp_path / "recipe.yaml"
    recipe = tiny_sd_recipe(tiny_text_pipeline, {}, tmp_path / "run", steps=1)
    recipe["data"] = {"kind": "csv", "num_frames": 4, "fps": 8, "size": [16, 16]}
    recipe_file.write_text(yaml.safe_dump(recipe))
    code, out, err = run_cli(["train", recipe_file, "--data", cache], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()


def test_encode_refuses_bad_arguments_before_reading_anything(tiny_text_pipeline, video_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    base = ["encode", "--data", video_folder, "--model", tiny_text_pipeline]
    cases = {
        "--size": [*base, "--out", tmp_path / "a", "--size", "0x4"],
        "--out": [*base, "--out", tmp_path / "file"],
        "--out ": [*base, "--out", tmp_path / "full"],
        "--model": ["encode", "--data", video_folder, "--model", tmp_path / "nothing", "--out", tmp_path / "b"],
        "--data": ["encode", "--data", tmp_path / "missing", "--model", tiny_text_pipeline, "--out", tmp_path / "c"],
    }
    before = sorted(tmp_path.rglob("*"))
    for option, args in cases.items():
        code, out, err = run_cli(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {option.strip()}"), (option, err)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_an_interrupted_run_on_videos_resumes_with_the_same_clips(kind, tiny_text_pipeline, captions_csv, shards, tmp_path):
    path = str(captions_csv if kind == "csv" else shards)

    def trainer(directory: str):
        recipe = tiny_sd_recipe(tiny_text_pipeline, {"kind": kind, "path": path}, tmp_path / directory, steps=3)
        recipe["train"]["checkpoint_every"] = 1
        return build_trainer(recipe)

    straight = trainer("straight")
    straight.train()
    assert trainer("resumed").train(max_steps=2).step == 2
    resumed = trainer("resumed")
    assert resumed.train().step == 3
    other = dict(resumed.stage.unet.temporal.named_parameters())
    for name, parameter in straight.stage.unet.temporal.named_parameters():
        assert torch.allclose(parameter, other[name], atol=1e-6), name


def test_encode_webdataset_shards(tiny_text_pipeline, shards, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = run_cli(["encode", "--data", shards, "--model", tiny_text_pipeline, "--out", cache,
                              "--num-frames", 4, "--fps", 8], capsys)
    assert code == 0, err
    assert f"wrote {cache}: 2 clips in 1 shard(s) (2 encoded by this run)" in out
    assert "data: skipped 4 bad file(s): 1 empty file, 1 too short, 2 unreadable" in out
    latents = CachedLatents(cache)
    assert latents[1]["encoder_hidden_states"].shape == (16, 16)


def test_files_skipped_inside_data_loader_workers_are_counted_once(tiny_text_pipeline, tmp_path):
    """A file that fails only while decoded is skipped by whichever workers reach it; the trainer's
    count comes from the workers' reports, each file once."""
    import warnings

    from conftest import real_video

    from videoldm.data.io import read_video, write_video
    from videoldm.data.sources import DataWarning

    folder = tmp_path / "videos"
    folder.mkdir()
    frames = read_video(real_video("carphone_pristine.mp4"), num_frames=60).frames
    whole = write_video(frames, folder / "good.mp4", fps=30).read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 4])  # the header (first) promises 60 frames
    recipe = tiny_sd_recipe(tiny_text_pipeline, {"kind": "folder", "path": str(folder)}, tmp_path / "run", steps=4)
    recipe["train"]["num_workers"] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        trainer = build_trainer(recipe)
        assert not trainer.source.skipped  # the header is fine: nothing is skipped before decoding
        trainer.train()
    assert not trainer.source.skipped  # this process decoded nothing: the workers did
    # how the cut stream fails (no frames in range, or invalid data) depends on how x264 laid out the
    # file, which depends on its thread count: one core writes a different file than two
    assert sum(trainer.skipped.values()) == 1 and set(trainer.skipped) <= {"truncated", "unreadable"}
    assert list(trainer.skipped_files) == [str(folder / "cut.mp4")]
