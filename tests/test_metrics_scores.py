import json

import numpy as np
import pytest
import torch

from videoldm.metrics import MissingWeightsError, clip_sim, inception_score, inception_score_from_probs
from videoldm.metrics.inception_score import C3D, load_c3d


def test_inception_score_uniform_is_one():
    mean, std = inception_score_from_probs(torch.full((50, 7), 1 / 7), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_distinct_one_hot_is_num_classes():
    mean, std = inception_score_from_probs(np.eye(12), splits=1)
    assert mean == pytest.approx(12.0, rel=1e-12) and std == 0.0
    # Ten splits of 12 distinct one-hots (3 classes each, cycling) score 3 each.
    mean, std = inception_score_from_probs(np.eye(3)[np.arange(30) % 3], splits=10)
    assert mean == pytest.approx(3.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(np.eye(3), splits=10)


def test_c3d_inception_score_shapes_and_bounds():
    torch.manual_seed(0)
    model = C3D(num_classes=5).eval()
    videos = torch.rand(2, 16, 3, 40, 40) * 2 - 1
    mean_clip = torch.full((3, 16, 112, 112), 100.0)
    score, std = inception_score(videos, model, mean=mean_clip, splits=2, batch_size=1)
    assert 1.0 <= score <= 5.0 and std >= 0.0
    with pytest.raises(ValueError, match="T>=16"):
        inception_score(videos[:, :8], model)


@pytest.mark.slow
def test_c3d_loads_state_dict_with_mean(tmp_path):
    model = C3D(num_classes=101)
    path = tmp_path / "c3d_ucf101.pt"
    torch.save({**model.state_dict(), "mean": torch.zeros(3, 16, 112, 112)}, path)
    loaded, mean = load_c3d(path)
    assert mean.shape == (3, 16, 112, 112)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_missing_c3d_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match="c3d.pt"):
        load_c3d(tmp_path / "c3d.pt")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny_clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_clip_sim_tiny_random_model(tiny_clip_dir):
    torch.manual_seed(0)
    videos = torch.rand(2, 3, 3, 40, 48) * 2 - 1
    prompts = ["a cat", "a dog running"]
    score = clip_sim(videos, prompts, tiny_clip_dir)
    assert -1.0 <= score <= 1.0
    assert clip_sim(videos, prompts, tiny_clip_dir) == pytest.approx(score, abs=1e-6)
    # Frames identical in time: the per-frame average equals a single frame's score.
    still = videos[:, :1].expand(-1, 3, -1, -1, -1)
    assert clip_sim(still, prompts, tiny_clip_dir) == pytest.approx(clip_sim(videos[:, :1], prompts, tiny_clip_dir), abs=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        clip_sim(videos, prompts[:1], tiny_clip_dir)


def test_clip_sim_missing_dir(tmp_path):
    with pytest.raises(MissingWeightsError):
        clip_sim(torch.zeros(1, 1, 3, 8, 8), ["x"], tmp_path / "nope")
