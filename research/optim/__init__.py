"""Adam and AdamW as optax GradientTransformations, learning-rate schedules, the run's optimizer."""

from research.optim.adam import adam, adamw, scale_by_adam
from research.optim.factory import make_optimizer
from research.optim.schedules import make_schedule

__all__ = ["adam", "adamw", "make_optimizer", "make_schedule", "scale_by_adam"]
