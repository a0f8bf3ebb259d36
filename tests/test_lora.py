"""LoRA on the temporal layers (peft): exact at init, trains only the adapters, saves, loads, merges."""

from __future__ import annotations

import pytest
import torch

from conftest import CROSS_ATTENTION_DIM, randomize_temporal, tiny_image_unet
from videoldm.models.lora import (
    LORA_WEIGHTS_NAME,
    TemporalLoraOptions,
    add_temporal_lora,
    load_temporal_lora,
    merge_temporal_lora,
    save_temporal_lora,
)
from videoldm.models.unet import VideoUNet

pytest.importorskip("peft")


def video_unet() -> VideoUNet:
    unet = VideoUNet.from_image_unet(tiny_image_unet(), attention_head_dim=8)
    randomize_temporal(unet)
    return unet.eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 8, 8, generator=generator), torch.randn(2, 5, CROSS_ATTENTION_DIM, generator=generator)


def output(unet: VideoUNet, seed: int = 0) -> torch.Tensor:
    sample, states = inputs(seed)
    with torch.no_grad():
        return unet(sample, 10, states).sample


def trained(unet: VideoUNet, options: TemporalLoraOptions, steps: int = 3) -> VideoUNet:
    adapters = add_temporal_lora(unet, options)
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    sample, states = inputs(1)
    for _ in range(steps):
        loss = unet(sample, 10, states).sample.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return unet


@pytest.mark.parametrize("rank", [1, 4])
def test_a_fresh_lora_equals_the_model_exactly(rank):
    unet = video_unet()
    before = output(unet)
    add_temporal_lora(unet, TemporalLoraOptions(rank=rank))
    assert torch.equal(output(unet), before)


def test_only_the_adapters_train():
    unet = video_unet()
    frozen = {name: value.clone() for name, value in unet.state_dict().items()}
    before = output(unet)
    trained(unet, TemporalLoraOptions(rank=4, target=("to_qkv", "self_out")))
    assert [name for name, p in unet.named_parameters() if p.requires_grad] and all(
        ".lora_" in name for name, p in unet.named_parameters() if p.requires_grad)
    for name, value in unet.state_dict().items():
        if ".lora_" not in name:  # spatial and temporal base weights, bit for bit
            assert torch.equal(value, frozen[name.replace(".base_layer", "")]), name
    assert (output(unet) - before).abs().max() > 1e-4


def test_saved_lora_loads_onto_a_fresh_model_and_merges(tmp_path):
    options = TemporalLoraOptions(rank=4, alpha=8)
    unet = trained(video_unet(), options)
    expected = output(unet, seed=2)
    save_temporal_lora(unet, options, tmp_path / "lora")
    loaded = load_temporal_lora(video_unet(), tmp_path / "lora")
    torch.testing.assert_close(output(loaded, seed=2), expected, rtol=0, atol=0)
    merged = load_temporal_lora(video_unet(), tmp_path / "lora", merge=True)
    torch.testing.assert_close(output(merged, seed=2), expected, rtol=1e-5, atol=1e-5)
    assert set(merged.state_dict()) == set(video_unet().state_dict())  # an ordinary model again
    temporal_bytes = sum(value.numel() * 4 for value in merged.temporal_state_dict().values())
    assert (tmp_path / "lora" / LORA_WEIGHTS_NAME).stat().st_size < temporal_bytes / 10


def test_bad_lora_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        TemporalLoraOptions(rank=0)
    with pytest.raises(ValueError, match="target"):
        TemporalLoraOptions(target=("conv1",))
    with pytest.raises(FileNotFoundError, match="no temporal LoRA"):
        load_temporal_lora(video_unet(), tmp_path)


def test_merging_twice_is_harmless():
    unet = trained(video_unet(), TemporalLoraOptions(rank=2))
    expected = output(unet)
    merge_temporal_lora(unet)
    merge_temporal_lora(unet)
    torch.testing.assert_close(output(unet), expected, rtol=1e-5, atol=1e-5)


def test_a_lora_run_on_the_embedded_model_exports_small_adapters_that_sample_as_merged(tmp_path, capsys):
    """`lora:` in a video recipe: only the adapters train; the export is the merged pipeline plus the adapters alone,
    far smaller than the temporal weights, and the embedded model with them loaded samples as the merged export."""
    import yaml

    from videoldm.cli import main
    from videoldm.embedded import embedded_model_dir
    from videoldm.pipelines import VideoLDMPipeline

    recipe = {"stage": "video", "output_dir": str(tmp_path / "run"), "model": "embedded", "lora": {"rank": 4, "alpha": 8},
              "data": {"kind": "digits", "num_videos": 8, "num_frames": 8},
              "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "num_workers": 0, "warmup_steps": 0,
                        "learning_rate": 1.0e-2, "ema_decay": 0.0}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "lora.yaml")])
    assert exit_info.value.code == 0, capsys.readouterr().err
    final = tmp_path / "run" / "final"
    merged = VideoLDMPipeline.from_pretrained(final)
    loaded = VideoLDMPipeline.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    temporal_bytes = sum(value.numel() * 4 for value in loaded.unet.temporal_state_dict().values())
    assert (final / "temporal_lora" / LORA_WEIGHTS_NAME).stat().st_size < temporal_bytes / 50
    base = loaded(labels=[[3]], num_frames=8, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").frames
    loaded.load_temporal_lora(final / "temporal_lora")
    for pipe in (merged, loaded):
        pipe.set_progress_bar_config(disable=True)
    frames = [pipe(labels=[[3]], num_frames=8, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="pt").frames for pipe in (merged, loaded)]
    torch.testing.assert_close(frames[1], frames[0], rtol=0, atol=1e-4)
    assert (frames[1] - base).abs().max() > 1e-3  # the adapters trained: the video differs from the base model's


def test_a_bad_lora_entry_is_a_recipe_error(tmp_path, capsys):
    from conftest import refused_recipe

    recipe = {"stage": "video", "output_dir": str(tmp_path / "run"), "model": "embedded", "lora": {"rank": 0},
              "data": {"kind": "digits", "num_videos": 8, "num_frames": 8}}
    err = refused_recipe(recipe, tmp_path / "bad.yaml", capsys)
    assert len(err) == 1 and "lora: rank must be >= 1" in err[0]


def test_a_lora_run_resumes_exactly(tmp_path, capsys):
    """Stopped at step 2 and resumed to 4, the adapters equal those of an uninterrupted 4-step run."""
    import yaml
    from safetensors.torch import load_file

    from videoldm.cli import main

    def train(name: str, steps: int) -> None:
        recipe = {"stage": "video", "output_dir": str(tmp_path / name), "model": "embedded", "lora": {"rank": 2},
                  "data": {"kind": "digits", "num_videos": 8, "num_frames": 8},
                  "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "num_workers": 0, "warmup_steps": 0,
                            "learning_rate": 1.0e-2}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        with pytest.raises(SystemExit) as exit_info:
            main(["train", str(tmp_path / f"{name}.yaml"), "--steps", str(steps)])
        assert exit_info.value.code == 0, capsys.readouterr().err

    train("resumed", 2)
    train("resumed", 4)
    train("whole", 4)
    resumed, whole = (load_file(tmp_path / name / "final" / "temporal_lora" / LORA_WEIGHTS_NAME) for name in ("resumed", "whole"))
    assert resumed.keys() == whole.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)
