"""Real data as quiet as the synthetic default (issue 25.5): a small npz +
image-folder sequence through launch.py prints only the project's own
lines on stderr: its progress bars (one per dataset build) and one plain
line per warning; no absl / tfds chatter, no echoed source lines."""

import os
import re
import subprocess
import sys

import pytest

import test_custom_mixed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's own stderr lines: its bars and one-line warnings.
OURS = re.compile(r'^(build dataset |pretrain \(corpus\)|zero-shot eval|'
                  r'task \d+/\d+ |eval after task |[A-Z]\w*Warning: )')


@pytest.mark.slow
def test_npz_and_folder_sequence_prints_only_our_lines(tmp_path):
  test_custom_mixed._make_data(str(tmp_path / 'data'))  # pylint: disable=protected-access
  proc = subprocess.run(
      [sys.executable, 'launch.py',
       f'--config=configs/custom.py:root={tmp_path / "data"},'
       'tasks=breastmnist:npz+knee:folder,runlocal',
       f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l.strip() for l in re.split(r'[\r\n]', proc.stderr) if l.strip()]
  # tqdm's cursor moves ('\x1b[A') on a line of their own are not text.
  lines = [l for l in lines if l.strip('\x1b[A ')]
  foreign = [l for l in lines if not OURS.match(l)]
  assert not foreign, 'third-party lines:\n' + '\n'.join(foreign[:10])
  bars = {l.split(':')[0] for l in lines if l.startswith('build dataset ')}
  assert bars == {'build dataset breastmnist', 'build dataset knee'}
  warnings = [l for l in lines if 'Warning: ' in l]
  assert len(warnings) == 1 and 'MD5' in warnings[0]  # one line, no echo
  assert 'check_md5(' not in proc.stderr
