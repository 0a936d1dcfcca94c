"""Quiet by default: the progress bars, our own warnings and the final
summary are what a user reads; third-party chatter is shown only with
`launch.py --verbose`.

What is silenced, and where it comes from:
- orbax, jax and absl INFO lines (a line per checkpoint write): absl's
  verbosity.
- bm25s 'Building index from IDs objects', once per BM25 index: bm25s sets
  its own logger to DEBUG when it is imported, so a level set before that
  import is undone; a filter on the logger is not.
- ScaNN / TensorFlow C++ INFO lines: TF_CPP_MIN_LOG_LEVEL, read when those
  libraries load.
- tfds' 'Downloading and preparing dataset ...' / '... downloaded and
  prepared' lines, printed to stdout even for a local build: data/builder.py
  wraps the build in `quiet_stdout()`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

# Loggers of libraries that report routine progress at INFO or DEBUG.
NOISY = ('bm25s', 'absl', 'orbax', 'scann', 'tensorflow',
         'tensorflow_datasets', 'array_record', 'grain', 'PIL', 'matplotlib',
         'h5py', 'urllib3', 'filelock')

_verbose = False


def _below_warning(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING


def setup(verbose: bool = False):
  """Call once, first thing in a process (launch.py does)."""
  global _verbose
  _verbose = verbose
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
    for name in NOISY:
      logging.getLogger(name).removeFilter(_below_warning)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in NOISY:
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    if _below_warning not in logger.filters:
      logger.addFilter(_below_warning)


def is_verbose() -> bool:
  return _verbose


@contextlib.contextmanager
def quiet_stdout():
  """Swallows what is printed to stdout inside the block, unless verbose.
  For libraries that print instead of logging (tfds); stderr, where the
  progress bars and warnings go, is left alone."""
  if _verbose:
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield
