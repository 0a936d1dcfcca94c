"""Quiet by default: the progress bars, our own warnings and the final
summary are what a user reads; third-party chatter is shown only with
`launch.py --verbose`.

What is silenced, and where it comes from:
- orbax, jax and absl INFO lines (a line per checkpoint write): absl's
  verbosity.
- bm25s 'Building index from IDs objects', once per BM25 index: bm25s sets
  its own logger to DEBUG when it is imported, so a level set before that
  import is undone; a filter on the logger is not.
- TensorFlow C++ INFO lines: TF_CPP_MIN_LOG_LEVEL, read when it loads.
- ScaNN's C++ INFO lines ('I0000 ... partitioner_factory_base.cc ...'):
  absl C++ logging writes them to file descriptor 2 before any threshold
  applies, so `quiet_native_stderr()` around a ScaNN build drops them and
  passes every other line through.
- tfds' 'Downloading and preparing dataset ...' / '... downloaded and
  prepared' lines, printed to stdout even for a local build: data/builder.py
  wraps the build in `quiet_stdout()`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings

import jax
import numpy as np
from tqdm import tqdm

# Loggers of libraries that report routine progress at INFO or DEBUG.
NOISY = ('bm25s', 'absl', 'orbax', 'scann', 'tensorflow',
         'tensorflow_datasets', 'array_record', 'grain', 'PIL', 'matplotlib',
         'h5py', 'urllib3', 'filelock')

_verbose = False


def _below_warning(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING


# Third-party WARNINGs about the project's own caches, not the user's input:
# tfds' "Variant folder .../1.0.0 has no dataset_info.json" while a dataset
# is first built.
_CACHE_CHATTER = ('has no dataset_info.json',)


def _not_cache_chatter(record: logging.LogRecord) -> bool:
  return not any(s in record.getMessage() for s in _CACHE_CHATTER)


def _one_line_warning(message, category, filename, lineno, line=None):
  """Python's warning format without the echo of the source line."""
  del filename, lineno, line
  return f'{category.__name__}: {message}\n'



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
  warnings.formatwarning = _one_line_warning
  absl_logger = logging.getLogger('absl')
  if _not_cache_chatter not in absl_logger.filters:
    absl_logger.addFilter(_not_cache_chatter)
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


# absl C++ INFO lines ('I1130 12:00:00.000 ...', 'I0000 00:00:...') and the
# notice absl prints once before its first line.
_NATIVE_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d|^WARNING: All log messages '
                          r'before absl::InitializeLog\(\)')


@contextlib.contextmanager
def quiet_native_stderr():
  """Native (C++) INFO lines written to file descriptor 2 inside the block
  are dropped, unless verbose; every other line written there meanwhile
  (warnings, errors, Python output) is written back when the block ends."""
  if _verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(
          'utf-8', 'replace').splitlines(keepends=True)
              if not _NATIVE_INFO.match(line)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


# ------------------------------------------ progress bars and scalars --


def progress(iterable, **kwargs):
  """tqdm on process 0 only."""
  return tqdm(iterable, disable=jax.process_index() != 0, dynamic_ncols=True,
              **kwargs)


def summary_writer(workdir: str):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, 'tensorboard'))


def scalars(writer, prefix: str, values: dict, step: int):
  if writer is None:
    return
  for k, v in values.items():
    writer.add_scalar(f'{prefix}/{k}', float(np.asarray(v)), step)
