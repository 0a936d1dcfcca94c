"""mgtil_jax.logs: third-party chatter is hidden unless verbose, and what
the project itself warns about still shows."""

import logging

import numpy as np
import pytest

from mgtil_jax.core import logs
from mgtil_jax.data import builder
from mgtil_jax.data.sources import base


@pytest.fixture
def restore_logging():
  yield
  logs.setup(verbose=False)


def _source():
  def read(root):
    del root
    return {split: [base.Example(np.full((6, 6, 3), 10 * i, np.uint8), i % 2,
                                 f'{split}/{i:03d}') for i in range(n)]
            for split, n in (('train', 6), ('test', 2))}
  return base.Source(name='toy', domain='toy_domain',
                     class_names=('calm', 'storm'), read=read,
                     split_policy='official (toy)')


@pytest.mark.parametrize('verbose', [False, True])
def test_tfds_build_message_only_when_verbose(tmp_path, capfd, verbose,
                                              restore_logging):
  logs.setup(verbose=verbose)
  builder.build(_source(), str(tmp_path / 'raw'),
                data_dir=str(tmp_path / 'd'), image_size=4, seed=0)
  out = capfd.readouterr().out
  # tfds prints this to stdout for every build, local files or not.
  assert ('Downloading and preparing dataset' in out) == verbose, out


def test_a_library_that_resets_its_level_stays_quiet(caplog, restore_logging):
  logs.setup(verbose=False)
  lib = logging.getLogger('bm25s')
  lib.setLevel(logging.DEBUG)  # what `import bm25s` does
  with caplog.at_level(logging.DEBUG):
    lib.debug('Building index from IDs objects')
    lib.info('chatter')
    lib.warning('a real problem')
    logging.getLogger('mgtil_jax.retrieval').warning('ours')
  shown = [r.getMessage() for r in caplog.records]
  assert shown == ['a real problem', 'ours']


def test_verbose_shows_library_info(caplog, restore_logging):
  logs.setup(verbose=True)
  lib = logging.getLogger('bm25s')
  lib.setLevel(logging.DEBUG)
  with caplog.at_level(logging.DEBUG):
    lib.debug('Building index from IDs objects')
  assert [r.getMessage() for r in caplog.records] == [
      'Building index from IDs objects']


def test_native_info_lines_dropped_the_rest_kept(capfd, restore_logging):
  # A child process writes to the inherited file descriptor 2, as C++ does.
  import subprocess
  import sys
  script = ('import sys; sys.stderr.write('
            '"WARNING: All log messages before absl::InitializeLog() is '
            'called are written to STDERR\\n'
            'I0000 00:00:1796011669.423134 4867 partitioner.cc:58] Size\\n'
            'W0000 00:00:1796011669.424727 4867 gmm_utils.cc:1026] zero\\n'
            'E1130 04:00:00.000000 1 x.cc:1] broken\\n")')
  for verbose in (False, True):
    logs.setup(verbose=verbose)
    with logs.quiet_native_stderr():
      subprocess.run([sys.executable, '-c', script], check=True)
    err = capfd.readouterr().err
    assert 'gmm_utils.cc:1026] zero' in err and 'x.cc:1] broken' in err
    assert ('partitioner.cc:58' in err) == verbose
    assert ('before absl::InitializeLog' in err) == verbose
