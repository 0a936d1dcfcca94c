"""Continual-learning methods selectable by `config.method`.

Each method says what the trainer must keep (an anchor copy of the previous
task's params) and what it adds to the task loss. The skeleton has the
reference points of the paper's comparison; PRIMED and the other baselines
plug in here.
"""

from __future__ import annotations

import dataclasses

from mgtil_jax import losses


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  trains: bool = True        # False: zero-shot, the model is never updated
  needs_anchor: bool = False  # keeps the params after the previous task


METHODS = {
    # The initial model evaluated on every task; the lower reference.
    'zeroshot': Method('zeroshot', trains=False),
    # Continual fine-tuning: CE on each task in turn, nothing against forgetting.
    'ft': Method('ft'),
    # l2 penalty towards the previous task's weights (the "l2" baseline of
    # ZSCL, Zheng et al. 2023, Table 1).
    'l2': Method('l2', needs_anchor=True),
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'config.method: unknown method {name!r}; expected one '
                     f'of {sorted(METHODS)}')
  return METHODS[name]


def regularizer(method: Method, params, anchor_params, method_cfg):
  """The method's additive loss term (a scalar; 0.0 for none)."""
  if method.name == 'l2':
    return method_cfg.l2_weight * losses.l2_to_anchor(params, anchor_params)
  return 0.0
