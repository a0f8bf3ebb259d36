"""Training diffusion times: uniform (the image model's own training) or logit-normal (`timestep_sampling:`)."""

import json

import pytest
import torch

from videoldm.training.draws import randint_per_sample
from videoldm.training.objective import TimestepSampling

N = 1000


def seeds(count: int) -> torch.Tensor:
    return torch.arange(count, dtype=torch.int64) * 7919 + 11


def test_uniform_draws_are_the_draws_training_always_made():
    """The default keeps every earlier run's timesteps: the same per-sample draws as before the option existed."""
    draw_seeds = seeds(64)
    expected = randint_per_sample(draw_seeds, "timestep", N, torch.device("cpu"))
    assert torch.equal(TimestepSampling().per_sample(draw_seeds, N, torch.device("cpu")), expected)


def test_logit_normal_puts_the_draws_where_its_mean_says():
    draw_seeds = seeds(4000)
    high = TimestepSampling("logit_normal", mean=1.5, std=1.0).per_sample(draw_seeds, N, torch.device("cpu"))
    centred = TimestepSampling("logit_normal", mean=0.0, std=1.0).per_sample(draw_seeds, N, torch.device("cpu"))
    uniform = TimestepSampling().per_sample(draw_seeds, N, torch.device("cpu"))
    for times in (high, centred, uniform):
        assert times.dtype == torch.int64 and times.min() >= 0 and times.max() <= N - 1
    # P(t >= 0.9 N) = P(z >= logit(0.9) - 1.5) = 0.243 for mean 1.5; 0.1 uniformly
    assert 0.21 < (high >= 900).double().mean() < 0.28
    assert 0.08 < (uniform >= 900).double().mean() < 0.12
    assert abs(centred.double().median() - 500) < 25
    # the same seeds give the same times; one generator's draws are reproducible too
    assert torch.equal(high, TimestepSampling("logit_normal", mean=1.5).per_sample(draw_seeds, N, torch.device("cpu")))
    sampling = TimestepSampling("logit_normal", mean=1.5)
    first, second = (sampling.sample(16, N, torch.device("cpu"), torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, second)


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "cosine"}, "timestep_sampling: kind must be one of ('uniform', 'logit_normal'), got 'cosine'"),
    ({"kind": "logit_normal", "std": 0}, "timestep_sampling: mean must be finite and std positive"),
    ({"kind": "logit_normal", "scale": 2}, "timestep_sampling: unknown entries ['scale']"),
    ({"kind": "logit_normal", "mean": "high"}, "timestep_sampling: mean must be float"),
])
def test_a_bad_timestep_sampling_is_one_error_line(entry, message, tmp_path, capsys):
    from conftest import refused_recipe

    recipe = {"stage": "video", "output_dir": str(tmp_path / "run"), "model": "embedded", "timestep_sampling": entry,
              "data": {"kind": "digits", "num_videos": 8, "num_frames": 8}}
    err = refused_recipe(recipe, tmp_path / "bad.yaml", capsys)
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_prediction_run_trains_on_the_recipes_timesteps(tmp_path, capsys, monkeypatch):
    """`timestep_sampling:` reaches the loss: the objective is called with the logit-normal draws of each step's
    samples, and the run's losses differ from the uniform run's on the same clips and noise."""
    import yaml

    from videoldm.cli import main
    from videoldm.training import objective

    seen: list[torch.Tensor] = []
    loss = objective.DiffusionObjective.loss

    def recording_loss(self, model, latents, model_kwargs=None, generator=None, timesteps=None, noise=None):
        seen.append(timesteps.clone())
        return loss(self, model, latents, model_kwargs, generator, timesteps, noise)

    monkeypatch.setattr(objective.DiffusionObjective, "loss", recording_loss)

    def train(name: str, sampling: dict | None) -> list[float]:
        recipe = {"stage": "prediction", "output_dir": str(tmp_path / name), "model": "embedded",
                  "data": {"kind": "digits", "num_videos": 8, "num_frames": 8},
                  "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "num_workers": 0, "warmup_steps": 0}}
        if sampling is not None:
            recipe["timestep_sampling"] = sampling
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        with pytest.raises(SystemExit) as exit_info:
            main(["train", str(tmp_path / f"{name}.yaml")])
        assert exit_info.value.code == 0, capsys.readouterr().err
        return [json.loads(line)["loss"] for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]

    uniform_losses = train("uniform", None)
    uniform_times = torch.cat(seen)
    seen.clear()
    shifted_losses = train("shifted", {"kind": "logit_normal", "mean": 3.0, "std": 0.5})
    shifted_times = torch.cat(seen)
    assert len(shifted_times) == len(uniform_times) == 4
    assert shifted_times.min() >= 800  # mean 3, std 0.5: t < 800 needs z < -3.2, which none of these four draws is
    assert not torch.equal(shifted_times, uniform_times)
    assert shifted_losses != uniform_losses
