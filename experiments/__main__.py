"""The gallery's command line (experiments/README.md):

    python -m experiments list
    python -m experiments run NAME [--quick] [--seeds N] [--out DIR] [--work DIR]
    python -m experiments run --all [--quick] [--seeds N] [--out DIR] [--work DIR]
    python -m experiments readme
"""

import argparse
import sys
from pathlib import Path

from experiments import gallery, gallery_readme, gallery_run

SCRATCH = Path("workdir/experiments")


def list_text(results: Path = gallery.RESULTS) -> str:
    """One block per experiment: name, paper and table, CPU time, and each claim with its last verdict."""
    blocks = []
    for module in gallery.all_experiments():
        experiment = module.EXPERIMENT
        report = gallery_readme.latest_report(experiment.name, results)
        lines = [f"{experiment.name}: {experiment.paper} (arXiv:{experiment.arxiv}), {experiment.reproduces}; "
                 f"about {experiment.cpu_minutes:g} min on 2 CPU cores"]
        lines += [f"  - {claim.text} [{gallery_readme.verdict_cell(report, claim.key)}]" for claim in experiment.claims]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every experiment with its claims and last verdicts")
    commands.add_parser("readme", help="regenerate experiments/README.md")
    run = commands.add_parser("run", help="run one experiment, or all of them in sequence")
    run.add_argument("name", nargs="?", help="the experiment (see `list`)")
    run.add_argument("--all", action="store_true", help="every experiment, resuming after a kill")
    run.add_argument("--quick", action="store_true", help="the reduced version (minutes at most)")
    run.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; headline numbers as mean ± std")
    run.add_argument("--out", type=Path, default=None,
                     help="where the report goes (default experiments/results; --quick: <work>/quick_results)")
    run.add_argument("--work", type=Path, default=SCRATCH, help="scratch space for runs and per-seed outcomes")
    args = parser.parse_args(argv)
    if args.command == "run" and bool(args.name) == args.all:
        parser.error("run takes one experiment name or --all")
    return args


def main(argv=None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        print(list_text())
        return
    if args.command == "readme":
        gallery_readme.README.write_text(gallery_readme.render())
        return
    out = args.out or (args.work / "quick_results" if args.quick else gallery.RESULTS)
    modules = gallery.all_experiments() if args.all else [gallery.load(args.name)]
    for module in modules:
        report = gallery_run.run_experiment(module, out=out, work=args.work, quick=args.quick, seeds=args.seeds,
                                            resume=args.all)
        verdicts = ", ".join(f"{key}: {v['status']}" for key, v in report["verdicts"].items())
        print(f"{module.EXPERIMENT.name}: {report['minutes']:.1f} min; {verdicts}; report in {out}", flush=True)
    if out == gallery.RESULTS:
        gallery_readme.README.write_text(gallery_readme.render())


if __name__ == "__main__":
    main()
