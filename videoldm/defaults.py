"""Defaults and bounds shared by the library, the command line and the web UI, each written once.

Torch-free: the command line builds its options from these before it imports any network code.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- sampling
# A pipeline's own number of denoising steps (model_index.json's ``default_num_inference_steps``): the
# fewest its makers measured at full quality. Pipelines that do not say get the usual 25.
DEFAULT_NUM_INFERENCE_STEPS = 25
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DECODERS = ("video", "image")

# ----------------------------------------------------------------------------- key frames and rollouts
DEFAULT_NUM_FRAMES = 16
DEFAULT_WINDOW_FRAMES = 16  # the clip length the shipped models' temporal layers were trained on
DEFAULT_CONTEXT_FRAMES = 2  # S = 2 in the paper
DEFAULT_GUIDANCE_SCALE = 2.0  # the command line's and web UI's label/prompt guidance
# Every frame of a video is denoised jointly, in one batch: memory grows linearly with the frame
# count (quadratically inside temporal attention). Longer videos are the prediction model's
# autoregressive rollout, not one bigger batch.
MAX_FRAMES = 1024
# Prediction models keep only a window in memory, so length is bounded by time, not memory.
MAX_ROLLOUT_FRAMES = 100_000
MAX_CONTEXT_FRAMES = 8
MAX_WINDOW_CANDIDATES = 16

# ----------------------------------------------------------------------------- interpolation
INTERPOLATION_FACTOR = 4  # frames per key-frame gap after one pass (the paper's T -> 4T)
PASSES_PER_FACTOR = {4: 1, 16: 2}
FPS_MULTIPLIERS = (1, *sorted(PASSES_PER_FACTOR))
DEFAULT_WINDOW_KEY_FRAMES = 5  # key frames per window: 17 frames, the shipped model's training windows
# Guidance over the key frames: measured better than 1 and 4 (docs/results/interpolation.md).
DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE = 2.0

# ----------------------------------------------------------------------------- upsampling
UPSCALE_FACTORS = (1, 4)
DEFAULT_NOISE_LEVEL = 20  # Stable Diffusion's x4 upscaler default; small: the input is already a clean video
DEFAULT_MAX_NOISE_LEVEL = 350  # Stable Diffusion's x4 upscaler: levels 0..350 of a 1000-step DDPM schedule
DEFAULT_UPSAMPLER_STEPS = 10  # as good as 20 on held-out digits (docs/results/upsampling.md)
DEFAULT_UPSAMPLER_WINDOW_FRAMES = 16
DEFAULT_UPSAMPLER_WINDOW_OVERLAP = 4

# ----------------------------------------------------------------------------- inflation
TEMPORAL_KINDS = ("conv", "attention")

# ----------------------------------------------------------------------------- requests
# Inference steps are a subset of the training timesteps; 1000 is the usual DDPM count.
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
DEFAULT_FPS = 8.0
MAX_FPS = 1000.0
