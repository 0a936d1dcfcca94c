"""Entry points: the only modules that call into every layer.

  launch.py (repo root)   the command line
  entry.run               validate the whole config, then training.run
  entry/compare.py        several methods and seeds, one table
  entry/sweep.py          one method over a grid of config values
  entry/validation.py     the whole-config validation, calling each layer's
                          own checks
"""

from mgtil_jax import training
from mgtil_jax.entry import validation


def run(config, workdir: str) -> dict:
  """The whole experiment in `workdir`, its config checked first (one
  `UserError` naming the field); returns the results (results.json)."""
  validation.validate(config, workdir)
  return training.run(config, workdir)
