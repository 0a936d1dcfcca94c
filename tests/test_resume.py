"""A run killed (SIGKILL) at any moment and started again with the same
command ends with the same final params and results as an uninterrupted run,
bitwise on CPU."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mgtil_jax.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/mgtil_synth.py:runlocal,tasks=3,method=l2'


def _cmd(workdir):
  return [sys.executable, 'launch.py', f'--config={CONFIG}',
          f'--workdir={workdir}']


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu')


def _steps(directory):
  if not os.path.isdir(directory):
    return []
  return [int(d) for d in os.listdir(directory) if re.fullmatch(r'\d+', d)]


def test_relative_workdir(tmp_path):
  # README's command uses a relative --workdir; orbax needs absolute paths.
  (tmp_path / 'rel').mkdir()
  subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                  '--config', os.path.join(ROOT, 'configs/mgtil_synth.py') +
                  ':runlocal,tasks=1', '--workdir', 'rel/w'],
                 cwd=tmp_path, env=_env(), check=True, capture_output=True)
  assert os.path.exists(tmp_path / 'rel' / 'w' / 'results.json')


def _run_until(workdir, ready, extra_delay, timeout=240):
  """Starts the run, waits until `ready()` holds, sleeps, then SIGKILLs it."""
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  start = time.time()
  while not ready():
    if proc.poll() is not None:
      raise AssertionError('run ended before the kill point: ' +
                           proc.stderr.read().decode()[-2000:])
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError('kill point never reached')
    time.sleep(0.05)
  time.sleep(extra_delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc.returncode


def _final(workdir):
  params, meta = checkpoint.load_latest_params(
      os.path.join(workdir, 'checkpoints'))
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return params, meta, results


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_identical(tmp_path):
  ref_dir = str(tmp_path / 'uninterrupted')
  subprocess.run(_cmd(ref_dir), cwd=ROOT, env=_env(), check=True,
                 capture_output=True)
  ref_params, ref_meta, ref_results = _final(ref_dir)

  work = str(tmp_path / 'killed')
  pre = lambda: any(d.startswith('pretrain_') and _steps(os.path.join(work, d))
                    for d in (os.listdir(work) if os.path.isdir(work) else []))
  # 1) during pretraining, right after its first checkpoint;
  assert _run_until(work, pre, 0.0) == -signal.SIGKILL
  # 2) in the middle of task 2 (steps_per_task = 4; mid-task saves at 2);
  ckpts = os.path.join(work, 'checkpoints')
  assert _run_until(work, lambda: 6 in _steps(ckpts), 0.0) == -signal.SIGKILL
  # 3) at some moment later, wherever it is (possibly mid-save).
  assert _run_until(work, lambda: 8 in _steps(ckpts), 0.3) == -signal.SIGKILL
  assert not os.path.exists(os.path.join(work, 'results.json'))
  subprocess.run(_cmd(work), cwd=ROOT, env=_env(), check=True,
                 capture_output=True)
  params, meta, results = _final(work)

  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  assert results['accuracy_matrix'] == ref_results['accuracy_matrix']
  assert results['zero_shot'] == ref_results['zero_shot']
  assert meta['task'] == ref_meta['task'] == 3
