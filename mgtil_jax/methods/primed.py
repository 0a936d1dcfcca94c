"""PRIMED, Chen et al. 2025 (docs/methods.md, "PRIMED"): reference pairs
from the retrieval memory (Dynamic Siphon for `primed`, proportional
keywords for `primed_uni`), cross-modal KD (CKT, Eq. CKT) and contrastive
consistency (CMC, Eq. CMC) against the previous model, and the Dynamic
Fisher Weight Guard (Eq. DFG) whose weights are this step's squared
distillation gradient. `method_kwargs.regularizer` swaps DFG for l2 / EWC /
none (the paper's regulariser ablation)."""

from mgtil_jax.methods import base, ewc, parts, registry

REGULARIZERS = ('none', 'l2', 'ewc', 'dfg')


def regularizer_parts(kw, default='dfg'):
  reg = parts.check_choice('regularizer', kw.get('regularizer', '') or default,
                           REGULARIZERS)
  if reg == 'dfg':
    return [parts.DFG('distill')]
  if reg == 'l2':
    return [parts.Pull('l2')]
  if reg == 'ewc':
    return [parts.Pull('ewc'), ewc.TaskFisher()]
  return []


def build_primed(name, kw, default_reference):
  ref = parts.reference_kind(kw, default_reference)
  return base.Method(name, [
      parts.ReferenceBatches(ref), parts.ReferenceDistill(cmc=True),
      *regularizer_parts(kw), *parts.weight_ensemble(kw, 'off')],
      reference=ref)


@registry.register('primed', paper='PRIMED_dyn, Chen et al. 2025: retrieval '
                   'reference set with the Dynamic Siphon, CKT + CMC + DFG')
def build(kw):
  return build_primed('primed', kw, 'retrieval_dyn')


@registry.register('primed_uni', paper='PRIMED_uni: the same losses, '
                   'reference set retrieved proportionally over fixed domain '
                   'keywords')
def build_uni(kw):
  return build_primed('primed_uni', kw, 'retrieval_uni')
