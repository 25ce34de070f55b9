"""What an experiment says about itself, in one place, for the gallery (`python -m experiments`).

Every module experiments/NAME.py that reproduces a paper's table or figure defines

    EXPERIMENT = Experiment(...)                       # the paper, the table, the claims, the full scale
    def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome
    def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]   # one Verdict per Claim.key

`run` writes its plots (PNG) into `out_dir` and returns the headline numbers, the table rows and a
markdown body; `quick=True` is the reduced version the tests run (well under two minutes on two
cores). The gallery runs `run` once per seed, reports each headline number as mean ± std over the
seeds and asks `judge` for the verdict on each claim from those estimates.
"""

import dataclasses
from pathlib import Path

HOLDS = "holds"
HOLDS_IN_PART = "holds in part"
DOES_NOT_HOLD = "does not hold here"
STATUSES = (HOLDS, HOLDS_IN_PART, DOES_NOT_HOLD)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the paper that the experiment checks; `key` names it in `judge`'s answer."""
    key: str
    text: str


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The gallery's entry: `reproduces` is the table or figure ("Table 27/28", "Fig. 7");
    `paper_numbers` maps headline keys to the paper's values shown beside ours; `full_scale` is the
    config and pod slice that would run it for real; `cpu_minutes` the measured time of the full
    (not quick) run on a 2-core CPU."""
    name: str
    title: str
    paper: str
    arxiv: str
    reproduces: str
    claims: tuple[Claim, ...]
    full_scale: str
    cpu_minutes: float
    paper_numbers: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One seed's result: headline numbers (name → float), table rows (dicts with the same keys,
    written as CSV), a markdown body (tables, notes) and the PNG files written into out_dir."""
    headline: dict
    rows: list
    markdown: str
    plots: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A headline number over seeds: mean, standard deviation (0 for one seed), and the seeds' values."""
    mean: float
    std: float
    values: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict on one claim (one of STATUSES) with the reason in words and numbers."""
    status: str
    reason: str

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Verdict.status must be one of {STATUSES}, got {self.status!r}")
