"""One module per paper table or figure, run as `python -m experiments.NAME`; results in experiments/results/."""
