"""Cost of a ring all-reduce: bytes counted from compiled HLO, the alpha-beta model, CPU times.

    python -m experiments run ring_allreduce [--quick]

For p in {2, 4, 8} devices and N (bytes per device) from 1 MiB to 64 MiB:

(a) the bytes each device sends in the ring and the bidirectional ring, counted from the
    collective-permute operations of the compiled HLO (research/tools/hlo_collectives.py; the rings
    of research/parallel/collectives.py are unrolled, so every step is one instruction), next to
    the ring's 2(p−1)/p·N and to a naive all-to-one reduce, whose root receives (p−1)·N and sends
    (p−1)·N back;
(b) the alpha-beta model, t = (number of sequential messages)·α + (bytes on the busiest
    link direction)·β, with the stated α and β:
        ring            2(p−1)·α + 2(p−1)/p·N·β
        bidirectional   2(p−1)·α +  (p−1)/p·N·β   (each link direction carries half)
        naive           2(p−1)·α + 2(p−1)·N·β     (the root's link serialises everything);
(c) measured times of `lax.psum`, the ring and the bidirectional ring on fake CPU devices,
    which share this machine's cores and memory: indicative of this CPU only, and not headline
    numbers (they change from run to run).

Devices: p = 8 needs eight. This module asks XLA for 8 fake CPU devices when it is imported
(unless XLA_FLAGS already names a device count), which counts if jax has not started its backend
yet: `python -m experiments run ring_allreduce` and `run --all` (the gallery imports every
experiment before it runs any) get them, the tests have them from tests/conftest.py, and `run`
names the flag when the devices are too few. The other experiments run on jax.devices()[:1], the
first of the eight, and are unaffected. Nothing here is random: the seed changes nothing, the
bytes are exact counts.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict  # noqa: E402
from research.tools.hlo_collectives import collective_bytes  # noqa: E402
from scripts.bench_collectives import METHODS, MiB, all_reduce_program, median_seconds  # noqa: E402

ALPHA_S = 1e-6  # per-message latency, assumed (of the order of an accelerator link)
LINK_BYTES_PER_S = 100e9  # per link direction, assumed; β = 1 / LINK_BYTES_PER_S
FULL = dict(device_counts=(2, 4, 8), sizes_mib=(1, 4, 16, 64), repeats=7)
QUICK = dict(device_counts=(2, 4), sizes_mib=(1 / 16,), repeats=1)

EXPERIMENT = Experiment(
    name="ring_allreduce",
    title="Ring all-reduce: bytes from HLO, the alpha-beta model, CPU times (Horovod §3 in numbers)",
    paper="Horovod (Sergeev & Del Balso, 2018), the ring-allreduce of Patarasuk & Yuan (2009)",
    arxiv="1802.05799", reproduces="§3 (ring-allreduce)",
    claims=(Claim("bytes", "a ring all-reduce sends 2(p−1)/p·N per device: a reduce-scatter, then an all-gather, "
                           "in one direction of the ring or both"),
            Claim("optimal", "the bytes per device stay below 2N however many devices share the ring, while a "
                             "naive all-to-one reduce's root sends (p−1)·N")),
    full_scale="research.parallel.collectives.ring_all_reduce over the fsdp axis of a v5p-8 (4 chips on real ICI "
                "links; the LLaMA-2 7B row of experiments/results/pod_fit.md)",
    cpu_minutes=3,  # estimated: 36 compiles and 7 timed rounds of up to 64 MiB per device, not timed yet
    paper_numbers={"ring_bytes_per_n": "2(p−1)/p = 1.75 at p = 8", "naive_over_ring": "p/2 = 4 at p = 8"},
)


def compiled_hlo(method: str, num_devices: int, nbytes: int) -> str:
    program, x = all_reduce_program(method, num_devices, nbytes)
    return program.lower(x).compile().as_text()


def permute_bytes(compiled) -> int:
    """Bytes each device sends in the collective-permutes of a compiled program."""
    return int(collective_bytes(compiled.as_text())["collective-permute"])


def model_seconds(method: str, p: int, nbytes: float) -> float:
    """Alpha-beta time of an all-reduce of `nbytes` per device on a ring of p devices."""
    beta = 1 / LINK_BYTES_PER_S
    link_bytes = {"ring": 2 * (p - 1) / p * nbytes, "ring_bidirectional": (p - 1) / p * nbytes,
                  "naive": 2 * (p - 1) * nbytes}[method]
    return 2 * (p - 1) * ALPHA_S + link_bytes * beta


def checked_device_counts(device_counts) -> tuple:
    """`device_counts`, or ValueError when jax has fewer devices than the largest (module docstring)."""
    available = len(jax.devices())
    if max(device_counts) > available:
        raise ValueError(f"ring_allreduce needs {max(device_counts)} devices, jax has {available}: start Python with "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=8 (this module sets it when it is "
                         "imported before jax starts its backend)")
    return tuple(device_counts)


def measure(device_counts, sizes_mib, repeats):
    """One row per (p, N): counted bytes of both rings and the median time of every method."""
    rows = []
    for p in checked_device_counts(device_counts):
        for size_mib in sizes_mib:
            nbytes = int(size_mib * MiB)
            compiled = {}
            for method in METHODS:
                program, x = all_reduce_program(method, p, nbytes)
                compiled[method] = (program.lower(x).compile(), x)
            seconds = median_seconds(compiled, repeats)
            rows.append(dict(p=p, nbytes=nbytes, seconds=seconds, ring_bytes=permute_bytes(compiled["ring"][0]),
                             bidirectional_bytes=permute_bytes(compiled["ring_bidirectional"][0])))
    return rows


def _mib(nbytes) -> str:
    return f"{nbytes / MiB:.4g}"


def table_markdown(rows) -> str:
    lines = [
        "N is the buffer each device holds (float32); p the number of devices on the ring.",
        "",
        "## (a) Bytes each device sends (MiB)",
        "",
        "Ring columns are counted from HLO: the collective-permute operations of the compiled "
        "program (result shape × sources). The naive all-to-one reduce is its root: it "
        "receives (p−1)·N and sends (p−1)·N back.",
        "",
        "| p | N | ring, counted from HLO | bidirectional, counted from HLO | 2(p−1)/p·N "
        "| naive root sends (p−1)·N |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, n = r["p"], r["nbytes"]
        cells = [p, _mib(n), _mib(r["ring_bytes"]), _mib(r["bidirectional_bytes"]),
                 _mib(2 * (p - 1) / p * n), _mib((p - 1) * n)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        "## (b) Alpha-beta model and (c) measured times (ms)",
        "",
        f"Model with α = {ALPHA_S * 1e6:g} µs per message and β = {1e9 / LINK_BYTES_PER_S:g} "
        f"ns/byte (a link of {LINK_BYTES_PER_S / 1e9:g} GB/s per direction), assumed values "
        "of the order of an accelerator interconnect, not measured: ring 2(p−1)α + "
        "2(p−1)/p·Nβ, bidirectional 2(p−1)α + (p−1)/p·Nβ, naive 2(p−1)α + 2(p−1)·Nβ.",
        "",
        "Measured: median wall time on fake CPU devices that share this machine's cores and "
        "memory, indicative of this CPU only (not of any interconnect).",
        "",
        "| p | N (MiB) | model ring | model bidirectional | model naive | psum, measured "
        "| ring, measured | bidirectional, measured | ring/psum | bidirectional/psum |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, n, s = r["p"], r["nbytes"], r["seconds"]
        model = [f"{model_seconds(m, p, n) * 1e3:.3f}"
                 for m in ("ring", "ring_bidirectional", "naive")]
        measured = [f"{s[m] * 1e3:.1f}" for m in ("psum", "ring", "ring_bidirectional")]
        ratios = [f"{s[m] / s['psum']:.2f}" for m in ("ring", "ring_bidirectional")]
        lines.append("| " + " | ".join([str(p), _mib(n), *model, *measured, *ratios]) + " |")
    return "\n".join(lines)


def plot(rows, path: Path):
    device_counts = sorted({r["p"] for r in rows})
    num_panels = 1 + len(device_counts)
    fig, axes = plt.subplots(1, num_panels, figsize=(4.2 * num_panels, 3.8))
    bytes_axis = axes[0]
    for p in device_counts:
        mine = [r for r in rows if r["p"] == p]
        sizes = np.array([r["nbytes"] for r in mine]) / MiB
        (line,) = bytes_axis.plot(sizes, [r["ring_bytes"] / MiB for r in mine], "o",
                                  label=f"ring, HLO, p={p}")
        bytes_axis.plot(sizes, 2 * (p - 1) / p * sizes, "-", color=line.get_color(),
                        label=f"2(p−1)/p·N, p={p}")
        bytes_axis.plot(sizes, (p - 1) * sizes, ":", color=line.get_color(),
                        label=f"naive root, p={p}")
    bytes_axis.set(xscale="log", yscale="log", xlabel="N per device (MiB)",
                   ylabel="MiB sent per device", title="(a) bytes sent")
    bytes_axis.legend(fontsize=6)
    for axis, p in zip(axes[1:], device_counts):
        mine = [r for r in rows if r["p"] == p]
        sizes = np.array([r["nbytes"] for r in mine]) / MiB
        for method in METHODS:
            axis.plot(sizes, [r["seconds"][method] * 1e3 for r in mine], "o-",
                      label=f"{method}, measured")
        axis.set(xscale="log", yscale="log", xlabel="N per device (MiB)", ylabel="ms",
                 title=f"(c) this CPU only, p={p}")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def csv_row(r) -> dict:
    p, n = r["p"], r["nbytes"]
    return {"p": p, "nbytes": n, "ring_bytes": r["ring_bytes"], "bidirectional_bytes": r["bidirectional_bytes"],
            "ring_formula_bytes": 2 * (p - 1) / p * n, "naive_root_bytes": (p - 1) * n,
            **{f"model_{m}_s": model_seconds(m, p, n) for m in ("ring", "ring_bidirectional", "naive")},
            **{f"measured_{m}_s": s for m, s in r["seconds"].items()}}


def headline_numbers(rows) -> dict:
    """Largest relative gap between the counted bytes and 2(p−1)/p·N for each ring; at the largest p and N,
    the ring's bytes over N and the naive root's (p−1)·N over the ring's bytes."""
    def error(key):
        return max(abs(r[key] / (2 * (r["p"] - 1) / r["p"] * r["nbytes"]) - 1) for r in rows)
    last = max(rows, key=lambda r: (r["p"], r["nbytes"]))
    return {"ring_bytes_error": error("ring_bytes"), "bidirectional_bytes_error": error("bidirectional_bytes"),
            "ring_bytes_per_n": last["ring_bytes"] / last["nbytes"],
            "naive_over_ring": (last["p"] - 1) * last["nbytes"] / last["ring_bytes"], "largest_p": last["p"]}


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Counts, models and times the all-reduces (nothing is random: `seed` changes nothing)."""
    rows = measure(**(QUICK if quick else FULL))
    plot(rows, out_dir / "ring_allreduce.png")
    return Outcome(headline=headline_numbers(rows), rows=[csv_row(r) for r in rows], markdown=table_markdown(rows),
                   plots=(out_dir / "ring_allreduce.png",))


def judge(headline: dict) -> dict:
    """Bytes: both rings' counts equal 2(p−1)/p·N exactly (holds), one of them (in part), neither. Optimal:
    the ring's bytes at the largest p are below 2N and below the naive root's (p−1)·N."""
    errors = [headline[key].mean for key in ("ring_bytes_error", "bidirectional_bytes_error")]
    exact = sum(e < 1e-9 for e in errors)
    bytes_verdict = Verdict((DOES_NOT_HOLD, HOLDS_IN_PART, HOLDS)[exact],
                            f"largest gap between the HLO count and 2(p−1)/p·N: ring {errors[0]:.2%}, "
                            f"bidirectional {errors[1]:.2%}")
    p, per_n, naive = headline["largest_p"].mean, headline["ring_bytes_per_n"].mean, headline["naive_over_ring"].mean
    below = (per_n < 2) + (naive > 1)
    optimal_verdict = Verdict((DOES_NOT_HOLD, HOLDS_IN_PART, HOLDS)[below],
                              f"at p = {p:.0f} the ring sends {per_n:.3g}·N per device (2(p−1)/p = "
                              f"{2 * (p - 1) / p:.3g}); the naive root sends {naive:.3g}× as much")
    return {"bytes": bytes_verdict, "optimal": optimal_verdict}
