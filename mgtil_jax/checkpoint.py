"""orbax `CheckpointManager` wrapper: a train-state pytree plus a JSON record
of everything else needed to resume mid-sequence (task index, step, the
accuracy rows so far, ...). Saves are atomic (orbax writes to a temporary
directory and renames), so a crash at any moment leaves the last complete
checkpoint intact."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, keep: int = 2):
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        cleanup_tmp_directories=True, create=True)
    self._mgr = ocp.CheckpointManager(directory, options=options)

  def latest_step(self):
    return self._mgr.latest_step()

  def save(self, step: int, state, meta: dict):
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                   force=True)

  def restore(self, step: int, abstract_state):
    """abstract_state: ShapeDtypeStructs with shardings (restore targets)."""
    restored = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def wait(self):
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying `shardings`, as restore targets."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def load_latest_params(directory: str):
  """The params of the latest checkpoint in `directory`, as NumPy arrays on
  the host (for notebooks and tests; no mesh needed)."""
  mgr = ocp.CheckpointManager(directory, item_handlers={
      'state': ocp.StandardCheckpointHandler(),
      'meta': ocp.JsonCheckpointHandler()})
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory}: no checkpoint found')
  # Whatever mesh or process count saved it, read it onto this one device.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      mgr.item_metadata(step)['state'])
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  mgr.close()
  return jax.tree.map(np.asarray, restored['state']['params']), restored['meta']
