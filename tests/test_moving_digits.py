"""Moving digits: determinism, held-out split, ground truth that matches the rendered frames."""

import dataclasses
import time

import pytest
import torch

from digits_measures import (
    DigitClassifier,
    centroid_of_mass,
    classify_frames,
    train_digit_classifier,
    true_backward_flow,
)
from videoldm.data.moving_digits import (
    MovingDigitsConfig,
    MovingDigitsFrames,
    MovingDigitsSample,
    MovingDigitsVideos,
    digit_images,
    generate_video,
    _render,
    _Trajectory,
)
from videoldm.metrics.consistency import warping_error

CONFIG = MovingDigitsConfig()
NUM_VIDEOS = 60  # enough for both digit counts and plenty of bounces, still well under a second


def assert_samples_equal(a: MovingDigitsSample, b: MovingDigitsSample) -> None:
    for field in dataclasses.fields(MovingDigitsSample):
        torch.testing.assert_close(
            getattr(a, field.name), getattr(b, field.name), rtol=0, atol=0, equal_nan=True
        )


@pytest.fixture(scope="module")
def samples() -> list[MovingDigitsSample]:
    return [generate_video(i, CONFIG) for i in range(NUM_VIDEOS)]


def test_same_index_gives_identical_video_regardless_of_call_order() -> None:
    first = generate_video(7, CONFIG)
    for i in (3, 100, 0):
        generate_video(i, CONFIG)
    assert_samples_equal(first, generate_video(7, CONFIG))


@pytest.mark.parametrize(
    "other",
    [
        (8, CONFIG),
        (7, dataclasses.replace(CONFIG, seed=1)),
        (7, dataclasses.replace(CONFIG, split="test")),
    ],
)
def test_different_index_seed_or_split_gives_different_video(
    other: tuple[int, MovingDigitsConfig],
) -> None:
    assert not torch.equal(generate_video(7, CONFIG).frames, generate_video(*other).frames)


def test_train_and_test_digit_images_are_disjoint() -> None:
    train_images, train_labels = digit_images("train")
    test_images, test_labels = digit_images("test")
    assert train_images.shape == (1438, 8, 8) and test_images.shape == (359, 8, 8)
    assert train_labels.shape == (1438,) and test_labels.shape == (359,)
    assert 0.0 <= train_images.min() and train_images.max() <= 1.0
    # sklearn's digits contain no duplicate images, so disjoint contents means disjoint images.
    train_set = {image.numpy().tobytes() for image in train_images}
    test_set = {image.numpy().tobytes() for image in test_images}
    assert len(train_set) == len(train_images) and len(test_set) == len(test_images)
    assert not train_set & test_set
    assert set(test_labels.tolist()) == set(range(10))


def test_shapes_ranges_and_padding(samples: list[MovingDigitsSample]) -> None:
    num_digits = []
    for sample in samples:
        assert sample.frames.shape == (16, 1, 32, 32) and sample.frames.dtype == torch.float32
        assert sample.frames.min() >= -1.0 and sample.frames.max() <= 1.0
        assert sample.frames.max() > 0.0  # a digit is visible
        assert sample.labels.shape == (2,) and sample.labels.dtype == torch.long
        for values in (sample.positions, sample.centroids, sample.velocities):
            assert values.shape == (16, 2, 2)
        assert sample.bounced.shape == (16, 2) and sample.bounced.dtype == torch.bool
        present = sample.labels >= 0
        assert present[0]  # padding comes after the digits
        assert torch.isnan(sample.positions[:, ~present]).all()
        assert not torch.isnan(sample.positions[:, present]).any()
        assert not sample.bounced[:, ~present].any()
        num_digits.append(int(present.sum()))
    assert set(num_digits) == {1, 2}


def test_positions_stay_inside_the_canvas(samples: list[MovingDigitsSample]) -> None:
    limit = CONFIG.canvas_size - CONFIG.digit_size
    for sample in samples:
        positions = sample.positions[:, sample.labels >= 0]
        assert positions.min() >= 0.0 and positions.max() <= limit


def test_velocities_constant_except_at_bounces(samples: list[MovingDigitsSample]) -> None:
    num_bounces = 0
    for sample in samples:
        present = sample.labels >= 0
        positions, velocities = sample.positions[:, present], sample.velocities[:, present]
        bounced = sample.bounced[:, present]
        speed = velocities.norm(dim=-1)
        assert speed.min() >= CONFIG.min_speed - 1e-5 and speed.max() <= CONFIG.max_speed + 1e-5
        for t in range(1, CONFIG.num_frames):
            for d in range(int(present.sum())):
                if bounced[t, d]:
                    num_bounces += 1
                    # Reflection flips a component's sign and keeps its magnitude.
                    torch.testing.assert_close(velocities[t, d].abs(), velocities[t - 1, d].abs())
                    assert (velocities[t, d] * velocities[t - 1, d] < 0).any()
                else:
                    torch.testing.assert_close(velocities[t, d], velocities[t - 1, d])
                    torch.testing.assert_close(
                        positions[t, d] - positions[t - 1, d], velocities[t - 1, d]
                    )
    assert num_bounces > 10


def test_centroid_of_mass_follows_recorded_centroids() -> None:
    config = dataclasses.replace(CONFIG, two_digit_prob=0.0)
    for index in range(20):
        sample = generate_video(index, config)
        assert (sample.labels[1:] == -1).all()
        # Bilinear placement shifts the intensity centroid exactly with the position (digits are
        # always fully inside the canvas), so this holds far tighter than the 0.5 px asked of it.
        torch.testing.assert_close(
            centroid_of_mass(sample.frames), sample.centroids[:, 0], rtol=0, atol=1e-3
        )
        box_centre = sample.positions[:, 0] + (config.digit_size - 1) / 2
        assert (sample.centroids[:, 0] - box_centre).abs().max() < config.digit_size / 4


def test_centroid_of_mass_batch_dims_empty_frames_and_threshold() -> None:
    frames = torch.full((2, 3, 1, 8, 8), -1.0)
    frames[0, 0, 0, 2, 5] = 1.0
    frames[0, 1, 0, 1, 1] = -0.9  # faint, below the threshold used below
    frames[0, 1, 0, 6, 4] = 1.0
    centroids = centroid_of_mass(frames, threshold=0.1)
    assert centroids.shape == (2, 3, 2)
    torch.testing.assert_close(centroids[0, 0], torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(centroids[0, 1], torch.tensor([6.0, 4.0]))
    assert torch.isnan(centroids[1]).all()


def test_digit_count_and_size_options() -> None:
    config = MovingDigitsConfig(canvas_size=40, digit_size=16, num_frames=5, max_digits=3)
    sample = generate_video(0, config)
    assert sample.frames.shape == (5, 1, 40, 40)
    assert sample.positions.shape == (5, 3, 2) and sample.labels.shape == (3,)
    for prob, expected in ((0.0, 1), (1.0, 3)):
        config = dataclasses.replace(config, two_digit_prob=prob)
        assert all((generate_video(i, config).labels >= 0).sum() == expected for i in range(5))
    single = MovingDigitsConfig(max_digits=1)
    assert generate_video(0, single).labels.shape == (1,)


@pytest.mark.parametrize(
    "bad",
    [{"split": "val"}, {"digit_size": 32}, {"two_digit_prob": 1.5}, {"min_speed": 3.0}],
)
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        MovingDigitsConfig(**bad)


def test_video_dataset() -> None:
    dataset = MovingDigitsVideos(CONFIG, length=5, cache=True)
    assert len(dataset) == 5
    item = dataset[3]
    assert item["video"].shape == (16, 1, 32, 32) and item["labels"].shape == (2,)
    assert torch.equal(item["video"], generate_video(3, CONFIG).frames)
    assert dataset[3] is item
    with pytest.raises(IndexError):
        dataset[5]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["video"].shape == (4, 16, 1, 32, 32) and batch["labels"].shape == (4, 2)


def test_frame_dataset_matches_videos() -> None:
    dataset = MovingDigitsFrames(CONFIG, num_videos=3)
    assert len(dataset) == 3 * CONFIG.num_frames
    video = generate_video(2, CONFIG)
    for frame in (0, 9, CONFIG.num_frames - 1):
        item = dataset[2 * CONFIG.num_frames + frame]
        assert item["image"].shape == (1, 32, 32)
        assert torch.equal(item["image"], video.frames[frame])
        assert torch.equal(item["labels"], video.labels)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_classifier_shapes_and_short_training() -> None:
    rng_state = torch.random.get_rng_state()
    short = {"steps": 3, "seed": 0, "batch_size": 16, "num_eval_frames": 32}
    model, accuracy = train_digit_classifier(CONFIG, **short)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert isinstance(model, DigitClassifier) and 0.0 <= accuracy <= 1.0
    again, _ = train_digit_classifier(CONFIG, **short)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)

    model.train()
    probabilities = classify_frames(model, generate_video(0, CONFIG).frames)
    assert probabilities.shape == (16, 10)
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(16))
    assert model.training  # mode restored
    assert DigitClassifier()(torch.zeros(2, 1, 48, 48)).shape == (2, 10)


@pytest.mark.slow
def test_classifier_reaches_high_held_out_accuracy() -> None:
    start = time.perf_counter()
    _, accuracy = train_digit_classifier(CONFIG)
    print(f"held-out accuracy {accuracy:.4f} in {time.perf_counter() - start:.1f} s")
    assert accuracy > 0.95


def _rendered_sample(positions: torch.Tensor, config: MovingDigitsConfig) -> MovingDigitsSample:
    """Random-texture digits rendered as the data set renders them, at ``positions`` (T, D, 2)."""
    num_frames, num_digits = positions.shape[:2]
    size = config.digit_size
    digits = torch.rand(num_digits, size, size, generator=torch.Generator().manual_seed(0))
    trajectory = _Trajectory(
        digits=digits,
        labels=torch.zeros(num_digits, dtype=torch.long),
        centroid_offsets=torch.zeros(num_digits, 2),
        positions=positions,
        velocities=torch.zeros_like(positions),
        bounced=torch.zeros(num_frames, num_digits, dtype=torch.bool),
    )
    return MovingDigitsSample(
        frames=_render(trajectory, slice(None), config.canvas_size),
        labels=trajectory.labels,
        positions=positions,
        centroids=positions,
        velocities=trajectory.velocities,
        bounced=trajectory.bounced,
    )


def test_true_backward_flow_warps_frames_exactly_and_masks_what_no_flow_explains() -> None:
    config = MovingDigitsConfig(canvas_size=32, digit_size=8)
    # Whole-pixel steps make bilinear warping exact; the digits cross at frame 2 and move both ways.
    positions = torch.tensor(
        [[[2.0, 3.0], [20.0, 22.0]], [[6.0, 5.0], [16.0, 18.0]],
         [[10.0, 9.0], [12.0, 12.0]], [[14.0, 13.0], [8.0, 5.0]]]
    )
    sample = _rendered_sample(positions, config)
    flow, valid = true_backward_flow(sample, config)
    frames = (sample.frames[None] + 1) / 2
    assert flow.shape == (3, 2, 32, 32) and valid.shape == (3, 32, 32)
    assert warping_error(frames, flow[None], valid[None]).item() < 1e-6
    swapped = flow.flip(1)  # (dy, dx): the wrong convention must show
    assert warping_error(frames, swapped[None], valid[None]).item() > 0.01
    assert warping_error(frames, torch.zeros_like(flow)[None], valid[None]).item() > 0.01
    assert not valid[1, 13, 13]  # both digits cover it in frame 2
    assert not valid[0, 3, 3]  # background in frame 1 where digit 0 was in frame 0: disoccluded
    # Digit 0 moved (4, 2) in (y, x) from frame 0 to 1; the flow points back, as (dx, dy).
    assert valid[0, 8, 8] and flow[0, :, 8, 8].tolist() == [-2.0, -4.0]
    assert valid[0, 30, 0] and flow[0, :, 30, 0].tolist() == [0.0, 0.0]


def test_true_backward_flow_on_generated_videos_is_near_exact() -> None:
    # The upsampler benchmark's videos: 48 px digits (smooth at that size), 4 - 10 px per frame.
    config = MovingDigitsConfig(
        canvas_size=128, digit_size=48, min_speed=4.0, max_speed=10.0, num_frames=6
    )
    for index in range(4):
        sample = generate_video(index, config)
        flow, valid = true_backward_flow(sample, config)
        frames = (sample.frames[None] + 1) / 2
        along_motion = warping_error(frames, flow[None], valid[None]).item()
        standing_still = warping_error(frames, torch.zeros_like(flow)[None], valid[None]).item()
        assert valid.float().mean() > 0.5
        assert along_motion < 0.05 * standing_still  # sub-pixel steps leave the resampling floor
