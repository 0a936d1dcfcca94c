"""Joint: multi-task training on all tasks at once; the upper bound."""

from mgtil_jax.methods import base, parts, registry


@registry.register('joint', paper='multi-task training on all tasks at once; '
                   'upper bound')
def build(kw):
  del kw
  return base.Method('joint', [parts.Joint()])
