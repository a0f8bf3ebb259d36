"""Inception Score and CLIP-SIM against values computed by hand or written out independently here."""

import json
from pathlib import Path

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
    # Ten splits of three distinct one-hots (classes cycling) score 3 each.
    mean, std = inception_score_from_probs(np.eye(3)[np.arange(30) % 3], splits=10)
    assert mean == pytest.approx(3.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(np.eye(3), splits=10)


def passthrough_c3d(readout: torch.Tensor, bias: torch.Tensor) -> C3D:
    """C3D whose logits for a single-colour clip are ``readout @ relu(rgb - mean) + bias``.

    Every convolution copies channels 0..2 through its centre tap (ReLUs and max-pools leave a
    constant clip constant); fc6 and fc7 pick those three channels at the first output position.
    """
    model = C3D(num_classes=bias.numel())
    rgb = torch.arange(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.weight[rgb, rgb, 1, 1, 1] = 1.0
        # conv5's output is (512, 1, 4, 4), flattened channel-major: channel c starts at c * 16.
        model.fc6.weight[rgb, rgb * 16] = 1.0
        model.fc7.weight[rgb, rgb] = 1.0
        model.fc8.weight[:, :3] = readout
        model.fc8.bias.copy_(bias)
    return model.eval()


def reference_inception_score(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """Salimans et al.'s definition written out: per part exp(mean_x KL(p(y|x) || p(y))), then mean and std."""
    n = len(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0)
        kl = [sum(p_k * np.log(p_k / m_k) for p_k, m_k in zip(p, marginal) if p_k > 0) for p in part]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_closed_forms():
    # p(y) = (3/4, 1/4); KL terms log(4/3) and 1/2 log(2/3) + 1/2 log 2 = 1/2 log(4/3): IS = (4/3)^(3/4).
    mixed = (4 / 3) ** 0.75
    assert inception_score_from_probs(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1) == pytest.approx((mixed, 0.0), rel=1e-12)
    # Two splits, the second two distinct one-hots (IS 2): mean and population std of (mixed, 2).
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    mean, std = inception_score_from_probs(probs, splits=2)
    assert mean == pytest.approx((mixed + 2) / 2, rel=1e-12) and std == pytest.approx((2 - mixed) / 2, rel=1e-12)
    # 5 samples in 2 splits: parts [0:2] and [2:5], no sample dropped. The second part has
    # p(y) = (1/3, 2/3): KL terms log 3, log 3/2, log 3/2, so IS = (3 * 9/4)^(1/3) = 6.75^(1/3).
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mean, std = inception_score_from_probs(probs, splits=2)
    assert mean == pytest.approx((mixed + 6.75 ** (1 / 3)) / 2, rel=1e-12)
    assert (mean, std) == pytest.approx(reference_inception_score(probs, 2), rel=1e-12)
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(probs, splits=0)


def test_c3d_inception_score_matches_hand_computation():
    readout = torch.tensor([[0.03, 0.0, 0.0], [0.0, 0.03, 0.0], [0.0, 0.0, 0.03], [-0.01, -0.01, -0.01]])
    bias = torch.tensor([0.0, 0.5, -0.5, 1.0])
    model = passthrough_c3d(readout, bias)
    colours = np.array([[0.6, -0.2, -0.8], [-0.5, 0.9, 0.1], [0.2, 0.3, 0.9], [-0.9, -0.7, -1.0]])
    videos = torch.tensor(colours, dtype=torch.float32)[:, None, :, None, None].expand(4, 18, 3, 40, 48).clone()
    videos[:, 16:] = 1.0  # only the first 16 frames are C3D's clip: were these white frames used, max-pooling would see them
    mean_rgb = np.array([90.0, 100.0, 110.0])
    mean_clip = torch.tensor(mean_rgb, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 16, 112, 112)
    score, std = inception_score(videos, model, mean=mean_clip, splits=2, batch_size=3)

    pixels = (colours + 1) * 127.5  # [-1, 1] -> [0, 255]; a constant frame stays constant when resized
    logits = np.maximum(pixels - mean_rgb, 0.0) @ readout.double().numpy().T + bias.double().numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = reference_inception_score(probs, splits=2)
    assert expected[1] > 0.1, "the two splits must score differently for the std to be checked"
    assert (score, std) == pytest.approx(expected, rel=1e-5)
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


# The OpenAI CLIP pixel statistics, as published with the model (and used by its processors).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def save_tiny_clip(path: Path, train_pairs: dict[str, tuple[float, float, float]] | None = None) -> Path:
    """A seeded tiny CLIPModel (letters-only tokenizer) saved at ``path``.

    ``train_pairs`` (prompt -> RGB colour in [-1, 1]) first fits it contrastively to match each
    prompt with a frame of that single colour, so that matching pairs are known.
    """
    transformers = pytest.importorskip("transformers")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    path.mkdir(parents=True, exist_ok=True)
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
    model = transformers.CLIPModel(config)
    if train_pairs:
        tokens = tokenizer(list(train_pairs), padding=True, return_tensors="pt")
        colours = torch.tensor(list(train_pairs.values()))
        pixels = (((colours + 1) / 2 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD))[:, :, None, None]
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(40):
            loss = model(**tokens, pixel_values=pixels.expand(-1, -1, 32, 32), return_loss=True).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def reference_clip_sim(videos: torch.Tensor, prompts: list[str], clip_dir: Path) -> float:
    """CLIPSIM written out independently: the mean over videos and frames of cos(CLIP(frame), CLIP(prompt)).

    Frames are preprocessed as CLIP's processors do, with PIL's bicubic resize of the shorter side to
    the input size (on float images, so nothing is quantised; long side truncated), a floor
    centre crop and the OpenAI normalisation; embeddings are the projected pooled outputs.
    """
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(prompts, padding=True, return_tensors="pt")
    size = model.config.vision_config.image_size
    scores = []
    with torch.no_grad():
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        for video, text_embedding in zip(videos.numpy().astype(np.float32), text):
            for frame in video:
                frame = np.repeat(frame, 3 // frame.shape[0], axis=0)
                h, w = frame.shape[1:]
                new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
                resized = np.stack([np.asarray(Image.fromarray(c).resize((new_w, new_h), Image.BICUBIC)) for c in frame])
                top, left = (new_h - size) // 2, (new_w - size) // 2
                crop = np.clip(resized[:, top:top + size, left:left + size], -1, 1)
                pixels = ((crop + 1) / 2 - np.array(OPENAI_MEAN)[:, None, None]) / np.array(OPENAI_STD)[:, None, None]
                pooled = model.vision_model(pixel_values=torch.tensor(pixels[None], dtype=torch.float32)).pooler_output
                image_embedding = model.visual_projection(pooled)[0]
                scores.append(torch.nn.functional.cosine_similarity(image_embedding, text_embedding, dim=0).item())
    return float(np.mean(scores))


@pytest.mark.parametrize("shape", [(3, 40, 47), (3, 47, 40), (1, 20, 23)], ids=["landscape", "portrait", "grey-upscaled"])
def test_clip_sim_equals_reference_computation(tiny_clip_dir, shape):
    # 40x47 -> 32x37 (not 38: the long side is truncated, as CLIP's processors do), crop columns 2..33.
    videos = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a cat", "a dog running"]
    expected = reference_clip_sim(videos, prompts, tiny_clip_dir)
    assert clip_sim(videos, prompts, tiny_clip_dir, batch_size=4) == pytest.approx(expected, abs=1e-5)


def test_clip_sim_prompts_must_match_videos(tiny_clip_dir):
    with pytest.raises(ValueError, match="prompts"):
        clip_sim(torch.zeros(2, 1, 3, 8, 8), ["a cat"], tiny_clip_dir)


def test_clip_sim_scores_matching_prompts_higher(tmp_path):
    colours = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
    clip_dir = save_tiny_clip(tmp_path / "colour_clip", train_pairs=colours)
    noise = torch.rand(3, 2, 3, 40, 47, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    videos = (torch.tensor(list(colours.values()))[:, None, :, None, None] + noise).clamp(-1, 1)
    names = list(colours)
    for i, video in enumerate(videos):
        scores = [clip_sim(video[None], [name], clip_dir) for name in names]
        assert max(range(3), key=scores.__getitem__) == i, (names[i], scores)


def test_clip_sim_missing_dir(tmp_path):
    with pytest.raises(MissingWeightsError):
        clip_sim(torch.zeros(1, 1, 3, 8, 8), ["x"], tmp_path / "nope")
