"""A tiny random-weight Stable Diffusion pipeline folder for offline tests.

``make_tiny_sd(path)`` writes a complete diffusers pipeline folder — the same layout as
``stable-diffusion-v1-5/stable-diffusion-v1-5`` on the Hub (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) — with ``save_pretrained``, so tests load it through
exactly the code path that loads real weights (``--set sd.model=PATH``).

The UNet has SD's decoder structure (4 up blocks × 3 resnets, so all 12 DHF layers
``up_blocks[i].resnets[j]`` exist) and the VAE downsamples 8× (512 px → 64 × 64 latents), but the
channel counts are tiny: a 50-step inversion of a 512 px image takes a few seconds on a CPU, and a few
hundred milliseconds with ``image_size=64`` (8 × 8 latents). Channel counts differ between up blocks
(16, 12, 8, 4 with the defaults) so that tests notice a mixed-up layer order; read them from the
model, never hard-code SD's 1280/640/320.

The tokenizer is a real ``CLIPTokenizer`` built from a tiny vocabulary written at call time (CLIP's
``<|startoftext|>``/``<|endoftext|>`` plus a few words), so prompts go through the real
tokenizer → text encoder path. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

#: The paper's DDIM configuration (DHF builds this scheduler itself; see docs/methods.md#ddim-inversion).
PAPER_DDIM_CONFIG = {
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

#: Words of the tiny vocabulary (each becomes a whole-word token ``word</w>``).
TINY_WORDS = ("a", "cat", "dog", "bird", "photo", "of", "the", "in", "room", "full", "body", "sitting", "living",
              "ugly", "poorly", "drawn", ",", ".")


def _write_tiny_vocab(folder: Path, max_length: int) -> None:
    """vocab.json / merges.txt / tokenizer_config.json for a CLIP BPE tokenizer over ``TINY_WORDS``.

    Every single character of the words is in the vocabulary too (plain and word-final), so any prompt
    made of these letters tokenizes without unknown tokens; unknown characters map to ``<|endoftext|>``
    (CLIP's unk token).
    """
    chars = sorted({c for w in TINY_WORDS for c in w})
    tokens: list[str] = []
    tokens += chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        # merge left to right: ((c a) t</w>) → "cat</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges.append((a, b))
            pieces = [a + b] + pieces[2:]
            if pieces[0] not in tokens:
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    unique_merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in unique_merges),
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}), encoding="utf-8")


def make_tiny_sd(
    path: str | Path,
    *,
    seed: int = 0,
    cross_attention_dim: int = 8,
    block_out_channels: tuple[int, int, int, int] = (4, 8, 12, 16),
    layers_per_block: int = 2,
    norm_num_groups: int = 4,
    attention_head_dim: int = 2,
    only_cross_attention: bool = True,
    vae_channels: tuple[int, int, int, int] = (4, 4, 8, 8),
    text_layers: int = 2,
    max_length: int = 16,
    scaling_factor: float = 0.18215,
) -> Path:
    """Write a tiny random-weight SD pipeline folder at ``path`` and return ``path``.

    Args:
        path: folder to create (parents too); existing component folders are overwritten.
        seed: seeds every component's random initialisation (the same seed gives identical weights).
        cross_attention_dim: the UNet's cross-attention width, which is also the text encoder's hidden size.
        block_out_channels: UNet down-block widths, SD order (SD-1.5: 320, 640, 1280, 1280). The up blocks
            use them reversed, so up block ``i`` has ``block_out_channels[3 - i]`` channels.
        layers_per_block: resnets per down block; up blocks get one more (2 → 3 resnets, SD's structure).
        norm_num_groups: GroupNorm groups; must divide every UNet width.
        attention_head_dim: per-head width of the UNet's attention.
        only_cross_attention: replace the transformer blocks' self-attention by cross-attention (the
            default): self-attention over 64 × 64 latent tokens would take ~90 % of the tiny UNet's CPU
            time. Pass False for SD's exact transformer blocks (the decoder resnets are the same either way).
        vae_channels: VAE block widths; four blocks = three 2× downsamplings (512 px → 64 latents, as SD).
        text_layers: CLIP text-encoder layers.
        max_length: tokenizer ``model_max_length`` (SD: 77) = the text encoder's position count.
        scaling_factor: the VAE latent scale stored in ``vae/config.json`` (SD-1.x/2.x: 0.18215).

    The scheduler is DDIM with the paper's configuration (:data:`PAPER_DDIM_CONFIG`).
    """
    try:  # the save_pretrained calls below draw "Writing model shards" bars: noise in a test's output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _write_tiny_vocab(Path(tmp), max_length)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=layers_per_block,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            only_cross_attention=only_cross_attention,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            block_out_channels=tuple(vae_channels),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=2,
            sample_size=512,
            scaling_factor=scaling_factor,
        )
        torch.manual_seed(seed + 2)
        vocab = tokenizer.get_vocab()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_attention_heads=2,
            num_hidden_layers=text_layers,
            vocab_size=len(vocab),
            max_position_embeddings=max_length,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ))
    with warnings.catch_warnings():  # diffusers asks for steps_offset=1; 0 is DHF's setting
        warnings.simplefilter("ignore", FutureWarning)
        scheduler = DDIMScheduler(**PAPER_DDIM_CONFIG)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path
