"""Published configurations of the SD-1.5 and SD-2.1-base components, as plain dicts.

They let ``weights=random`` build the real architectures without any download (offline tests of the
full-size code path, GPU throughput measurements) and document exactly which architecture each hub id
names. Values are those of the ``config.json`` files in the hub repositories
``stable-diffusion-v1-5/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-2-1-base``
(keys at their diffusers/transformers defaults are omitted).
"""

from __future__ import annotations

import copy
from typing import Any

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD21 = "stabilityai/stable-diffusion-2-1-base"
#: The 768 px v-prediction SD-2.1 that DIFT uses: SD-2.1-base's architecture with 96 × 96 latents.
SD21_V = "stabilityai/stable-diffusion-2-1"
#: The removed original id of SD-1.5, still found in old configs (docs/protocol.md#p8-diffusers-api-drift).
SD15_LEGACY = "runwayml/stable-diffusion-v1-5"

#: The DDIM configuration DHF builds for inversion and generation, whatever the model's own scheduler
#: (docs/methods.md#ddim-inversion): 1000 steps, scaled-linear β 0.00085 → 0.012, ``steps_offset`` 0, "leading"
#: spacing, so 50 steps give 980, 960, …, 20, 0.
PAPER_DDIM_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

_UNET_COMMON: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    SD15: {
        "unet": {**_UNET_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768},
        "vae": dict(_VAE),
        # CLIP ViT-L/14 text tower
        "text_encoder": {
            "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
            "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
            "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        # facts of its CLIPTokenizer (pad is <|endoftext|>)
        "tokenizer": {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "model_max_length": 77},
    },
    SD21: {
        "unet": {**_UNET_COMMON, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                 "use_linear_projection": True},
        "vae": {**_VAE, "sample_size": 768},
        # OpenCLIP ViT-H/14 text tower (penultimate layer: 23 of its 24 layers)
        "text_encoder": {
            "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
            "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 512,
            "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        # SD-2.x pads with "!" (id 0)
        "tokenizer": {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0, "model_max_length": 77},
    },
}
ARCHITECTURES[SD15_LEGACY] = ARCHITECTURES[SD15]
ARCHITECTURES[SD21_V] = {**ARCHITECTURES[SD21], "unet": {**ARCHITECTURES[SD21]["unet"], "sample_size": 96}}


def architecture(model_id: str) -> dict[str, dict[str, Any]] | None:
    """A deep copy of the published component configs of ``model_id`` (None for an unknown id)."""
    arch = ARCHITECTURES.get(model_id)
    return copy.deepcopy(arch) if arch is not None else None
