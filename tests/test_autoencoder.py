"""TemporalDecoder (invariant 10), VideoDiscriminator and the decoder fine-tuning objective."""

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from videoldm.models.autoencoder import TemporalDecoder, frame_windows, window_weights
from videoldm.models.discriminator import VideoDiscriminator, hinge_d_loss, hinge_g_loss
from videoldm.training.decoder_losses import DecoderFinetuneObjective

PIXELS = 16  # latents are 8x8: the decoder upsamples once with two blocks


def tiny_vae(channels: int = 1, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    ).eval()


def randomise_temporal(model: TemporalDecoder, scale: float = 0.02, seed: int = 1) -> TemporalDecoder:
    """Perturb every temporal weight (zero-initialised ones become nonzero); alpha stays 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.temporal.named_parameters():
            if not name.endswith("mix_logit"):
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def image_decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The image VAE frame by frame: ``(B, T, c, h, w)`` scaled latents -> ``(B, T, C, H, W)``."""
    frames = vae.decode(latents.flatten(0, 1) / vae.config.scaling_factor).sample
    return frames.unflatten(0, latents.shape[:2])


def smooth_latents(num_frames: int, size: int = 4, seed: int = 0) -> torch.Tensor:
    """``(1, T, 4, size, size)``: a linear path between two random latents, so frames change slowly."""
    start, end = torch.randn(2, 1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    weight = torch.linspace(0, 1, num_frames)[:, None, None, None]
    return ((1 - weight) * start + weight * end)[None]


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    return tiny_vae()


@torch.no_grad()
def test_encoder_untouched_and_spatial_keys_are_the_autoencoders(vae):
    model = TemporalDecoder.from_autoencoder(vae).eval()
    spatial = {key[len("vae.") :]: value for key, value in model.state_dict().items() if key.startswith("vae.")}
    assert spatial.keys() == vae.state_dict().keys()
    assert all(torch.equal(spatial[key], value) for key, value in vae.state_dict().items())
    assert all(key.startswith("temporal.decoder__") for key in model.state_dict() if not key.startswith("vae."))

    video = torch.rand(2, 3, 1, PIXELS, PIXELS) * 2 - 1
    expected = vae.encode(video.flatten(0, 1)).latent_dist.mode() * vae.config.scaling_factor
    latents = model.encode(video)
    assert latents.shape == (2, 3, 4, PIXELS // 2, PIXELS // 2)
    assert torch.equal(latents.flatten(0, 1), expected)


@pytest.mark.parametrize("num_frames", [1, 3])
@torch.no_grad()
def test_fresh_temporal_decoder_is_the_image_decoder(vae, num_frames):
    model = TemporalDecoder.from_autoencoder(vae, alpha_init=0.3).eval()
    latents = torch.randn(2, num_frames, 4, 8, 8)
    torch.testing.assert_close(model.decode(latents), image_decode(vae, latents), atol=1e-5, rtol=0)


@torch.no_grad()
def test_temporal_off_or_image_only_is_the_image_decoder_for_any_temporal_weights(vae):
    model = randomise_temporal(TemporalDecoder.from_autoencoder(vae)).eval()
    latents = torch.randn(2, 4, 4, 8, 8)
    expected = image_decode(vae, latents)
    torch.testing.assert_close(model.decode(latents, temporal=False), expected, atol=1e-5, rtol=0)
    image_only = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(model.decode(latents, image_only_indicator=image_only), expected, atol=1e-5, rtol=0)

    video = model.decode(latents)
    assert (video - expected).abs().max() > 1e-3  # the temporal layers do act
    changed = latents.clone()
    changed[1, 0] += 1.0
    other = model.decode(changed)
    assert torch.equal(other[0], video[0])  # videos in a batch never affect each other
    assert (other[1, 1:] - video[1, 1:]).abs().max() > 1e-4  # frames of one video do


def test_windows_cover_every_frame_with_weights_summing_to_one():
    windows = frame_windows(40, 16, 4)
    assert windows == [(0, 16), (12, 28), (24, 40)]
    total = torch.zeros(40, dtype=torch.float64)
    for (start, end), weight in zip(windows, window_weights(windows)):
        total[start:end] += weight
    torch.testing.assert_close(total, torch.ones(40, dtype=torch.float64))
    assert frame_windows(41, 16, 4)[-1] == (36, 41)
    assert frame_windows(7, 16, 4) == [(0, 7)]
    with pytest.raises(ValueError):
        frame_windows(40, 16, 9)


@torch.no_grad()
def test_chunked_decode_matches_full_decode_and_has_no_seams(vae):
    model = randomise_temporal(TemporalDecoder.from_autoencoder(vae)).eval()
    num_frames, chunk, overlap = 40, 16, 4
    latents = smooth_latents(num_frames)
    full = model.decode(latents)
    assert (model.decode(latents, chunk_size=64, overlap=overlap) - full).abs().max() < 1e-5

    def seam_ratio(video: torch.Tensor, overlap: int) -> float:
        """Largest frame-to-frame change where windows hand over / median change inside windows."""
        change = (video[0, 1:] - video[0, :-1]).abs().mean(dim=(1, 2, 3))  # change[t]: frame t -> t+1
        windows = frame_windows(num_frames, chunk, overlap)
        handover = {t for (_, end), (start, _) in zip(windows, windows[1:]) for t in range(start - 1, end)}
        inside = [change[t] for t in range(num_frames - 1) if t not in handover]
        return (max(change[t] for t in handover) / torch.stack(inside).median()).item()

    chunked = model.decode(latents, chunk_size=chunk, overlap=overlap)
    assert chunked.shape == full.shape
    blended, hard_cut = seam_ratio(chunked, overlap), seam_ratio(model.decode(latents, chunk_size=chunk), 0)
    wide = seam_ratio(model.decode(latents, chunk_size=chunk, overlap=chunk // 2), chunk // 2)
    # with random weights, zero padding at a window's ends reaches every frame of a 16-frame window
    # through its 15 temporal convolutions: a hard cut shows it as a step (ratio ~6-9 over seeds), the
    # cross-fade leaves a bump (~2-3 with 4 shared frames, ~1.5 with 8; ~1.2 for the full decode)
    assert blended < 3.0, blended
    assert hard_cut > 2 * blended, (hard_cut, blended)
    assert wide < 2.0, wide


def test_discriminator_scores_every_space_time_patch():
    discriminator = VideoDiscriminator(in_channels=3, base_channels=8)
    video = torch.randn(2, 8, 3, 32, 32)
    scores = discriminator(video)
    # T: 8 -(1)-> 8 -(2)-> 4 -(2)-> 2, then two stride-1 convs keep it; H, W: 32 -> 16 -> 8 -> 4 -> 3 -> 2
    assert scores.shape == (2, 1, 2, 2, 2)
    assert discriminator.score_shape(8, 32, 32) == (2, 2, 2)
    assert torch.equal(discriminator(video.transpose(1, 2), layout="bcthw"), scores)
    assert discriminator(torch.randn(1, 1, 3, 32, 32)).shape == (1, 1, *discriminator.score_shape(1, 32, 32))

    ones = torch.ones(4)
    assert hinge_d_loss(2 * ones, -2 * ones) == 0 and hinge_d_loss(-ones, ones) == 2
    assert hinge_g_loss(3 * ones) == -3


def test_objective_step_trains_temporal_decoder_only(vae):
    torch.manual_seed(0)
    model = TemporalDecoder.from_autoencoder(vae)
    discriminator = VideoDiscriminator(in_channels=1, base_channels=8, temporal_strides=(1, 2))
    objective = DecoderFinetuneObjective(model, discriminator, disc_start=1, disc_weight=0.5)
    spatial_before = {key: value.clone() for key, value in model.vae.state_dict().items()}
    temporal_before = {key: value.clone() for key, value in model.temporal.state_dict().items()}
    disc_before = {key: value.clone() for key, value in objective.discriminator.state_dict().items()}
    generator_optimiser = torch.optim.Adam(objective.trainable_parameters(), lr=1e-3)
    disc_optimiser = torch.optim.Adam(objective.discriminator_parameters(), lr=1e-3)

    real = torch.rand(1, 4, 1, PIXELS, PIXELS) * 2 - 1
    with torch.no_grad():
        latents = model.encode(real)
    loss, logs = objective.generator_loss(real, latents, step=0)
    assert "generator/adversarial" not in logs and logs["generator/disc_factor"] == 0  # warm-up
    loss, logs = objective.generator_loss(real, latents, step=1)
    assert logs["generator/adaptive_weight"] > 0 and torch.isfinite(loss)
    loss.backward()
    assert all(parameter.grad is None for parameter in objective.discriminator_parameters())
    generator_optimiser.step()

    assert not any(parameter.requires_grad for parameter in model.vae.parameters())
    assert all(torch.equal(value, spatial_before[key]) for key, value in model.vae.state_dict().items())
    assert any(not torch.equal(value, temporal_before[key]) for key, value in model.temporal.state_dict().items())

    disc_loss, disc_logs = objective.discriminator_loss(real, objective.last_reconstruction, step=1)
    assert disc_logs["discriminator/loss"] > 0
    disc_loss.backward()
    disc_optimiser.step()
    assert any(
        not torch.equal(value, disc_before[key]) for key, value in objective.discriminator.state_dict().items()
    )
    assert objective.discriminator_loss(real, objective.last_reconstruction, step=0)[0] == 0


@torch.no_grad()
def test_save_and_load_round_trip_is_exact(vae, tmp_path):
    model = randomise_temporal(TemporalDecoder.from_autoencoder(vae, kernel_size=(3, 1, 1), mid_attention=False))
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "diffusion_pytorch_model.safetensors")) == set(model.state_dict())
    loaded = TemporalDecoder.from_pretrained(tmp_path).eval()
    assert tuple(loaded.config.kernel_size) == (3, 1, 1) and not loaded.config.mid_attention
    assert loaded.config.autoencoder_config["block_out_channels"] == [32, 64]
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    latents = torch.randn(1, 3, 4, 8, 8)
    assert torch.equal(loaded.decode(latents), model.eval().decode(latents))

    image = loaded.image_autoencoder()
    assert type(image) is AutoencoderKL and not image.training
    assert image.state_dict().keys() == vae.state_dict().keys()
    assert all(torch.equal(image.state_dict()[key], value) for key, value in vae.state_dict().items())
    assert torch.equal(image_decode(image, latents), image_decode(vae, latents))


def test_gradient_checkpointing_gives_the_same_gradients(vae):
    model = randomise_temporal(TemporalDecoder.from_autoencoder(vae)).freeze_spatial().train()
    latents = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def temporal_grads() -> list[torch.Tensor]:
        loss = model.decode(latents).square().mean()
        return list(torch.autograd.grad(loss, list(model.temporal_parameters())))

    plain = temporal_grads()
    # the decoder's mid and up blocks are checkpointed whole: their recomputation runs the temporal
    # hooks in backward, after decode has cleared the frame context
    model.enable_gradient_checkpointing()
    checkpointed = temporal_grads()
    assert model.temporal.frame_context is None
    for expected, actual in zip(plain, checkpointed):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
