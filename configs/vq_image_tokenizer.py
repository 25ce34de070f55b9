"""A VQGAN image tokenizer (research/models/vq_image_tokenizer.py) trained on procedural images.

Variants:
- `tiny`: 32×32 RGB scenes of shapes → an 8×8 grid of 64 codes from 512; trains on a CPU in minutes.
- `chameleon`: the shape of Chameleon's published VQGAN (transformers' ChameleonVQVAEConfig defaults):
  512×512 → 32×32 = 1024 codes from 8192, base width 128, channel multipliers (1, 1, 2, 2, 4),
  two residual blocks a level, attention in the middle only, 256 latent channels and a 256-dim
  codebook. The procedural data are 32×32, so this variant describes the model (parameter count,
  conversion, ahead-of-time compiles) rather than a run on the bundled data.

`train.seq_len` is the number of codes an image becomes (h'·w'); the loop counts images as its
tokens. Pick a variant with `configs/vq_image_tokenizer.py:tiny` or `:variant=chameleon`.
"""

import ml_collections
from ml_collections import config_dict

from research.config import parse_arg

MODELS = {
    # name: (resolution, base_channels, channel_multiplier, num_res_blocks, latent_channels, embed_dim,
    #        num_embeddings, norm_groups)
    "tiny": (32, 32, (1, 2, 2), 1, 64, 32, 512, 8),
    "chameleon": (512, 128, (1, 1, 2, 2, 4), 2, 256, 256, 8192, 32),
}


def model_config(variant: str) -> ml_collections.ConfigDict:
    """The tokenizer's shape; `chameleon` is the published one."""
    if variant not in MODELS:
        raise ValueError(f"unknown vq_image_tokenizer variant {variant!r}; known: {sorted(MODELS)}")
    resolution, base, multipliers, blocks, latent, embed, codes, groups = MODELS[variant]
    return ml_collections.ConfigDict(dict(
        family="vq_image_tokenizer", resolution=resolution, in_channels=3, base_channels=base,
        channel_multiplier=multipliers, num_res_blocks=blocks, attn_resolutions=(), mid_attention=True,
        latent_channels=latent, embed_dim=embed, num_embeddings=codes, norm_groups=groups, beta=0.25,
        codebook_update="gradient",  # or "ema": moving averages instead of the codebook loss
        ema_decay=0.99, ema_epsilon=1e-5,
        dead_code_steps=20 if variant == "tiny" else 0,  # restart codes unused this many steps (0: never)
        dtype="float32" if variant == "tiny" else "bfloat16",
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny")
    tiny = args.variant == "tiny"
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.trainer = "image_tokenizer"
    config.halt_on_nan = True
    config.peak_flops = config_dict.placeholder(float)  # per device; None = known chip or measured
    config.model = model_config(args.variant)
    side = config.model.resolution // 2 ** (len(config.model.channel_multiplier) - 1)

    config.data = ml_collections.ConfigDict(dict(
        name="shape_scenes",  # or "digits" (research/data/scenes.py)
        data_dir=config_dict.placeholder(str),  # None = $RESEARCH_DATA_DIR or ~/.cache/research/data
    ))
    # "l1" (VQGAN's) or "l2", a mean over pixels. The scenes are mostly black background, where l1's
    # gradient keeps its size however small the error and pulls every reconstruction to black first.
    config.loss = ml_collections.ConfigDict(dict(reconstruction="l2" if tiny else "l1"))
    config.train = ml_collections.ConfigDict(dict(
        steps=400 if tiny else 500_000,
        batch_size=16 if tiny else 256,
        seq_len=side * side,  # codes per image
        log_every=20 if tiny else 100,
        eval_every=200 if tiny else 5000,
        eval_batches=4 if tiny else 20,
        checkpoint_every=200 if tiny else 5000,
        checkpoint_every_minutes=0.0 if tiny else 30.0,
        max_checkpoints=3,
        allow_config_change=False,
        allowed_changes=(),
        fresh_start=False,
        profile_steps=(),
    ))
    # Evaluators (research/train/trainers/image_tokenizer.py), each at its own cadence (0: only at the end):
    # "reconstruction": errors and codebook usage on the validation split; "grid": a PNG of originals
    # above their reconstructions in <workdir>/reconstructions/<step>.png.
    config.evals = ml_collections.ConfigDict(dict(
        reconstruction=dict(kind="reconstruction", every=config.train.get_ref("eval_every"),
                            batches=config.train.get_ref("eval_batches")),
        grid=dict(kind="grid", every=0, images=8),
    ))
    config.init_from = ml_collections.ConfigDict(dict(kind="none", path="", parts="params"))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2e-3 if tiny else 1e-4, b1=0.9, b2=0.99 if tiny else 0.95, eps=1e-8,
        weight_decay=0.0, decay_mask="matrices", grad_clip_norm=1.0,
        schedule="warmup_cosine", warmup_steps=20 if tiny else 5000, final_lr_fraction=0.1,
        mu_dtype=config_dict.placeholder(str),
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1, context=1))
    config.distributed = ml_collections.ConfigDict(dict(
        coordinator_address=config_dict.placeholder(str),
        num_processes=config_dict.placeholder(int),
        process_id=config_dict.placeholder(int),
    ))
    return config
