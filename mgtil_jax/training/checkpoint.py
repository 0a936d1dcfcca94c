"""orbax `CheckpointManager` wrapper: a train-state pytree plus a JSON record
of everything else needed to resume mid-sequence (task index, step, the
accuracy rows so far, ...). Saves are atomic (orbax writes to a temporary
directory and renames), so a crash at any moment leaves the last complete
checkpoint intact.

What a killed or broken run can leave behind is handled here:
* a step folder half-deleted by a kill during orbax's cleanup is removed
  when the directory is next opened;
* a latest checkpoint that cannot be read (truncated, corrupt) is moved to
  `<directory>_corrupt/` with a warning naming it, and the previous one is
  restored instead;
* a state with non-finite params is never saved (`DivergedError`), so the
  last good checkpoint stays;
* `finish_all()` lets saves still in flight finish (and closes the
  managers) before an error propagates, so the checkpoint is kept and
  orbax's shutdown noise never buries the error;
* a full disk is one line naming the checkpoint folder, and the failed
  save's temporary folder is removed;
* orbax's own failure modes (a save broken by a concurrent tfds import,
  noise from a failed restore's reads, a full disk logged once per thread)
  are worked around in `orbax_quirks.py`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mgtil_jax.core import hosts
from mgtil_jax.core.errors import UserError
from mgtil_jax.training import orbax_quirks

log = logging.getLogger(__name__)

# Files every complete step folder has (orbax 0.12 layout: the step's and
# each item's metadata; the state's OCDBT manifest).
_REQUIRED = ('_CHECKPOINT_METADATA', os.path.join('meta', 'metadata'),
             os.path.join('state', '_METADATA'))

_open: 'weakref.WeakSet[Checkpointer]' = weakref.WeakSet()


class DivergedError(UserError):
  """Training produced non-finite params or loss."""


def _step_dirs(directory: str) -> dict[int, str]:
  if not os.path.isdir(directory):
    return {}
  return {int(d): os.path.join(directory, d) for d in os.listdir(directory)
          if re.fullmatch(r'\d+', d)}


def _complete(path: str) -> bool:
  return all(os.path.exists(os.path.join(path, f)) for f in _REQUIRED)


def clean_stale(directory: str) -> list[int]:
  """Removes step folders left half-deleted (or half-written without
  orbax's temporary name) older than the newest complete step; returns
  their steps. A broken *newest* step is left to `restore`'s fallback."""
  steps = _step_dirs(directory)
  complete = [s for s, p in steps.items() if _complete(p)]
  if not complete:
    return []
  newest = max(complete)
  stale = sorted(s for s, p in steps.items()
                 if s < newest and not _complete(p))
  for s in stale:
    log.warning('removing the half-deleted checkpoint folder %s', steps[s])
    shutil.rmtree(steps[s], ignore_errors=True)
  return stale


def _all_finite(tree) -> bool:
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return True
  return bool(jax.device_get(_finite(leaves)))


@jax.jit
def _finite(leaves):
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def check_finite(metrics: dict, where: str):
  """Raises `DivergedError` if the loss of a logged step is not finite."""
  loss = metrics.get('loss') if hasattr(metrics, 'get') else None
  if loss is not None and not np.all(np.isfinite(np.asarray(loss))):
    raise DivergedError(
        f'training diverged at {where}: the loss is {float(np.asarray(loss))}'
        '; the last good checkpoint is kept. Lower the learning rate '
        '(config.train.lr) and start a new --workdir')


def _why(error: BaseException) -> str:
  """'Type: first line' of the innermost cause of a failed restore: orbax
  wraps tensorstore's error ('FAILED_PRECONDITION: Error reading "<array>"
  in OCDBT database at local file ...') in one that quotes the repr of a
  pybind11 bound method."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(' See full TensorStore details')[0]
  first = text.splitlines()[0] if text.strip() else ''
  return f'{type(error).__name__}: ' + (
      first if len(first) <= 300 else first[:300] + '...')


class Checkpointer:

  def __init__(self, directory: str, keep: int = 2):
    if not isinstance(keep, int) or keep < 1:
      raise UserError(f'config.checkpoint.keep: expected a positive integer, '
                      f'got {keep!r}')
    self.directory = directory
    if hosts.is_lead():
      clean_stale(directory)
    # Every process lists the steps after the cleaning (hosts.py).
    hosts.sync('checkpoint_clean')
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        cleanup_tmp_directories=True, create=True)
    self._mgr = ocp.CheckpointManager(directory, options=options)
    # orbax removes earlier runs' temporary folders in a thread it joins
    # only at the first save: a run refused before that (a bad checkpoint
    # to initialise from) left it running into interpreter shutdown, which
    # printed "cannot schedule new futures after interpreter shutdown" with
    # a traceback after the error line. Listing a folder: wait for it now.
    cleanup = getattr(self._mgr, '_maybe_await_cleanup_tmp_directory', None)
    if cleanup is not None:
      cleanup()
    self._closed = False
    _open.add(self)

  def latest_step(self):
    """Process 0's latest step, for every process: resuming on one process
    and starting afresh on another would part them (hosts.py)."""
    return hosts.lead_value('checkpoint_latest_step', self._mgr.latest_step())

  def save(self, step: int, state, meta: dict):
    if not _all_finite(state.get('params', state)):
      where = (f"task {meta['task'] + 1}, step {meta['step']}"
               if 'task' in meta else f"step {meta.get('step', step)}")
      last = self._mgr.latest_step()
      raise DivergedError(
          f'training diverged: the params are not finite at {where} '
          f'(checkpoint step {step}), so it was not saved; the last good '
          f'checkpoint is step {last} in {self.directory}. Lower the '
          'learning rate (config.train.lr) and start a new --workdir')
    with self._writing():
      self._mgr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                     force=True)

  @contextlib.contextmanager
  def _writing(self):
    """A full disk, met by this save or by an earlier one still in flight,
    as one line naming the checkpoint folder."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not orbax_quirks.disk_full(e):
        raise
      # The failed save's half-written folder goes now (orbax would remove
      # it on the next open): what it took is free for the run's last writes.
      if hosts.is_lead():
        for tmp in glob.glob(os.path.join(self.directory,
                                          '*.orbax-checkpoint-tmp*')):
          shutil.rmtree(tmp, ignore_errors=True)
      raise UserError(
          f'{self.directory}: cannot write the checkpoint: No space left on '
          'device; free some space (or pass a --workdir on a larger disk) '
          'and run the same command again') from None

  def _restore_step(self, step: int, abstract_state):
    restored = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore(self, step: int, abstract_state):
    """abstract_state: ShapeDtypeStructs with shardings (restore targets).

    If `step` cannot be read, falls back to the newest earlier step that
    can, moving the unreadable ones aside with a warning naming them; the
    returned meta says where the run stands."""
    failures = []
    candidates = [step] + sorted((s for s in self._mgr.all_steps()
                                  if s < step), reverse=True)
    for s in candidates:
      try:
        out = self._restore_step(s, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # tensorstore / json / zip errors name no path: record them here.
        failures.append((s, _why(e)))
        continue
      if failures:
        self._quarantine([f for f, _ in failures], s)
      return out
    raise UserError(
        f'{self.directory}: no readable checkpoint (step {failures[0][0]}: '
        f'{failures[0][1]}); delete the folder to start over')

  def _quarantine(self, steps, good: int):
    aside = self.directory.rstrip(os.sep) + '_corrupt'
    for s in steps:
      src = os.path.join(self.directory, str(s))
      dst = os.path.join(aside, f'{s}-{time.strftime("%Y%m%d-%H%M%S")}')
      if hosts.is_lead() and os.path.exists(src):
        os.makedirs(aside, exist_ok=True)
        shutil.move(src, dst)
      log.warning('checkpoint %s is unreadable; moved to %s, resuming from '
                  'step %d instead', src, dst, good)
    self._mgr.reload()

  def wait(self):
    with self._writing():
      self._mgr.wait_until_finished()

  def close(self):
    if self._closed:
      return
    self._closed = True
    _open.discard(self)
    try:
      with self._writing():
        self._mgr.wait_until_finished()
    finally:
      self._mgr.close()


def finish_all():
  """Waits for every open Checkpointer's in-flight saves and closes it (an
  error while doing so is logged, never raised over the real error)."""
  for ckpt in list(_open):
    try:
      ckpt.close()
    except Exception as e:  # pylint: disable=broad-except
      log.warning('could not finish saving checkpoints in %s: %s',
                  ckpt.directory, e)


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
