"""Roofline estimate of one chip's train step: compute, HBM and interconnect times side by side.

    t_compute = FLOPs / peak FLOP/s
    t_hbm     = HBM bytes accessed / HBM bandwidth
    t_ici     = bytes sent over ICI / ICI bandwidth out of the chip
    t         = max(t_compute, t_hbm)              collectives free (the estimate without ICI)
    t_ici_on  = max(t_compute, t_hbm, t_ici)       collectives overlapped with the rest
    MFU       = model FLOPs / (t · peak)

The bytes sent are research/tools/hlo_collectives.py's ring counts; the ICI bandwidth out of a
chip is half Google Cloud's bidirectional figure (a chip sends and receives at once). `max` assumes
XLA overlaps every collective with compute; where it cannot (a gather the next matmul waits for),
the step is slower, up to the sum of the three times. The bound that wins is the largest term.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Per-chip costs of one step and the chip's rates; `ici_bytes_per_s` NaN when unknown."""

    flops: float
    hbm_bytes: float
    ici_bytes: float
    model_flops: float
    peak_flops: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float

    @property
    def times(self) -> dict[str, float]:
        """{"compute", "HBM", "ICI"} seconds (ICI NaN when the chip's ICI bandwidth is unknown)."""
        return {"compute": self.flops / self.peak_flops, "HBM": self.hbm_bytes / self.hbm_bytes_per_s,
                "ICI": self.ici_bytes / self.ici_bytes_per_s}

    def seconds(self, *, with_ici: bool) -> float:
        """t (without ICI) or t_ici_on (with it; NaN when the ICI bandwidth is unknown)."""
        times = self.times
        if not with_ici:
            return max(times["compute"], times["HBM"])
        return math.nan if math.isnan(times["ICI"]) else max(times.values())

    def mfu(self, *, with_ici: bool) -> float:
        return self.model_flops / (self.seconds(with_ici=with_ici) * self.peak_flops)

    @property
    def bound(self) -> str:
        """The term that sets the step time: "compute", "HBM" or "ICI"."""
        times = {name: t for name, t in self.times.items() if not math.isnan(t)}
        return max(times, key=times.get)
