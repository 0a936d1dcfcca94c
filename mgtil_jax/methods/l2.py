"""l2 towards the previous weights (ZSCL, Zheng et al. 2023, Table 1);
docs/methods.md, Eq. L2."""

from mgtil_jax.methods import base, parts, registry


@registry.register('l2', paper='l2 towards the previous weights (ZSCL, Zheng '
                   'et al. 2023, Table 1)')
def build(kw):
  del kw
  return base.Method('l2', [parts.Pull('l2')])
