"""One run per workdir, and one config per workdir.

* A lock (`<workdir>/.lock`, an `fcntl.flock` the kernel drops when the
  process dies, even on SIGKILL) records pid and host; a second run on the
  same workdir refuses with one line naming them.
* `<workdir>/config.json` records the config that made the workdir. A re-run
  whose config differs in a field that changes results refuses, naming the
  fields; fields that only change how the run is carried out (checkpoint
  cadence, logging, eval batch size, mesh, threads, caches) may change.

`guarded(run)` wraps `training.run`: lock, check the fingerprint, run, and
always let in-flight checkpoint saves finish before the error surfaces (the
config is validated before, by the entry points: entry/validation.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import time

from mgtil_jax.core import hosts
from mgtil_jax.core.errors import UserError
from mgtil_jax.training import checkpoint

CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'

# Fields (or prefixes) that do not change results: resuming with other
# values is allowed.
OPERATIONAL = (
    'cache_dir', 'checkpoint.', 'train.log_every', 'eval.batch_size',
    'model.remat', 'mesh.', 'sharding_rules', 'data.workers',
    'data.build_threads', 'data.data_dir', 'retrieval.embed_batch_size',
    'retrieval.decode_threads', 'retrieval.exact_block_rows',
    'retrieval.index_shard_rows', 'retrieval.corpus.dir',
)

_held: dict[str, list] = {}  # abs workdir -> [fd, depth] (re-entrant)


def _flatten(tree, prefix=''):
  out = {}
  items = tree.items() if hasattr(tree, 'items') else ()
  for key, value in items:
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = _jsonable(value)
  return out


def _jsonable(value):
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def flat_config(config) -> dict:
  """{'train.lr': 1e-4, ...}: every leaf of the config, JSON-ready."""
  return _flatten(config.to_dict() if hasattr(config, 'to_dict') else config)


def _changes_results(field: str) -> bool:
  return not any(field == p or (p.endswith('.') and field.startswith(p))
                 for p in OPERATIONAL)


def config_diff(old: dict, new: dict) -> list[str]:
  """'field old -> new' for every result-changing field that differs."""
  out = []
  for field in sorted(set(old) | set(new)):
    if not _changes_results(field):
      continue
    a, b = old.get(field, '<absent>'), new.get(field, '<absent>')
    if a != b:
      out.append(f'{field} {a!r} -> {b!r}')
  return out


def check_fingerprint(config, workdir: str, write: bool = True):
  """Refuses a workdir made by a config that differs in result-changing
  fields; records the config in a new (or unrecorded) workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = flat_config(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
      if not isinstance(old, dict):
        raise ValueError(f'expected a JSON object, got a {type(old).__name__}')
    except (OSError, ValueError) as e:
      raise UserError(f'{path}: unreadable config record ({e}); delete it to '
                      'accept the current config for this workdir') from e
    diff = config_diff(old, new)
    if diff and has_progress(workdir):
      shown = '; '.join(diff[:6]) + (f'; and {len(diff) - 6} more'
                                     if len(diff) > 6 else '')
      raise UserError(
          f'--workdir {workdir} was made by a different config ({shown}), '
          'which would change its results: pass a new --workdir to start a '
          f'new run, or delete {workdir} to start over')
  if write and (not os.path.exists(path) or old != new):
    # (Unchanged, it is left alone: a re-run refused later, e.g. for an
    # unreadable checkpoint, leaves the workdir as it was.)
    tmp = path + '.tmp'
    try:
      with open(tmp, 'w') as f:
        json.dump(new, f, indent=1, sort_keys=True)
      os.replace(tmp, path)
    except OSError as e:
      raise _unwritable(workdir, path, e) from None


def _unwritable(workdir: str, path: str, error: OSError) -> UserError:
  # os.write / json.dump raise ENOSPC without a file name.
  return UserError(f'--workdir {workdir}: cannot write {path} '
                   f'({error.strerror or error})')


def has_progress(workdir: str) -> bool:
  """Whether the workdir holds anything a different config would spoil: a
  checkpoint of the run or its results. (A run that failed before its first
  checkpoint may be re-run with a corrected config.)"""
  ckpts = os.path.join(workdir, 'checkpoints')
  steps = os.listdir(ckpts) if os.path.isdir(ckpts) else []
  return any(s.isdigit() for s in steps) or os.path.exists(
      os.path.join(workdir, 'results.json'))


@contextlib.contextmanager
def lock(workdir: str):
  """Holds `<workdir>/.lock` (re-entrant within a process)."""
  workdir = os.path.abspath(workdir)
  if workdir in _held:
    _held[workdir][1] += 1
    try:
      yield
    finally:
      _held[workdir][1] -= 1
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    try:
      with open(path) as f:
        owner = json.load(f)
      who = (f"pid {owner.get('pid')} on host {owner.get('host')} (since "
             f"{owner.get('started')})")
    except (OSError, ValueError):
      who = 'another process'
    os.close(fd)
    raise UserError(f'--workdir {workdir} is in use by {who}; wait for that '
                    f'run to end or pass another --workdir (lock file '
                    f'{path})') from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': time.strftime('%Y-%m-%dT%H:%M:%S')}).encode())
  except OSError as e:
    os.close(fd)
    raise _unwritable(workdir, path, e) from None
  _held[workdir] = [fd, 1]
  try:
    yield
  finally:
    del _held[workdir]
    os.close(fd)  # releases the flock


def guarded(run):
  """`run(config, workdir, ...)` locked and fingerprinted (the entry points
  validate the config first: entry/validation.py); on any
  exit the checkpoint saves still in flight are finished first, so the
  error (if any) is the last thing printed."""

  @functools.wraps(run)
  def wrapper(config, workdir: str, *args, **kwargs):
    with contextlib.ExitStack() as held:
      # Process 0 alone locks and checks the workdir, and every process
      # raises its refusal: a refusal on process 0 alone would leave the
      # others waiting in the run's first barrier (hosts.py).
      refused = None
      if hosts.is_lead():
        try:
          held.enter_context(lock(workdir))
          check_fingerprint(config, os.path.abspath(workdir))
        except UserError as e:
          refused = str(e)
      refused = hosts.lead_value('workdir_guard', refused)
      if refused is not None:
        raise UserError(refused)
      try:
        return run(config, workdir, *args, **kwargs)
      finally:
        checkpoint.finish_all()
  return wrapper
