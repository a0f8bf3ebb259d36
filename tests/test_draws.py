"""Global draw numbering: every split of a global batch over processes and accumulation steps trains
on the same draws, with the same per-sample randomness."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from videoldm.data.sources import draw_seed
from videoldm.training.draws import (
    DRAW_SEED,
    DrawDataset,
    GlobalDrawBatches,
    RankStream,
    collate,
    micro_batch_size,
    randn_per_sample,
    rank_draws,
)


def _rank_micro_batches(global_batch: int, world_size: int, accumulation: int, rank: int, steps: int) -> list[list[int]]:
    """What accelerate's split_batches hands process ``rank``: its block of each global micro-batch."""
    batches = GlobalDrawBatches(global_batch, world_size, accumulation, start_step=0, end_step=steps)
    block = batches.micro_batch
    return [batch[rank * block : (rank + 1) * block] for batch in batches]


@pytest.mark.parametrize("world_size, accumulation", [(1, 2), (2, 1), (2, 2), (4, 1)])
def test_each_process_takes_its_contiguous_block_of_every_step(world_size, accumulation):
    global_batch, steps = 8, 3
    per_rank = global_batch // world_size
    for rank in range(world_size):
        micro = _rank_micro_batches(global_batch, world_size, accumulation, rank, steps)
        assert len(micro) == steps * accumulation
        for step in range(steps):
            draws = sum(micro[step * accumulation : (step + 1) * accumulation], [])
            first = step * global_batch + rank * per_rank
            assert draws == list(range(first, first + per_rank))
            assert all(rank_draws(n, global_batch, world_size, rank) for n in draws)


def test_a_resumed_sampler_continues_where_the_run_stopped():
    whole = list(GlobalDrawBatches(4, 2, 1, start_step=0, end_step=5))
    assert list(GlobalDrawBatches(4, 2, 1, start_step=3, end_step=5)) == whole[3:]


def test_a_global_batch_that_does_not_split_is_refused():
    assert micro_batch_size(12, 2, 3) == 2
    with pytest.raises(ValueError, match="batch_size 6 .* 4 processes x 1"):
        micro_batch_size(6, 4, 1)


class _RandomCrops(Dataset):
    """A source with random choices: the value of item i plus a random offset from the generator."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> dict:
        raise AssertionError("a source with sample() is sampled through it")

    def sample(self, index: int, generator: torch.Generator) -> dict:
        return {"video": torch.full((2,), float(index)) + torch.rand(2, generator=generator), "caption": f"item {index}"}


def test_a_draw_is_a_function_of_seed_and_draw_number_only():
    draws = DrawDataset(_RandomCrops(), seed=3)
    first, again, other = draws[7], DrawDataset(_RandomCrops(), seed=3)[7], DrawDataset(_RandomCrops(), seed=4)[7]
    assert torch.equal(first["video"], again["video"]) and first["caption"] == again["caption"]
    assert not torch.equal(first["video"], other["video"])
    assert int(first[DRAW_SEED]) == draw_seed(3, 7)
    batch = collate([draws[0], draws[1]])
    assert batch["video"].shape == (2, 2) and batch["caption"] == [draws[0]["caption"], draws[1]["caption"]]


class _Stream(IterableDataset):
    """A streaming source by the contract: decodes only the kept positions."""

    def __init__(self) -> None:
        self.decoded: list[int] = []

    def __iter__(self):
        return (sample for _, sample in self.stream(0, 0, lambda n: True))

    def stream(self, seed: int, start: int, keep):
        for position in range(start, start + 40):
            if keep(position):
                self.decoded.append(position)
                yield position, {"latents": torch.full((1,), float(position + seed))}


def test_streaming_processes_decode_only_their_own_draws_and_together_all():
    global_batch, start = 4, 8
    seen = {}
    for rank in range(2):
        source = _Stream()
        keep = lambda n, rank=rank: rank_draws(n, global_batch, 2, rank)  # noqa: E731
        samples = list(RankStream(source, seed=0, start=start, keep=keep))
        assert source.decoded == [n for n in range(start, start + 40) if keep(n)]
        seen |= {int(s["latents"]): s for s in samples}
    assert sorted(seen) == list(range(start, start + 40))


def test_per_sample_noise_does_not_depend_on_the_batch_it_is_drawn_in():
    seeds = torch.tensor([draw_seed(0, n) for n in range(4)])
    whole = randn_per_sample(seeds, "noise", (3, 2), torch.device("cpu"))
    halves = torch.cat([randn_per_sample(seeds[:2], "noise", (3, 2), torch.device("cpu")),
                        randn_per_sample(seeds[2:], "noise", (3, 2), torch.device("cpu"))])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, randn_per_sample(seeds, "posterior", (3, 2), torch.device("cpu")))


class _StreamStage:
    """A minimal stage on a streaming source: a linear map of the latents; remembers the draws it trained on."""

    def __init__(self) -> None:
        self.source = _Stream()
        self.model = torch.nn.Linear(1, 1)
        self.seen: list[int] = []

    def dataset(self) -> IterableDataset:
        return self.source

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def loss(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        self.seen += [int(value) for value in batch["latents"][:, 0]]
        loss = self.model(batch["latents"]).pow(2).mean()
        return loss, {"loss": loss.item()}

    def export(self, output_dir) -> None:
        output_dir.mkdir(parents=True)


def test_the_trainer_streams_from_the_resumed_position(tmp_path):
    from videoldm.training.trainer import Trainer, TrainSettings

    settings = TrainSettings(steps=3, batch_size=4, num_workers=0, checkpoint_every=1)
    first = _StreamStage()
    assert Trainer(first, settings, tmp_path).train(max_steps=1).step == 1
    resumed = _StreamStage()
    assert Trainer(resumed, settings, tmp_path).train().step == 3
    assert first.seen == [0, 1, 2, 3] and resumed.seen == list(range(4, 12))
