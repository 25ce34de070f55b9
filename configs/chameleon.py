"""Chameleon (Chameleon Team, 2024): the early-fusion decoder over interleaved text and image tokens.

    configs/chameleon.py:tiny   (early fusion on interleaved scene documents, on a CPU in minutes)
    configs/chameleon.py:7b     (Chameleon-7B)
    configs/chameleon.py:34b    (Chameleon-34B, released as facebook/chameleon-30b)

The decoder is LLaMA-2's (configs/llama2.py, research/models/llama.py) with QK-Norm, residual
dropout, a z-loss and, for the 34B, Swin-style norm reordering (research/models/chameleon.py).

Shapes, from the published Hugging Face config.json files:
    7b   facebook/chameleon-7b: hidden 4096, 32 layers, 32 heads (MHA), intermediate 11008,
         vocab 65,536, context 4096, swin_norm false
    34b  facebook/chameleon-30b: hidden 8192, 48 layers, 64 heads, 8 K/V heads (the paper's
         Table 1 marks GQA for the 34B only), intermediate 22016 (Meta's rule for 8192),
         vocab 65,536, context 4096, swin_norm true
both with rms_norm_eps 1e-5 and rope_theta 10000. Vocabulary: the 8192 VQ codes are ids 4..8195,
begin-of-image "<racm3:break>" 8197, end-of-image "<eoss>" 8196, 1024 codes an image (512×512
pixels, 16× downsampled by the VQ tokenizer, `model.image_tokenizer` = configs/vq_image_tokenizer.py
:chameleon). `tiny` keeps that structure small: text ids 0..509 (the byte tokenizer uses 0..258),
begin 510, end 511, the 512 codes of the tiny VQ tokenizer at 512..1023, 64 codes an image (32×32
pixels, 4× downsampled).

Recipe (paper, §2.3 and Table 1): AdamW β .9/.95, ε 1e-5, lr 1e-4, 4000 warmup steps, weight
decay 0.1, gradient clipping 1.0, z-loss 1e-5, dropout 0.1 for the 7B and none for the 34B. The
paper decays the learning rate exponentially; research/optim has no exponential schedule, so the
full-size configs use warmup_cosine to 10%. The full-size data section is LLaMA-2's text pipeline (text-only
batches; its ids are not kept off the image codes). `tiny` trains with the early-fusion trainer
(research/train/trainers/chameleon.py: NLL + z-loss) on interleaved caption / draw / boxes documents of
the shape scenes, after the VQ tokenizer it names in `data.image_tokenizer_workdir` was trained:

    python -m research.run --config configs/vq_image_tokenizer.py:tiny --workdir workdir/vq_tiny
    python -m research.run --config configs/chameleon.py:tiny --workdir workdir/chameleon_tiny
"""

import os

import ml_collections
from ml_collections import config_dict

from research.config import load_module, parse_arg
from research.models.chameleon import Z_LOSS_WEIGHT

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))
VQ = load_module(os.path.join(os.path.dirname(__file__), "vq_image_tokenizer.py"))

LAYOUTS = {
    # name: (dim, layers, heads, kv_heads, hidden_dim, vocab, max_seq_len, swin_norm, dropout)
    "tiny": (128, 2, 4, 2, 256, 1024, 512, False, 0.0),
    "7b": (4096, 32, 32, 32, 11008, 65_536, 4096, False, 0.1),
    "34b": (8192, 48, 64, 8, 22016, 65_536, 4096, True, 0.0),
}
VOCABULARIES = {
    # name: (image_token_offset, begin_image_id, end_image_id, image tokenizer variant)
    "tiny": (512, 510, 511, "tiny"),
    "7b": (4, 8197, 8196, "chameleon"),
    "34b": (4, 8197, 8196, "chameleon"),
}


def model_config(variant: str) -> ml_collections.ConfigDict:
    """`config.model`: LLaMA-2's fields, the Chameleon switches and the vocabulary layout."""
    if variant not in LAYOUTS:
        raise ValueError(f"unknown chameleon variant {variant!r}; known: {sorted(LAYOUTS)}")
    dim, layers, heads, kv_heads, hidden, vocab, max_len, swin_norm, dropout = LAYOUTS[variant]
    offset, begin, end, tokenizer_variant = VOCABULARIES[variant]
    tokenizer = VQ.model_config(tokenizer_variant)
    grid_side = tokenizer.resolution // 2 ** (len(tokenizer.channel_multiplier) - 1)
    model = LLAMA2.model_config("tiny" if variant == "tiny" else "7b")
    model.update(dict(
        family="chameleon", dim=dim, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, hidden_dim=hidden,
        vocab_size=vocab, max_seq_len=max_len, qk_norm=True, swin_norm=swin_norm, dropout=dropout,
        z_loss_weight=Z_LOSS_WEIGHT, image_token_offset=offset, num_image_codes=tokenizer.num_embeddings,
        begin_image_id=begin, end_image_id=end, image_seq_len=grid_side**2, image_tokenizer=tokenizer,
    ))
    return model


def early_fusion_training(config: ml_collections.ConfigDict) -> None:
    """`tiny`'s trainer, data and evaluators: research/train/trainers/chameleon.py on the shape scenes as
    interleaved documents, their images tokenized by the VQ tokenizer that
    `python -m research.run --config configs/vq_image_tokenizer.py:tiny --workdir workdir/vq_tiny` trained."""
    config.trainer = "chameleon"
    config.data = ml_collections.ConfigDict(dict(
        name="shape_scenes", data_dir=config_dict.placeholder(str),
        image_tokenizer_workdir="workdir/vq_tiny",  # a vq_image_tokenizer run of model.image_tokenizer's shape
        train_images=2048,  # the first training scenes, each one document of every kind
        kinds=("caption", "draw", "boxes"),  # research/data/interleaved.py
        tokenizer="byte", vocab_size=265,  # text ids 0..264, below the markers (510, 511) and codes (512..)
    ))
    config.train.update(dict(seq_len=256, batch_size=16, steps=300, eval_every=150, eval_batches=4,
                             checkpoint_every=150, log_every=10))
    config.optimizer.update(dict(learning_rate=3e-3, warmup_steps=20))
    generation = dict(every=0, images=32, show=4)
    config.evals = ml_collections.ConfigDict(dict(
        eval=dict(kind="loss", every=config.train.get_ref("eval_every"), batches=config.train.get_ref("eval_batches")),
        captions=dict(kind="captions", max_new_tokens=80, **generation),
        grounding=dict(kind="grounding", max_new_tokens=64, **generation),
        drawing=dict(kind="drawing", every=0, images=16),
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny")
    tiny = args.variant == "tiny"
    model = model_config(args.variant)
    config = LLAMA2.get_config("tiny" if tiny else "7b")
    config.model = model
    config.data.vocab_size = config.model.get_ref("vocab_size")
    if tiny:
        early_fusion_training(config)
    else:
        config.train.seq_len = model.max_seq_len
        config.optimizer.update(dict(learning_rate=1e-4, warmup_steps=4000))
    return config
