"""Chameleon's stability recipe (Chameleon Team, 2024, arXiv 2405.09818, Fig. 5 and Fig. 6b) in shape, on tiny
early-fusion decoders, and what the tiny model learns of captioning, drawing and grounding.

One VQ tokenizer (configs/vq_image_tokenizer.py:tiny, `tokenizer_steps` steps through the shared loop) turns
the shape scenes into image tokens; the interleaved caption / draw / boxes documents of
research/data/interleaved.py then train four decoders of configs/chameleon.py:tiny's shape with the same
data order and seed at an aggressive learning rate (`AGGRESSIVE_LR`, 10× the tiny recipe's):

    baseline          no QK-Norm, no z-loss, pre-norm                    (plain LLaMA)
    qk_norm           QK-Norm
    qk_norm+z_loss    QK-Norm, z-loss 1e-5·log²Z                         (Chameleon-7B's recipe)
    34b_recipe        QK-Norm, z-loss, norm reordering (swin_norm)       (Chameleon-34B's recipe)

Each step logs the NLL, log²Z (`z_loss`), the mean norm of the final normed hidden state (`output_norm`,
Fig. 5a's "output norm") and of the logits. An arm diverges at the first step whose loss is not finite or
exceeds `DIVERGENCE_FACTOR` × the lowest loss before it (after warm-up); its run stops there. The 7B-recipe
arm is then asked to caption, draw and ground the first `images` validation scenes
(research/train/chameleon_evaluators.py): caption object accuracy (colour and shape named), drawing object
accuracy (the VQ decoder's pixels judged by the generator's own rules, beside the same judge on the scenes'
own tokens) and grounding COCO mAP. Plots: loss, output norm and log²Z against step per arm
(chameleon_stability.png), and the scenes above the 7B-recipe arm's drawings (generated_images.png).
"""

import math
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
from matplotlib.figure import Figure

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
from research import config as config_lib
from research.data.interleaved import interleaved_documents, make_interleaved_batches
from research.models import make_model
from research.models.chameleon import Z_LOSS_WEIGHT
from research.optim import make_optimizer, make_schedule
from research.train import chameleon_evaluators
from research.train.loop import train
from research.train.trainers.chameleon import ImageData, make_train_step
from research.train.trainers.lm import make_init_state, model_tokenizer

ARMS = {  # name: (qk_norm, z_loss_weight, swin_norm)
    "baseline": (False, 0.0, False),
    "qk_norm": (True, 0.0, False),
    "qk_norm+z_loss": (True, Z_LOSS_WEIGHT, False),
    "34b_recipe": (True, Z_LOSS_WEIGHT, True),
}
TASK_ARM = "qk_norm+z_loss"
AGGRESSIVE_LR = 3e-2
DIVERGENCE_FACTOR = 1.5
CAPTION_CHANCE = 1 / 24  # a (colour, shape) pair guessed among 8 colours × 3 shapes
FULL = dict(tokenizer_steps=400, steps=150, batch_size=8, train_images=1024, images=32, max_new_tokens=80)
QUICK = dict(tokenizer_steps=3, steps=12, batch_size=4, train_images=256, images=2, max_new_tokens=8)

EXPERIMENT = Experiment(
    name="chameleon_stability",
    title="Early fusion at an aggressive learning rate: QK-Norm, z-loss and norm reordering",
    paper="Chameleon: Mixed-Modal Early-Fusion Foundation Models (Chameleon Team, 2024)",
    arxiv="2405.09818",
    reproduces="Fig. 5 (output-norm growth; 7B with and without QK-Norm) and Fig. 6b (34B norm reordering), in shape",
    claims=(
        Claim("qk_norm", "Without QK-Norm the early-fusion decoder diverges; with it, it trains (Fig. 5b)."),
        Claim("output_norm", "Uncontrolled output-norm growth goes with the divergence (Fig. 5a)."),
        Claim("z_loss", "The z-loss keeps the softmax normaliser log Z from drifting (§2.3)."),
        Claim("norm_reordering", "Norm reordering (the 34B's recipe) trains at least as stably as the 7B's (Fig. 6b)."),
        Claim("tasks", "One early-fusion decoder learns image→text, text→image and image→boxes from interleaved "
                       "documents."),
    ),
    full_scale="configs/chameleon.py:7b and :34b (trainer 'chameleon' for the z-loss), 4M-token batches; "
               "the AOT table fits them on v5p-8 and v5p-16 (experiments/results/pod_fit.md)",
    cpu_minutes=7.6,  # the tokenizer 3.3 (400 steps) + the arms and tasks 4.3, CPU time on the 2-core machine
    paper_numbers={"baseline_diverged": 1.0, "qk_norm+z_loss_diverged": 0.0},
)


def base_config(tokenizer_workdir: str, scale: dict, seed: int, *overrides):
    pairs = {"seed": seed, "data.image_tokenizer_workdir": tokenizer_workdir, "train.steps": scale["steps"],
             "train.batch_size": scale["batch_size"], "data.train_images": scale["train_images"],
             "optimizer.warmup_steps": max(scale["steps"] // 10, 1), "evals.captions.images": scale["images"],
             "evals.grounding.images": scale["images"], "evals.drawing.images": scale["images"],
             "evals.captions.max_new_tokens": scale["max_new_tokens"],
             "evals.grounding.max_new_tokens": scale["max_new_tokens"]}
    return config_lib.load("configs/chameleon.py:tiny", [f"{k}={v}" for k, v in pairs.items()] + list(overrides))


def train_tokenizer(workdir: Path, scale: dict, seed: int) -> dict:
    """Trains the tiny VQ tokenizer in `workdir`; its final reconstruction metrics."""
    overrides = [f"seed={seed}", f"train.steps={scale['tokenizer_steps']}", "evals.grid.images=4",
                 f"optimizer.warmup_steps={min(20, scale['tokenizer_steps'] // 2)}",
                 f"train.checkpoint_every={scale['tokenizer_steps']}"]
    results = train(config_lib.load("configs/vq_image_tokenizer.py:tiny", overrides), str(workdir),
                    devices=jax.devices()[:1])
    return {"vq_l1": results["reconstruction_l1"], "vq_mse": results["reconstruction_mse"],
            "vq_codebook_usage": results["reconstruction_codebook_usage"],
            "vq_perplexity": results["reconstruction_perplexity"]}


def divergence_step(losses: list[float], warmup: int) -> int | None:
    """The first step (1-based) after `warmup` whose loss is not finite or above DIVERGENCE_FACTOR × the lowest before it."""
    lowest = math.inf
    for step, loss in enumerate(losses, start=1):
        if not math.isfinite(loss) or (step > warmup and loss > DIVERGENCE_FACTOR * lowest):
            return step
        lowest = min(lowest, loss)
    return None


def train_arm(config, documents, steps: int) -> tuple[dict, object]:
    """Per-step curves of one arm (stopping at its divergence) and its final parameters."""
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, steps)
    step_fn = jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, steps), 1))
    key = jax.random.key(config.seed)
    state = nn.meta.unbox(jax.jit(make_init_state(model, optimizer, config.train.seq_len))(jax.random.fold_in(key, 0)))
    batches = make_interleaved_batches(documents, batch_size=config.train.batch_size, seq_len=config.train.seq_len,
                                       seed=config.seed)
    curves = {name: [] for name in ("loss", "z_loss", "output_norm", "logit_norm")}
    for step in range(steps):
        state, metrics = step_fn(state, next(batches), jax.random.fold_in(jax.random.fold_in(key, 1), step))
        for name in curves:
            curves[name].append(float(metrics[name]))
        if divergence_step(curves["loss"], config.optimizer.warmup_steps) is not None:
            break
    return curves, (model, state.params)


def arm_summary(curves: dict, warmup: int) -> dict:
    diverged = divergence_step(curves["loss"], warmup)
    finite = [loss for loss in curves["loss"] if math.isfinite(loss)]
    return {"diverged": float(diverged is not None), "divergence_step": float(diverged or 0),
            "final_loss": curves["loss"][-1], "min_loss": min(finite) if finite else math.nan,
            "output_norm_growth": curves["output_norm"][-1] / curves["output_norm"][0],
            "final_z_loss": curves["z_loss"][-1], "max_logit_norm": max(curves["logit_norm"])}


def task_scores(config, model, params, data, out_dir: Path) -> dict:
    tokenizer = model_tokenizer(config)
    scores = {}
    for name in ("captions", "grounding", "drawing"):
        result = chameleon_evaluators.make(config.evals[name], model, tokenizer, data, out_dir).run(params)
        scores.update({f"{name}_{metric}": value for metric, value in result.items()
                       if isinstance(value, float)})
    return scores


def plot(curves: dict, path: Path) -> Path:
    figure = Figure(figsize=(15, 4))
    for axis, (name, label) in zip(figure.subplots(1, 3), (("loss", "training NLL"), ("output_norm", "output norm ‖h‖"),
                                                           ("z_loss", "log²Z"))):
        for arm, arm_curves in curves.items():
            axis.plot(range(1, len(arm_curves[name]) + 1), arm_curves[name], label=arm)
        axis.set_xlabel("step")
        axis.set_title(label)
        axis.set_yscale("log")
    figure.axes[0].legend()
    figure.suptitle(f"tiny early-fusion decoders at learning rate {AGGRESSIVE_LR:g}")
    figure.savefig(path, dpi=90, bbox_inches="tight")
    return path


def markdown(headline: dict, rows: list, scale: dict) -> str:
    lines = [f"Four tiny early-fusion decoders (configs/chameleon.py:tiny's shape) on interleaved scene documents, "
             f"{scale['steps']} steps of {scale['batch_size']} × 256 tokens at learning rate {AGGRESSIVE_LR:g}, the same "
             f"data order; divergence = loss non-finite or above {DIVERGENCE_FACTOR}× its lowest so far.", "",
             "| arm | diverged at step | final loss | lowest loss | output-norm growth | final log²Z | max logit norm |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        step = int(row["divergence_step"]) if row["diverged"] else "—"
        lines.append(f"| {row['arm']} | {step} | {row['final_loss']:.3f} | {row['min_loss']:.3f} | "
                     f"{row['output_norm_growth']:.2f}× | {row['final_z_loss']:.1f} | {row['max_logit_norm']:.2f} |")
    lines += ["", f"VQ tokenizer ({scale['tokenizer_steps']} steps): validation L1 {headline['vq_l1']:.4f}, MSE "
              f"{headline['vq_mse']:.4f}, codebook usage {headline['vq_codebook_usage']:.1%}, perplexity "
              f"{headline['vq_perplexity']:.0f} of 512 codes.", "",
              f"Tasks of the {TASK_ARM} arm on {scale['images']} validation scenes: caption object accuracy "
              f"{headline['captions_object_accuracy']:.1%} (exact {headline['captions_exact']:.1%}); drawing object "
              f"accuracy {headline['drawing_object_accuracy']:.1%} (exact {headline['drawing_exact']:.1%}; the judge "
              f"on the scenes' own tokens: {headline['drawing_reference_object_accuracy']:.1%}); grounding mAP "
              f"{headline['grounding_map']:.3f} (AP50 {headline['grounding_map50']:.3f})."]
    return "\n".join(lines)


def stability_outcome(out_dir: Path, tokenizer_workdir: str, tokenizer_metrics: dict, scale: dict,
                      seed: int) -> Outcome:
    """The four arms and the tasks on the images of the VQ tokenizer trained in `tokenizer_workdir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = base_config(tokenizer_workdir, scale, seed)
    data = ImageData(config)
    documents = interleaved_documents(data.records("train"), data.image_ids("train"), model_tokenizer(config),
                                      config.model, config.data.kinds)
    headline, curves, rows, task_model = dict(tokenizer_metrics), {}, [], None
    for arm, (qk_norm, z_weight, swin_norm) in ARMS.items():
        arm_config = base_config(tokenizer_workdir, scale, seed, f"model.qk_norm={qk_norm}",
                                 f"model.z_loss_weight={z_weight}", f"model.swin_norm={swin_norm}",
                                 f"optimizer.learning_rate={AGGRESSIVE_LR}")
        curves[arm], trained = train_arm(arm_config, documents, scale["steps"])
        summary = arm_summary(curves[arm], arm_config.optimizer.warmup_steps)
        rows.append({"arm": arm, **summary})
        headline.update({f"{arm}_{name}": value for name, value in summary.items()})
        if arm == TASK_ARM:
            task_model = (arm_config, *trained)
    headline.update(task_scores(*task_model, data, out_dir))
    plots = (plot(curves, out_dir / "chameleon_stability.png"), out_dir / chameleon_evaluators.GRID_FILE)
    return Outcome(headline=headline, rows=rows, markdown=markdown(headline, rows, scale), plots=plots)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    scale = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_metrics = train_tokenizer(Path(scratch) / "vq", scale, seed)
        return stability_outcome(out_dir, str(Path(scratch) / "vq"), tokenizer_metrics, scale, seed)


def judge(headline: dict) -> dict:
    value = {name: estimate.mean for name, estimate in headline.items()}
    diverged = {arm: value[f"{arm}_diverged"] > 0.5 for arm in ARMS}
    growth = {arm: value[f"{arm}_output_norm_growth"] for arm in ARMS}
    verdicts = {}
    if diverged["baseline"] and not diverged["qk_norm"]:
        verdicts["qk_norm"] = Verdict(HOLDS, f"the baseline diverged at step {value['baseline_divergence_step']:.0f}; "
                                             "the QK-Norm arm did not")
    elif not any(diverged.values()):
        verdicts["qk_norm"] = Verdict(DOES_NOT_HOLD, f"no arm diverged at this scale and learning rate {AGGRESSIVE_LR:g} "
                                      f"(final losses: baseline {value['baseline_final_loss']:.3f}, QK-Norm "
                                      f"{value['qk_norm_final_loss']:.3f})")
    else:
        verdicts["qk_norm"] = Verdict(DOES_NOT_HOLD, "divergence: " + ", ".join(
            f"{arm} {'yes' if d else 'no'}" for arm, d in diverged.items()))
    stable, unstable = [growth[a] for a in ARMS if not diverged[a]], [growth[a] for a in ARMS if diverged[a]]
    if unstable and stable:
        status = HOLDS if min(unstable) > max(stable) else HOLDS_IN_PART if max(unstable) > max(stable) else DOES_NOT_HOLD
        verdicts["output_norm"] = Verdict(status, f"output-norm growth of diverged arms {min(unstable):.2f}–"
                                                  f"{max(unstable):.2f}×, of stable arms up to {max(stable):.2f}×")
    else:
        verdicts["output_norm"] = Verdict(DOES_NOT_HOLD, "no contrast: " + ("every" if unstable else "no") +
                                          " arm diverged; output-norm growth " +
                                          ", ".join(f"{a} {g:.2f}×" for a, g in growth.items()))
    with_z, without_z = value["qk_norm+z_loss_final_z_loss"], value["qk_norm_final_z_loss"]
    status = HOLDS if with_z < 0.9 * without_z else HOLDS_IN_PART if with_z < without_z else DOES_NOT_HOLD
    verdicts["z_loss"] = Verdict(status, f"final log²Z {with_z:.1f} with the z-loss (weight {Z_LOSS_WEIGHT:g}) against "
                                         f"{without_z:.1f} without")
    recipe_34b, recipe_7b = value["34b_recipe_final_loss"], value["qk_norm+z_loss_final_loss"]
    if diverged["34b_recipe"]:
        verdicts["norm_reordering"] = Verdict(DOES_NOT_HOLD, f"the 34B recipe diverged at step "
                                                             f"{value['34b_recipe_divergence_step']:.0f}")
    else:
        status = HOLDS if recipe_34b <= recipe_7b * 1.02 else HOLDS_IN_PART
        verdicts["norm_reordering"] = Verdict(status, f"34B recipe stable, final loss {recipe_34b:.3f} against the 7B "
                                                      f"recipe's {recipe_7b:.3f}")
    above_chance = {"caption": value["captions_object_accuracy"] > 2 * CAPTION_CHANCE,
                    "drawing": value["drawing_object_accuracy"] > 2 * CAPTION_CHANCE,
                    "grounding": value["grounding_map50"] > 0.05}
    status = HOLDS if all(above_chance.values()) else HOLDS_IN_PART if any(above_chance.values()) else DOES_NOT_HOLD
    verdicts["tasks"] = Verdict(status, f"caption object accuracy {value['captions_object_accuracy']:.1%}, drawing "
                                        f"{value['drawing_object_accuracy']:.1%} (chance {CAPTION_CHANCE:.1%}), "
                                        f"grounding AP50 {value['grounding_map50']:.3f}")
    return verdicts
