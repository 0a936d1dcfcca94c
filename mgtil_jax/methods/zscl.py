"""ZSCL, Zheng et al. 2023: feature-space KD on a reference set + l2 +
weight ensembling (docs/methods.md, Eqs. CKT, L2)."""

from mgtil_jax.methods import base, parts, registry


@registry.register('zscl', paper='ZSCL, Zheng et al. 2023: feature-space KD '
                   'on a reference set + l2 + weight ensembling')
def build(kw):
  ref = parts.reference_kind(kw, 'corpus')
  return base.Method('zscl', [
      parts.ReferenceBatches(ref), parts.ReferenceDistill(cmc=False),
      parts.Pull('l2'), *parts.weight_ensemble(kw, 'on')], reference=ref)
