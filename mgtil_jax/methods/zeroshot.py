"""Zero-shot: the initial model on every task; the lower reference."""

from mgtil_jax.methods import base, registry


@registry.register('zeroshot', paper='the initial model on every task; the '
                   'lower reference')
def build(kw):
  del kw
  return base.Method('zeroshot', trains=False)
