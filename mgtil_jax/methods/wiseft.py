"""WiSE-FT, Wortsman et al. 2022: after each task, interpolate with the
weights before it (docs/methods.md, Eq. WiSE)."""

from mgtil_jax.methods import base, parts, registry


@registry.register('wiseft', paper='WiSE-FT, Wortsman et al. 2022: after each '
                   'task, interpolate with the weights before it')
def build(kw):
  del kw
  return base.Method('wiseft', [parts.Interpolate()])
