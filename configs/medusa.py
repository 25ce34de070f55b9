"""Medusa heads on a pretrained LLaMA-2 (Cai et al., 2024), trained by research/train/trainers/medusa.py.

    configs/medusa.py:tiny             Medusa-1: K = 4 heads on LLaMA-2 tiny, the backbone frozen
    configs/medusa.py:tiny,stage=2     Medusa-2: heads and backbone together, the backbone at a smaller rate
    configs/medusa.py:7b,heads=5

The model is LLaMA-2's (configs/llama2.py) with `model.family = "medusa"` and `model.medusa`
(research/models/medusa.py). Start from a pretrained LM run's parameters:

    --config.init_from.kind=run --config.init_from.path=<the LM run's workdir>

(`init_from.into = "backbone"`: the run's LLaMA parameters become the backbone, the heads start fresh).

Arguments: `variant` (llama2's), `stage` (1 or 2), `heads` (K).
"""

import os

import ml_collections

from research.config import load_module, parse_arg

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny", stage=1, heads=4)
    config = LLAMA2.get_config(args.variant)
    config.trainer = "medusa"
    config.model.family = "medusa"
    config.model.medusa = ml_collections.ConfigDict(dict(num_heads=args.heads, shared_lm_head=False))
    # The objective (research/train/trainers/medusa.py): Σ_k head_decay^k · CE_k for the heads, plus the
    # LM loss in stage 2 with the heads' sum weighted by heads_weight (λ0) and the backbone's learning
    # rate scaled by backbone_lr_scale. heads_weight and backbone_lr_scale are this project's choices.
    config.medusa = ml_collections.ConfigDict(dict(stage=args.stage, head_decay=0.8, heads_weight=0.2,
                                                   backbone_lr_scale=0.1))
    config.init_from = ml_collections.ConfigDict(dict(kind="none", path="", parts="params", into="backbone"))
    # Each head's top-1 accuracy and loss on the validation split (the paper: .56/.32/.20/.15/.12 on Vicuna-7B).
    config.evals = ml_collections.ConfigDict(dict(
        heads=dict(kind="heads", every=config.train.get_ref("eval_every"), batches=config.train.get_ref("eval_batches")),
    ))
    return config
