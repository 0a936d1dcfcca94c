"""A 2-process CPU run (jax.distributed on localhost) of a few steps agrees
with the 1-process run of the same command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from mgtil_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/mgtil_synth.py:runlocal,tasks=2'


def _launch(workdir, extra=()):
  return [sys.executable, 'launch.py', f'--config={CONFIG}',
          f'--workdir={workdir}', *extra]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  one = str(tmp_path / 'one')
  subprocess.run(_launch(one), cwd=ROOT, env=env, check=True,
                 capture_output=True)

  two = str(tmp_path / 'two')
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      _launch(two, ['--multihost', f'--coordinator_address=localhost:{port}',
                    '--num_processes=2', f'--process_id={i}']),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]

  with open(os.path.join(one, 'results.json')) as f:
    r1 = json.load(f)
  with open(os.path.join(two, 'results.json')) as f:
    r2 = json.load(f)
  assert r1['devices']['processes'] == 1 and r2['devices']['processes'] == 2
  assert r2['devices']['count'] == 2
  np.testing.assert_allclose(r2['accuracy_matrix'], r1['accuracy_matrix'],
                             atol=1e-6)
  p1, _ = checkpoint.load_latest_params(os.path.join(one, 'checkpoints'))
  p2, _ = checkpoint.load_latest_params(os.path.join(two, 'checkpoints'))
  # Cross-process reductions sum in another order; Adam divides by sqrt(v),
  # so on near-zero gradients that rounding noise becomes a fraction of a
  # step (lr = 1e-3 here). 1e-4 is a tenth of one step: a real mismatch (a
  # wrong shard, a missing all-reduce) moves params by whole steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-4), p2, p1)
  loss1 = [l for c in r1['train_curves'] for _, l in c['loss']]
  loss2 = [l for c in r2['train_curves'] for _, l in c['loss']]
  np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
