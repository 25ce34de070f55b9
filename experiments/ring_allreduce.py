"""Cost of a ring all-reduce: bytes counted from compiled HLO, the alpha-beta model, CPU times.

    python -m experiments.ring_allreduce [--quick] [--out experiments/results]

For p in {2, 4, 8} devices and N (bytes per device) from 1 MiB to 64 MiB, writes
ring_allreduce.md and ring_allreduce.png with

(a) the bytes each device sends in the ring and the bidirectional ring, counted from the
    collective-permute operations of the compiled HLO, next to the ring's 2(p−1)/p·N and to
    a naive all-to-one reduce, whose root receives (p−1)·N and sends (p−1)·N back;
(b) the alpha-beta model, t = (number of sequential messages)·α + (bytes on the busiest
    link direction)·β, with the stated α and β:
        ring            2(p−1)·α + 2(p−1)/p·N·β
        bidirectional   2(p−1)·α +  (p−1)/p·N·β   (each link direction carries half)
        naive           2(p−1)·α + 2(p−1)·N·β     (the root's link serialises everything);
(c) measured times of `lax.psum`, the ring and the bidirectional ring on fake CPU devices,
    which share this machine's cores and memory: indicative of this CPU only.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scripts.bench_collectives import METHODS, MiB, all_reduce_program, median_seconds  # noqa: E402

ALPHA_S = 1e-6  # per-message latency, assumed (of the order of an accelerator link)
LINK_BYTES_PER_S = 100e9  # per link direction, assumed; β = 1 / LINK_BYTES_PER_S
FULL = dict(device_counts=(2, 4, 8), sizes_mib=(1, 4, 16, 64), repeats=7)
QUICK = dict(device_counts=(2, 4), sizes_mib=(1 / 16,), repeats=1)
HLO_BYTES_PER_ELEMENT = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                         "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_PERMUTE = re.compile(r"= \(?(\w+)\[([\d,]*)\][^=]*? collective-permute(?:-start)?\(.*?"
                      r"source_target_pairs=\{(\{[\d,{}]*\})\}")


def collective_permute_bytes(hlo_text: str) -> int:
    """Bytes the busiest device sends, summed over the collective-permutes in `hlo_text`.

    Each collective-permute sends its operand (the shape printed for its result) from every
    source of its source_target_pairs. Loops would hide repetitions, so they are refused.
    """
    if re.search(r"\bwhile\(", hlo_text):
        raise ValueError("the HLO has a while loop: its collective-permutes cannot be counted")
    sent = {}
    for dtype, dims, pairs in _PERMUTE.findall(hlo_text):
        elements = int(np.prod([int(d) for d in dims.split(",") if d]))
        nbytes = HLO_BYTES_PER_ELEMENT[dtype] * elements
        for source in re.findall(r"\{(\d+),\d+\}", pairs):
            sent[source] = sent.get(source, 0) + nbytes
    return max(sent.values(), default=0)


def compiled_hlo(method: str, num_devices: int, nbytes: int) -> str:
    program, x = all_reduce_program(method, num_devices, nbytes)
    return program.lower(x).compile().as_text()


def model_seconds(method: str, p: int, nbytes: float) -> float:
    """Alpha-beta time of an all-reduce of `nbytes` per device on a ring of p devices."""
    beta = 1 / LINK_BYTES_PER_S
    link_bytes = {"ring": 2 * (p - 1) / p * nbytes, "ring_bidirectional": (p - 1) / p * nbytes,
                  "naive": 2 * (p - 1) * nbytes}[method]
    return 2 * (p - 1) * ALPHA_S + link_bytes * beta


def measure(device_counts, sizes_mib, repeats):
    """One row per (p, N): counted bytes of both rings and the median time of every method."""
    rows = []
    for p in device_counts:
        for size_mib in sizes_mib:
            nbytes = int(size_mib * MiB)
            compiled = {}
            for method in METHODS:
                program, x = all_reduce_program(method, p, nbytes)
                compiled[method] = (program.lower(x).compile(), x)
            seconds = median_seconds(compiled, repeats)
            rows.append(dict(
                p=p, nbytes=nbytes, seconds=seconds,
                ring_bytes=collective_permute_bytes(compiled["ring"][0].as_text()),
                bidirectional_bytes=collective_permute_bytes(
                    compiled["ring_bidirectional"][0].as_text())))
            print(f"p={p} N={size_mib:g} MiB " + " ".join(
                f"{m}={s * 1e3:.1f}ms" for m, s in seconds.items()), flush=True)
    return rows


def _mib(nbytes) -> str:
    return f"{nbytes / MiB:.4g}"


def write_table(rows, path: pathlib.Path):
    lines = [
        "# Ring all-reduce: bytes, alpha-beta model, measured times",
        "",
        "Written by `python -m experiments.ring_allreduce`. N is the buffer each device holds "
        "(float32); p the number of devices on the ring.",
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
    path.write_text("\n".join(lines) + "\n")


def plot(rows, path: pathlib.Path):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small cases, one repeat")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    rows = measure(**(QUICK if args.quick else FULL))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / "ring_allreduce.md")
    plot(rows, out / "ring_allreduce.png")


if __name__ == "__main__":
    main()
