"""A VQGAN image tokenizer (Esser et al., 2021; Chameleon's, Team 2024): pixels → a grid of codes → pixels.

    z_e = quant_conv(Encoder(x))            x [b, H, W, 3] in [-1, 1];  z_e [b, h', w', D], h' = H / 2^(L−1)
    k   = argmin_j ‖z_e − e_j‖²             the codes [b, h', w'], e the codebook [K, D]
    z_q = z_e + sg[e_k − z_e]               straight through: the forward value is e_k, the gradient
                                            of z_q flows to z_e unchanged
    x̂   = Decoder(post_quant_conv(z_q))
    L_vq = ‖sg[z_e] − e_k‖² + β‖z_e − sg[e_k]‖²   (means over every latent vector and channel)

The first term of L_vq (the codebook loss) moves the codes to the encoder outputs; with
`codebook_update = "ema"` it is dropped and the codebook instead follows exponential moving averages
(van den Oord et al., 2017, App. A.1), in the variable collection `CODEBOOK_STATS`:

    N_j ← γ N_j + (1 − γ) n_j,   S_j ← γ S_j + (1 − γ) Σ_{i: k_i = j} z_e,i,
    e_j = S_j / Ñ_j,   Ñ_j = (N_j + ε) / (Σ N + K ε) · Σ N       (Laplace smoothing keeps Ñ_j > 0)

with n_j the batch's count of code j. N starts at 1 and S at the initial codebook, so a code never
chosen keeps its value until γ^t ≈ ε. The collection also counts, per code, the steps since the code
was last chosen; with `dead_code_steps > 0` a code unused for that many steps is restarted at an
encoder output of the batch drawn at random (its EMA statistics reset to that vector, count 1).
`update_codebook` does both after each optimizer step; the trainer threads the collection through its
state. Metrics of a batch: usage (the fraction of codes chosen at least once) and perplexity
exp(−Σ p_j log p_j), p_j = n_j / Σ n (K when every code is used equally, 1 when one code is).

Architecture (the VQGAN layout of taming-transformers and transformers' `ChameleonVQVAE`): L levels of
`num_res_blocks` residual blocks (GroupNorm, SiLU, 3×3 conv, twice; a 1×1 `nin_shortcut` when the width
changes), an attention block after each block of a level whose resolution is in `attn_resolutions`, a
stride-2 3×3 downsampling conv (input padded by one row and column at the bottom and right) between
levels; a middle of block, attention (`mid_attention`), block; GroupNorm, SiLU, 3×3 conv to
`latent_channels`. The decoder mirrors it with `num_res_blocks + 1` blocks a level and nearest-neighbour
2× upsampling followed by a 3×3 conv. Norms (ε = 1e-6) and attention softmax in float32.

Parameter tree (flax ↔ the PyTorch `state_dict` of transformers' `ChameleonVQVAE`, whose
`model.vqmodel.*` holds the encoder half; the decoder follows the original checkpoint's taming names).
A flax conv `kernel` [kh, kw, in, out] is the PyTorch `weight` [out, in, kh, kw] transposed (2, 3, 1, 0);
a GroupNorm `scale` is `weight`; every `bias` is `bias`:

    encoder/conv_in                                encoder.conv_in
    encoder/down_{i}/block_{j}/{norm1,conv1,norm2,conv2,nin_shortcut}
                                                   encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}
    encoder/down_{i}/attn_{j}/{norm,q,k,v,proj_out}  encoder.down.{i}.attn.{j}.{norm,q,k,v,proj_out}
    encoder/down_{i}/downsample/conv               encoder.down.{i}.downsample.conv
    encoder/mid/{block_1,attn_1,block_2}           encoder.mid.{block_1,attn_1,block_2}
    encoder/{norm_out,conv_out}                    encoder.{norm_out,conv_out}
    quant_conv, post_quant_conv                    quant_conv, post_quant_conv
    quantize/embedding [K, D]                      quantize.embedding.weight [K, D] (no transpose)
    decoder/conv_in, decoder/mid/..., decoder/{norm_out,conv_out}   decoder.conv_in, decoder.mid..., ...
    decoder/up_{i}/block_{j}, up_{i}/attn_{j}, up_{i}/upsample/conv  decoder.up.{i}.block.{j}, ... (level i
                                                   at resolution H / 2^i, as in taming: up_0 is the finest)

Config (`config.model`, family "vq_image_tokenizer"): resolution, in_channels, base_channels,
channel_multiplier, num_res_blocks, attn_resolutions, mid_attention, latent_channels, embed_dim,
num_embeddings, norm_groups, beta, codebook_update ("gradient" | "ema"), ema_decay, ema_epsilon,
dead_code_steps, dtype. transformers' ChameleonVQVAEConfig names the same fields alike, except
`mid_attention` (its `attn_type == "vanilla"`) and `norm_groups` (fixed at 32 there).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.family import ModelFamily, require

CODEBOOK_STATS = "codebook_stats"  # the variable collection of the codebook's statistics
CODEBOOK_UPDATES = ("gradient", "ema")
NORM_EPS = 1e-6


def latent_side(config) -> int:
    """h' = w' = resolution / 2^(levels − 1): the side of the code grid."""
    return config.resolution // 2 ** (len(config.channel_multiplier) - 1)


def check_pixels(pixels, config) -> None:
    """ValueError naming the shape of `pixels` unless it is [batch, resolution, resolution, in_channels]."""
    expected = (config.resolution, config.resolution, config.in_channels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"pixels of shape {tuple(pixels.shape)}: the model takes [batch, {expected[0]}, "
                         f"{expected[1]}, {expected[2]}] images (model.resolution, model.in_channels)")


def check_codes(codes, config) -> None:
    """ValueError naming the shape of `codes` unless it is [batch, h', w']."""
    side = latent_side(config)
    if codes.ndim != 3 or tuple(codes.shape[1:]) != (side, side):
        raise ValueError(f"codes of shape {tuple(codes.shape)}: the model decodes [batch, {side}, {side}] codes")


def group_norm(x, groups: int, name: str):
    """GroupNorm (ε = 1e-6) computed in float32, returned in the input's dtype."""
    return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, dtype=jnp.float32, name=name)(x).astype(x.dtype)


def conv(features: int, kernel: int, dtype, name: str, **kwargs) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), dtype=dtype, param_dtype=jnp.float32, name=name, **kwargs)


class ResnetBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through a 1×1 conv when the width changes."""

    features: int
    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        h = conv(self.features, 3, self.dtype, "conv1")(nn.silu(group_norm(x, self.groups, "norm1")))
        h = conv(self.features, 3, self.dtype, "conv2")(nn.silu(group_norm(h, self.groups, "norm2")))
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, self.dtype, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """x + proj_out(softmax(q kᵀ / √C) v) over the h·w positions, q, k, v 1×1 convs of norm(x)."""

    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        normed = group_norm(x, self.groups, "norm")
        q, k, v = (conv(c, 1, self.dtype, name)(normed).reshape(b, h * w, c) for name in ("q", "k", "v"))
        scores = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * c**-0.5
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        attended = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
        return x + conv(c, 1, self.dtype, "proj_out")(attended)


class Downsample(nn.Module):
    """Halves the resolution: pad one row and column at the bottom and right, 3×3 conv of stride 2."""

    dtype: str

    @nn.compact
    def __call__(self, x):
        return conv(x.shape[-1], 3, self.dtype, "conv", strides=(2, 2), padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour 2×, then a 3×3 conv."""

    dtype: str

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(x.shape[-1], 3, self.dtype, "conv")(x)


class Level(nn.Module):
    """One resolution: `blocks` residual blocks of width `features`, each followed by an attention
    block when `attention`, then a `Downsample` or `Upsample` (`resample`: "down", "up" or "")."""

    features: int
    blocks: int
    attention: bool
    resample: str
    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        for j in range(self.blocks):
            x = ResnetBlock(self.features, self.groups, self.dtype, name=f"block_{j}")(x)
            if self.attention:
                x = AttnBlock(self.groups, self.dtype, name=f"attn_{j}")(x)
        if self.resample == "down":
            x = Downsample(self.dtype, name="downsample")(x)
        elif self.resample == "up":
            x = Upsample(self.dtype, name="upsample")(x)
        return x


class Middle(nn.Module):
    """block_1, attention (when `attention`), block_2 at the lowest resolution."""

    attention: bool
    groups: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock(x.shape[-1], self.groups, self.dtype, name="block_1")(x)
        if self.attention:
            x = AttnBlock(self.groups, self.dtype, name="attn_1")(x)
        return ResnetBlock(x.shape[-1], self.groups, self.dtype, name="block_2")(x)


class Encoder(nn.Module):
    """Pixels [b, H, W, C] → latents [b, h', w', latent_channels]."""

    config: dict

    @nn.compact
    def __call__(self, x):
        c, dtype = self.config, self.config.dtype
        levels = len(c.channel_multiplier)
        x = conv(c.base_channels, 3, dtype, "conv_in")(x.astype(dtype))
        for i, multiplier in enumerate(c.channel_multiplier):
            x = Level(c.base_channels * multiplier, c.num_res_blocks, c.resolution // 2**i in c.attn_resolutions,
                      "down" if i < levels - 1 else "", c.norm_groups, dtype, name=f"down_{i}")(x)
        x = Middle(c.mid_attention, c.norm_groups, dtype, name="mid")(x)
        return conv(c.latent_channels, 3, dtype, "conv_out")(nn.silu(group_norm(x, c.norm_groups, "norm_out")))


class Decoder(nn.Module):
    """Latents [b, h', w', latent_channels] → pixels [b, H, W, C] (float32)."""

    config: dict

    @nn.compact
    def __call__(self, z):
        c, dtype = self.config, self.config.dtype
        x = conv(c.base_channels * c.channel_multiplier[-1], 3, dtype, "conv_in")(z.astype(dtype))
        x = Middle(c.mid_attention, c.norm_groups, dtype, name="mid")(x)
        for i in reversed(range(len(c.channel_multiplier))):
            x = Level(c.base_channels * c.channel_multiplier[i], c.num_res_blocks + 1,
                      c.resolution // 2**i in c.attn_resolutions, "up" if i > 0 else "", c.norm_groups, dtype,
                      name=f"up_{i}")(x)
        x = conv(c.in_channels, 3, dtype, "conv_out")(nn.silu(group_norm(x, c.norm_groups, "norm_out")))
        return x.astype(jnp.float32)


def nearest_codes(latents, embedding):
    """argmin_j ‖z − e_j‖² = argmin_j (‖e_j‖² − 2 z·e_j) for each vector z of `latents` [..., D]; float32."""
    latents, embedding = latents.astype(jnp.float32), embedding.astype(jnp.float32)
    distances = jnp.sum(embedding**2, axis=-1) - 2 * jnp.einsum("...d,kd->...k", latents, embedding)
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def quantize(latents, embedding, beta: float, *, codebook_loss: bool = True):
    """(z_q with straight-through gradients, codes, L_vq) of `latents` [..., D] against `embedding` [K, D].

    L_vq = mean(sg[z_e] − e_k)² (left out when not `codebook_loss`: an EMA codebook) + β·mean(z_e − sg[e_k])².
    """
    latents = latents.astype(jnp.float32)
    codes = nearest_codes(latents, embedding)
    chosen = jnp.take(embedding, codes, axis=0)
    commitment = jnp.mean((latents - jax.lax.stop_gradient(chosen)) ** 2)
    loss = beta * commitment
    if codebook_loss:
        loss = loss + jnp.mean((jax.lax.stop_gradient(latents) - chosen) ** 2)
    return latents + jax.lax.stop_gradient(chosen - latents), codes, loss


class VectorQuantizer(nn.Module):
    """The codebook `embedding` [K, D], uniform in [−1/K, 1/K), and its statistics in `CODEBOOK_STATS`:
    `unused_steps` [K] (zeros) and, for an EMA codebook, `ema_count` [K] (ones) and `ema_sum` [K, D]
    (the codebook). The forward pass reads none of them; they are made when the collection is mutable
    (`init`, or `apply(..., mutable=[CODEBOOK_STATS])`: the statistics to start from for given parameters)."""

    config: dict

    def setup(self):
        c = self.config
        k = c.num_embeddings
        self.embedding = self.param(
            "embedding", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1.0 / k, 1.0 / k),
            (k, c.embed_dim))
        if self.is_mutable_collection(CODEBOOK_STATS):
            self.variable(CODEBOOK_STATS, "unused_steps", jnp.zeros, (k,), jnp.int32)
            if c.codebook_update == "ema":
                self.variable(CODEBOOK_STATS, "ema_count", jnp.ones, (k,), jnp.float32)
                self.variable(CODEBOOK_STATS, "ema_sum", lambda: self.embedding)

    def __call__(self, latents):
        return quantize(latents, self.embedding, self.config.beta,
                        codebook_loss=self.config.codebook_update == "gradient")

    def lookup(self, codes):
        return jnp.take(self.embedding, codes, axis=0)


class VQImageTokenizer(nn.Module):
    """`__call__(pixels) -> {"reconstruction", "codes", "latents", "vq_loss"}`; `encode(pixels) -> codes`,
    `decode(codes) -> pixels` (flax methods: `model.apply(variables, x, method="encode")`)."""

    config: dict

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.quant_conv = conv(c.embed_dim, 1, c.dtype, "quant_conv")
        self.quantize = VectorQuantizer(c)
        self.post_quant_conv = conv(c.latent_channels, 1, c.dtype, "post_quant_conv")
        self.decoder = Decoder(c)

    def __call__(self, pixels):
        check_pixels(pixels, self.config)
        latents = self.quant_conv(self.encoder(pixels)).astype(jnp.float32)
        quantized, codes, vq_loss = self.quantize(latents)
        reconstruction = self.decoder(self.post_quant_conv(quantized.astype(self.config.dtype)))
        return {"reconstruction": reconstruction, "codes": codes, "latents": latents, "vq_loss": vq_loss}

    def encode(self, pixels):
        check_pixels(pixels, self.config)
        return self.quantize(self.quant_conv(self.encoder(pixels)))[1]

    def decode(self, codes):
        check_codes(codes, self.config)
        quantized = self.quantize.lookup(codes)
        return self.decoder(self.post_quant_conv(quantized.astype(self.config.dtype)))


def code_counts(codes, num_embeddings: int):
    """n_j: how often each code occurs in `codes` (any shape), float32 [K]."""
    return jnp.zeros((num_embeddings,), jnp.float32).at[codes.reshape(-1)].add(1.0)


def codebook_metrics(counts) -> dict:
    """{"codebook_usage": the fraction of codes with n_j > 0, "perplexity": exp(−Σ p_j log p_j)}, p = n / Σ n."""
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def ema_statistics(count, total, latents, codes, decay: float):
    """(N, S) ← (γ N + (1 − γ) n, γ S + (1 − γ) Σ_{i: k_i = j} z_i) for `latents` [..., D] and their `codes`."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    batch_sums = jnp.zeros_like(total).at[codes.reshape(-1)].add(flat)
    return (decay * count + (1 - decay) * code_counts(codes, count.shape[0]),
            decay * total + (1 - decay) * batch_sums)


def ema_codebook(count, total, epsilon: float):
    """e_j = S_j / Ñ_j with Ñ_j = (N_j + ε) / (Σ N + K ε) · Σ N (Laplace-smoothed counts)."""
    n = jnp.sum(count)
    smoothed = (count + epsilon) / (n + count.shape[0] * epsilon) * n
    return total / smoothed[:, None]


def restart_dead_codes(embedding, unused_steps, latents, rng, after_steps: int):
    """(codebook, unused_steps, dead): codes unused for `after_steps` steps or more (`dead` [K]) replaced by
    encoder outputs drawn uniformly from `latents` [..., D], their counters reset; the others unchanged."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(embedding.dtype)
    dead = unused_steps >= after_steps
    replacements = flat[jax.random.randint(rng, (embedding.shape[0],), 0, flat.shape[0])]
    return (jnp.where(dead[:, None], replacements, embedding), jnp.where(dead, 0, unused_steps), dead)


def update_codebook(model_config, params, stats, latents, codes, rng):
    """(params, stats) after a step whose encoder outputs were `latents` [b, h', w', D] with `codes`:
    the steps-unused counters, then for an EMA codebook the moving averages and the codebook they give,
    then (with `dead_code_steps`) the restart of dead codes. `stats` is the `CODEBOOK_STATS` collection."""
    c, old = model_config, stats["quantize"]
    embedding = params["quantize"]["embedding"]
    unused = jnp.where(code_counts(codes, c.num_embeddings) > 0, 0, old["unused_steps"] + 1)
    new = {}
    if c.codebook_update == "ema":
        new["ema_count"], new["ema_sum"] = ema_statistics(old["ema_count"], old["ema_sum"], latents, codes,
                                                          c.ema_decay)
        embedding = ema_codebook(new["ema_count"], new["ema_sum"], c.ema_epsilon)
    if c.dead_code_steps:
        embedding, unused, dead = restart_dead_codes(embedding, unused, latents, rng, c.dead_code_steps)
        if c.codebook_update == "ema":
            new["ema_count"] = jnp.where(dead, 1.0, new["ema_count"])
            new["ema_sum"] = jnp.where(dead[:, None], embedding, new["ema_sum"])
    params = {**params, "quantize": {**params["quantize"], "embedding": embedding}}
    return params, {**stats, "quantize": {**new, "unused_steps": unused}}


def init_key(rng):
    """An `rbg` key (XLA's RngBitGenerator) drawn from `rng`, for `init`: a threefry key's hash compiles once
    for each of the model's ~100 parameters, which made most of a tiny run's start on a CPU."""
    return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def encode(model_config, params, pixels):
    """The codes [b, h', w'] of `pixels` [b, H, W, C] in [-1, 1]; ValueError naming a wrong image shape."""
    return VQImageTokenizer(model_config).apply({"params": params}, pixels, method="encode")


def decode(model_config, params, codes):
    """Pixels [b, H, W, C] in [-1, 1] (clipped) of `codes` [b, h', w']; ValueError naming a wrong grid shape."""
    return jnp.clip(VQImageTokenizer(model_config).apply({"params": params}, codes, method="decode"), -1.0, 1.0)


def validate(config) -> None:
    """The model's fields: sizes positive, the resolution halving evenly to the code grid, widths divisible
    by `norm_groups`, attention only at resolutions the model has, the codebook's update rule."""
    m = config.model
    for field in ("resolution", "in_channels", "base_channels", "num_res_blocks", "latent_channels", "embed_dim",
                  "num_embeddings", "norm_groups"):
        require(m[field] > 0, f"model.{field}", f"must be positive, got {m[field]}")
    require(len(m.channel_multiplier) > 0 and min(m.channel_multiplier) > 0, "model.channel_multiplier",
            f"must be a non-empty tuple of positive ints, got {m.channel_multiplier}")
    halvings = len(m.channel_multiplier) - 1
    require(m.resolution % 2**halvings == 0, "model.resolution",
            f"{m.resolution} does not halve {halvings} times (len(model.channel_multiplier) - 1) evenly")
    for width in [m.base_channels * k for k in m.channel_multiplier] + [m.latent_channels]:
        require(width % m.norm_groups == 0, "model.norm_groups",
                f"{m.norm_groups} groups do not divide a width of {width} channels")
    resolutions = [m.resolution // 2**i for i in range(halvings + 1)]
    require(set(m.attn_resolutions) <= set(resolutions), "model.attn_resolutions",
            f"{m.attn_resolutions} holds resolutions the model does not have; it has {resolutions}")
    require(m.codebook_update in CODEBOOK_UPDATES, "model.codebook_update",
            f"{m.codebook_update!r} is not one of {CODEBOOK_UPDATES}")
    require(0 < m.ema_decay < 1, "model.ema_decay", f"must be in (0, 1), got {m.ema_decay}")
    require(m.ema_epsilon > 0, "model.ema_epsilon", f"must be positive, got {m.ema_epsilon}")
    require(m.beta >= 0, "model.beta", f"must be >= 0, got {m.beta}")
    require(m.dead_code_steps >= 0, "model.dead_code_steps", f"must be >= 0 (0 = never restart), got {m.dead_code_steps}")
    try:
        jnp.dtype(m.dtype)
    except TypeError:
        raise ValueError(f"config field model.dtype: {m.dtype!r} is not a dtype") from None


def init_pixels(model_config) -> tuple:
    """What `VQImageTokenizer.init` traces: one image."""
    return (jax.ShapeDtypeStruct((1, model_config.resolution, model_config.resolution, model_config.in_channels),
                                 jnp.float32),)


FAMILY = ModelFamily(build=lambda model_config, mesh: VQImageTokenizer(model_config), init_inputs=init_pixels,
                     validate=validate)
