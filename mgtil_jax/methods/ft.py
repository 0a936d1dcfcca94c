"""Continual fine-tuning: CE on each task in turn (docs/methods.md, Eq. CE)."""

from mgtil_jax.methods import base, registry


@registry.register('ft', paper='continual fine-tuning: CE on each task in '
                   'turn')
def build(kw):
  del kw
  return base.Method('ft')
