"""Shared caches built once: `cache_lock(entry)` holds `<entry>.lock`
(filelock: an OS lock the kernel drops when the holder dies, even on
SIGKILL), so two runs that want one pretraining or data cache entry build
it once; the second waits, then reads what the first wrote. Writers still
write to a temporary name and rename, so a kill never leaves a half-written
entry under the real name (issue 25)."""

from __future__ import annotations

import contextlib
import logging
import os

import filelock

log = logging.getLogger(__name__)


@contextlib.contextmanager
def cache_lock(entry: str):
  """Holds the lock of cache `entry` (a file or folder path) for the block;
  re-entrant within a process."""
  lock = filelock.FileLock(os.path.abspath(entry) + '.lock')
  try:
    os.makedirs(os.path.dirname(os.path.abspath(entry)), exist_ok=True)
    lock.acquire(timeout=0)
  except filelock.Timeout:
    log.warning('cache %s is being built by another run; waiting for it',
                entry)
    lock.acquire()
  except OSError:
    # A read-only cache (a shared, finished one): nothing will be written
    # there, so reading it needs no lock; a build would fail on its own
    # write, naming the file.
    yield
    return
  try:
    yield
  finally:
    lock.release()


def temporary_name(path: str) -> str:
  """A temporary name beside `path`, unique to this process."""
  base, ext = os.path.splitext(path)
  return f'{base}.tmp{os.getpid()}{ext}'
