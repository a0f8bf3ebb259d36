"""The fast formulations of the temporal layers compute what the plain ones do."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from videoldm.models import temporal
from videoldm.models.temporal import FrameContext, TemporalAttention, conv_video, sinusoidal_embedding


@pytest.mark.parametrize("kernel_size", [(3, 1, 1), (5, 1, 1), (1, 1, 1), (3, 3, 3)])
def test_conv_video_equals_conv3d(kernel_size):
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, kernel_size, padding=tuple(k // 2 for k in kernel_size))
    x = torch.randn(2, 6, 7, 3, 4)
    torch.testing.assert_close(conv_video(conv, x), conv(x), atol=1e-5, rtol=1e-5)
    # also on a permuted (non-contiguous) view, as the layers pass it
    frames = torch.randn(14, 6, 3, 4)
    video = rearrange(frames, "(b t) c h w -> b c t h w", t=7)
    torch.testing.assert_close(conv_video(conv, video), conv(video.contiguous()), atol=1e-5, rtol=1e-5)


def _reference_forward(layer: TemporalAttention, hidden: torch.Tensor, states: torch.Tensor, frames: int) -> torch.Tensor:
    """The textbook form: every spatial position is a sequence of T frames, with its own copy of the conditioning."""
    _, _, height, width = hidden.shape
    x = rearrange(layer.norm_in(hidden), "(b t) c h w -> (b h w) t c", t=frames)
    x = layer.proj_in(x) + layer.frame_mlp(sinusoidal_embedding(torch.arange(frames), layer.frame_embedding_dim))
    q, k, v = layer.to_qkv(layer.norm_self(x)).chunk(3, dim=-1)
    x = x + layer.self_out(layer._attend(q, k, v))
    k, v = layer.to_kv_cross(states.repeat_interleave(height * width, dim=0)).chunk(2, dim=-1)
    x = x + layer.cross_out(layer._attend(layer.to_q_cross(layer.norm_cross(x)), k, v))
    x = layer.proj_out(x + layer.ff(layer.norm_ff(x)))
    return hidden + rearrange(x, "(b h w) t c -> (b t) c h w", h=height, w=width)


def random_attention_layer(batch: int, frames: int) -> tuple[TemporalAttention, torch.Tensor, torch.Tensor]:
    """A TemporalAttention (16 channels, 2 heads, cross-attention) with random weights, its input
    ``(batch * frames, 16, 3, 3)`` and conditioning ``(batch, 4, 12)``."""
    torch.manual_seed(0)
    layer = TemporalAttention(16, head_dim=8, cross_attention_dim=12).eval()
    for parameter in layer.parameters():
        nn.init.normal_(parameter, std=0.3)
    return layer, torch.randn(batch * frames, 16, 3, 3), torch.randn(batch, 4, 12)


def test_temporal_attention_equals_per_position_form():
    frames = 5
    layer, hidden, states = random_attention_layer(2, frames)
    with torch.no_grad():
        output = layer(hidden, FrameContext(frames, encoder_hidden_states=states))
        torch.testing.assert_close(output, _reference_forward(layer, hidden, states, frames), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(output, layer(hidden, FrameContext(frames)), atol=1e-3)  # the conditioning matters


def test_temporal_attention_in_chunks_of_sequences_equals_one_call(monkeypatch):
    """One position per sequence: at full resolution there are more sequences than CUDA's grid allows."""
    frames = 4
    layer, hidden, states = random_attention_layer(2, frames)
    with torch.no_grad():
        whole = layer(hidden, FrameContext(frames, encoder_hidden_states=states))
        sequences_per_call = []
        attention = temporal.F.scaled_dot_product_attention

        def counted(query, key, value):
            sequences_per_call.append(query.shape[0])
            return attention(query, key, value)

        monkeypatch.setattr(temporal.F, "scaled_dot_product_attention", counted)
        monkeypatch.setattr(temporal, "MAX_ATTENTION_SEQUENCES", 5)  # 18 self-attention sequences, 2 cross
        chunked = layer(hidden, FrameContext(frames, encoder_hidden_states=states))
        assert sequences_per_call == [5, 5, 5, 3, 2]
        monkeypatch.setattr(temporal, "MAX_ATTENTION_SEQUENCES", 1)  # cross-attention chunked too
        one_by_one = layer(hidden, FrameContext(frames, encoder_hidden_states=states))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(one_by_one, whole, atol=1e-6, rtol=1e-6)
