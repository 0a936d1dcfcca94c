"""The name -> builder registry of methods (see mgtil_jax/methods/__init__)."""

from __future__ import annotations

from mgtil_jax.methods import base

METHODS: dict = {}   # name -> build(method_kwargs) -> base.Method
PAPERS: dict = {}    # name -> one line: the paper and what is implemented


def register(name: str, *, paper: str = ''):
  """Decorator: registers `build(kw) -> Method` under `name`."""
  def wrap(build):
    if name in METHODS:
      raise ValueError(f'method {name!r} registered twice')
    METHODS[name] = build
    PAPERS[name] = paper
    return build
  return wrap


def get_method(name: str, method_kwargs=None) -> base.Method:
  """The method `name` built for these kwargs (its ablation overrides
  applied); bad values raise naming config.method / config.method_kwargs."""
  if name not in METHODS:
    raise ValueError(f'config.method: unknown method {name!r}; expected one '
                     f'of {sorted(METHODS)}')
  kw = method_kwargs if method_kwargs is not None else {}
  teacher = kw.get('teacher', 'previous') or 'previous'
  if teacher not in base.TEACHERS:
    raise ValueError(f'config.method_kwargs.teacher: expected one of '
                     f'{base.TEACHERS}, got {teacher!r}')
  from mgtil_jax.criteria import losses  # pylint: disable=g-import-not-at-top
  norm = kw.get('dfg_normalize', 'mean')
  if norm not in losses.DFG_NORMALIZE:
    raise ValueError(f'config.method_kwargs.dfg_normalize: expected one of '
                     f'{losses.DFG_NORMALIZE}, got {norm!r}')
  method = METHODS[name](kw)
  method.name = name
  method.kw = kw
  method.paper = method.paper or PAPERS[name]
  return method
