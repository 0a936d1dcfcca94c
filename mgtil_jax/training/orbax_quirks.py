"""Work-arounds for orbax 0.12's failure modes, applied when
`training/checkpoint.py` is imported. Each changes only what orbax does
when something has already gone wrong (or a debug log line), never a
checkpoint's content; if orbax moves what is patched, nothing is changed.

* `_guard_byte_logging`: a save overlapping a tensorflow_datasets import
  failed with "'LazyModule' object is not callable".
* `_settle_failed_reads`: a restore that fails part-way closed its event
  loop under the reads still in flight (hundreds of "Event loop is closed"
  tracebacks).
* `disk_full` and the absl filter: a save that meets a full disk is logged
  with its traceback by each orbax thread it passes through; the run
  reports it once, as its error line.
"""

from __future__ import annotations

import asyncio
import errno
import logging


def _naturalsize(value, binary=False, **_):
  """Bytes as text, importing nothing at call time."""
  del binary
  return f'{int(value)} B'


def _guard_byte_logging():
  """Orbax's save threads format byte counts for a debug log line with
  `humanize.naturalsize`, which runs `from math import log` on every call.
  etils' `epy.lazy_imports()` (used by tensorflow_datasets while its modules
  import) swaps `builtins.__import__` for the whole process, so a save
  overlapping such an import, e.g. the retrieval corpus reader importing
  tfds while the step-0 checkpoint is written, got a LazyModule for `log`
  and the save failed: "TypeError: 'LazyModule' object is not callable"
  (tests/test_checkpoint_recovery.py reproduces it). The log line only
  needs the number, so orbax's limiter gets a formatter that imports
  nothing; if orbax moves the module, nothing is changed."""
  try:
    from orbax.checkpoint._src.serialization import limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  if hasattr(limits, 'humanize'):
    limits.humanize = type('humanize', (), {
        'naturalsize': staticmethod(_naturalsize)})


_guard_byte_logging()


def _run_until_settled(coro):
  """orbax's `_run_sync_via_new_loop`, except that when `coro` fails the
  loop runs on until its other tasks are done before it is closed. A
  restore whose first array read fails (a damaged checkpoint) otherwise
  closes the loop under the reads still in flight, and each of them, when
  tensorstore completes it, prints "RuntimeError: Event loop is closed" or
  "Future exception was never retrieved" (hundreds of tracebacks, some
  after the run's one error line)."""
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  except BaseException:
    pending = asyncio.all_tasks(loop)
    if pending:
      loop.run_until_complete(asyncio.gather(*pending,
                                             return_exceptions=True))
    raise
  finally:
    asyncio.set_event_loop(None)
    loop.close()


def _settle_failed_reads():
  try:
    from orbax.checkpoint._src import asyncio_utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  if hasattr(asyncio_utils, '_run_sync_via_new_loop'):  # else: left alone
    asyncio_utils._run_sync_via_new_loop = _run_until_settled  # pylint: disable=protected-access


_settle_failed_reads()


def disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it came from, is a write refused for want
  of space (tensorstore says RESOURCE_EXHAUSTED, quoting the OS error)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, 'errno', None) == errno.ENOSPC or (
        'No space left on device' in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _not_disk_full(record: logging.LogRecord) -> bool:
  # orbax's save threads log a failed write with its traceback, once per
  # thread it passes through; the run reports a full disk once, as its error.
  return not (disk_full(record.exc_info[1] if record.exc_info else None) or
              'No space left on device' in record.getMessage())


if _not_disk_full not in logging.getLogger('absl').filters:
  logging.getLogger('absl').addFilter(_not_disk_full)
