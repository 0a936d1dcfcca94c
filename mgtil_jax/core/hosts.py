"""What the processes of a multi-host run agree on, and where they wait for
each other (docs/retrieval.md, "Multi-host").

Every process runs the same Python; a run goes wrong when one process takes
a branch the other does not (a file one of them sees and the other not yet,
an error only one raises) and then waits in a collective the other never
reaches. Two rules keep them in step:

* A decision that reads the file system (a finished run, a built index, the
  workdir's lock and config record) is taken by process 0 and handed to the
  others with `lead_value`, never taken by each process on its own.
* Processes wait for each other with `sync`: a barrier of the jax.distributed
  coordination service with a timeout. One process that never arrives makes
  the others fail after `MGTIL_SYNC_TIMEOUT_S` seconds (default 7200: process
  0 alone may ingest a corpus or build an index meanwhile) with one line
  naming the barrier, instead of waiting forever.

With one process every function here returns at once.
"""

from __future__ import annotations

import itertools
import json
import os

import jax

DEFAULT_TIMEOUT_S = 7200
TIMEOUT_ENV = 'MGTIL_SYNC_TIMEOUT_S'

# Barrier and value keys are numbered in call order: the coordination
# service wants a key used once, and two processes that call in another
# order wait on different keys and time out rather than pair up wrongly.
_counter = itertools.count()


class OutOfStepError(RuntimeError):
  """A process waited at a barrier (or for process 0's value) that another
  process did not reach in time."""


def is_lead() -> bool:
  return jax.process_index() == 0


def timeout_s() -> int:
  raw = os.environ.get(TIMEOUT_ENV, '')
  try:
    value = int(raw) if raw else DEFAULT_TIMEOUT_S
  except ValueError:
    value = 0
  if value < 1:
    raise ValueError(f'{TIMEOUT_ENV}: expected a positive number of seconds, '
                     f'got {raw!r}')
  return value


def _client():
  # orbax's accessor of the jax.distributed client (its barriers use it too).
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  return multihost.get_jax_distributed_client()


def _key(kind: str, name: str) -> str:
  return f'mgtil/{kind}/{next(_counter)}/{name}'


def _out_of_step(what: str, name: str, key: str, seconds: int,
                 error: Exception) -> OutOfStepError:
  return OutOfStepError(
      f'process {jax.process_index()} of {jax.process_count()} waited '
      f'{seconds} s {what} {name!r} (key {key}) and another process never '
      'reached it: the processes took different branches (or one failed; '
      f'see its log). Raise {TIMEOUT_ENV} if process 0 is only slow. '
      f'[{type(error).__name__}: {str(error).splitlines()[0][:200]}]')


def sync(name: str, timeout: int | None = None):
  """Waits until every process has called sync with this name (in the same
  order); raises OutOfStepError after `timeout` (default timeout_s())
  seconds."""
  if jax.process_count() == 1:
    return
  seconds = timeout or timeout_s()
  key = _key('sync', name)
  try:
    _client().wait_at_barrier(key, seconds * 1000)
  except Exception as e:  # pylint: disable=broad-except
    raise _out_of_step('at the barrier', name, key, seconds, e) from e


def lead_value(name: str, value=None, timeout: int | None = None):
  """Process 0's `value` (JSON-serialisable) on every process; the others'
  `value` is ignored. Every process must call it, in the same order."""
  if jax.process_count() == 1:
    return value
  seconds = timeout or timeout_s()
  key = _key('value', name)
  client = _client()
  if is_lead():
    client.key_value_set(key, json.dumps(value))
    return value
  try:
    return json.loads(client.blocking_key_value_get(key, seconds * 1000))
  except Exception as e:  # pylint: disable=broad-except
    raise _out_of_step("for process 0's value of", name, key, seconds,
                       e) from e


def lead_exists(path: str, name: str) -> bool:
  """Whether `path` exists, as process 0 sees it (see the module doc);
  `name` (the same on every process) names the wait in errors."""
  exists = os.path.exists(path) if is_lead() else None
  return bool(lead_value(name, exists))
