"""LwF, Li & Hoiem 2017 (docs/methods.md, Eq. LwF)."""

from mgtil_jax.methods import base, parts, registry


@registry.register('lwf', paper="LwF, Li & Hoiem 2017: KD of the previous "
                   "model's logits on the new task's images over its class "
                   'prompts')
def build(kw):
  del kw
  return base.Method('lwf', [parts.LwF()])
