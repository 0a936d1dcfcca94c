"""The device mesh and the logical -> mesh axis rules: the only place that
names devices. Everything else names logical axes."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def make_mesh(mesh_shape: dict) -> jax.sharding.Mesh:
  """Builds a mesh over all devices from {'data': d, 'fsdp': f, 'tensor': t}.

  One entry may be -1 to take the remaining devices.
  """
  unknown = set(mesh_shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh: unknown axes {sorted(unknown)}; expected '
                     f'a subset of {MESH_AXES}')
  sizes = [int(mesh_shape.get(a, 1)) for a in MESH_AXES]
  n = jax.device_count()
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {mesh_shape}')
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if rest <= 0 or n % rest:
      raise ValueError(f'config.mesh: {dict(mesh_shape)} does not divide the '
                       f'{n} devices')
    sizes[sizes.index(-1)] = n // rest
  if any(s < 1 for s in sizes) or int(np.prod(sizes)) != n:
    raise ValueError(
        f'config.mesh: {dict(zip(MESH_AXES, sizes))} uses {int(np.prod(sizes))}'
        f' devices but there are {n}; the product of the axis sizes must equal'
        ' the device count')
  return jax.make_mesh(tuple(sizes), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules) -> tuple[tuple[str, object], ...]:
  """Config rules ([[logical, mesh_axis_or_list_or_None], ...]) -> tuples."""
  out = []
  for logical, mesh_axes in rules:
    if isinstance(mesh_axes, (list, tuple)):
      mesh_axes = tuple(mesh_axes)
    out.append((logical, mesh_axes))
  return tuple(out)


def batch_sharding(mesh, rules, ndim: int) -> NamedSharding:
  """Shards the leading (batch) dimension like the `batch` logical axis."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(boxed_params, mesh, rules):
  """NamedShardings for a boxed (logically partitioned) params tree."""
  specs = nn.get_partition_spec(boxed_params)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_batch_divisible(batch_size: int, mesh, field: str):
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % n:
    raise ValueError(f'{field}: batch size {batch_size} is not divisible by '
                     f'the data x fsdp mesh axes ({n})')
  if batch_size % jax.process_count():
    raise ValueError(f'{field}: batch size {batch_size} is not divisible by '
                     f'the process count ({jax.process_count()})')


def put_global_batch(batch: dict, mesh, rules) -> dict:
  """Places a host batch (the same global numpy batch on every process) on the
  mesh, each process contributing only the rows its devices hold."""
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, rules, x.ndim)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, batch)


def put_replicated(tree, mesh):
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def shardings_like_params(tree, abstract_params, param_shardings_, mesh):
  """Shardings for a tree (e.g. optimizer state) whose array leaves mirror
  params: a leaf whose key path ends with a param's path and has its shape
  takes that param's sharding; everything else (counts, scalars) is
  replicated. Works for any optax chain, masked or multi-transformed."""
  flat_p = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_s = jax.tree.leaves(param_shardings_,
                           is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  by_path = {tuple(_key_name(k) for k in path): (leaf.shape, s)
             for (path, leaf), s in zip(flat_p, flat_s)}
  repl = replicated(mesh)

  def pick(path, leaf):
    keys = tuple(_key_name(k) for k in path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and tuple(hit[0]) == tuple(np.shape(leaf)):
        return hit[1]
    return repl

  return jax.tree_util.tree_map_with_path(pick, tree)
