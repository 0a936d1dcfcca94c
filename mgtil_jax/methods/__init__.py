"""Continual-learning methods, one module per method, registered by name
(as the dataset readers are): `get_method(config.method,
config.method_kwargs)` builds the method's parts (docs/methods.md).

A method module calls `register(name, paper=...)` on a builder
`build(method_kwargs) -> Method`; importing this package imports every
module in it, so a new method is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from mgtil_jax.methods.base import Method, Part, StepContext, teacher_params  # noqa: F401
from mgtil_jax.methods.registry import METHODS, PAPERS, get_method, register  # noqa: F401

# Methods run by `launch.py --compare=all`, in the paper's table order.
COMPARISON = ('zeroshot', 'ft', 'l2', 'ewc', 'lwf', 'icarl', 'wiseft', 'zscl',
              'snd', 'gift', 'moe_adapters', 'diki', 'primed_uni', 'primed',
              'single_task', 'joint')

_SHARED = ('base', 'parts', 'registry', 'adapter')
for _info in pkgutil.iter_modules(__path__):
  if _info.name not in _SHARED:
    importlib.import_module(f'{__name__}.{_info.name}')


def state_trees(method: Method, method_kwargs=None) -> tuple[str, ...]:
  """Param-shaped trees the train state keeps besides params and opt."""
  return method.state_trees(method_kwargs)
