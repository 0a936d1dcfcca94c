"""benchmarks/gpu_suite.py --smoke: every part runs at tiny sizes on CPU and
writes its JSON and markdown (the real-size numbers need an accelerator)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks')
sys.path.insert(0, BENCH)
import gpu_suite  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_config_stand_in_behaves_like_a_config_dict():
  c = gpu_suite._ConfigDict(a=1, sub=dict(b=2))  # pylint: disable=protected-access
  c.data = dict(x=3)
  assert c.sub.b == 2 and c.data.x == 3 and c.get('missing', 4) == 4
  assert c.to_dict() == {'a': 1, 'sub': {'b': 2}, 'data': {'x': 3}}
  d = c.copy_and_resolve_references()
  d.sub.b = 5
  assert c.sub.b == 2
  with pytest.raises(AttributeError):
    _ = c.nope


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
  result = gpu_suite.run(smoke=True, out_dir=str(tmp_path))
  assert not result['errors'], result['errors']
  with open(tmp_path / f"gpu_suite_{result['platform']}_smoke.json") as f:
    written = json.load(f)
  md = (tmp_path / f"gpu_suite_{result['platform']}_smoke.md").read_text()
  for part in ('step', 'pipeline', 'topk', 'e2e'):
    assert written[part], part
  assert '## a. continual step' in md and '## d. one task end to end' in md

  steps = result['step']
  assert {r['method'] for r in steps} == {'ft', 'zscl', 'primed'}
  for r in steps:
    assert 'error' not in r, r
    # MFU on CPU is against a matmul measured under the same (shared) load,
    # so only its sign is checked here.
    assert r['step_s'] > 0 and r['mfu'] > 0
    # XLA counts at least the analytic matmul minimum of the step.
    assert r['xla_gflop'] >= 0.9 * r['analytic_min_gflop'] > 0
  ft = {r['remat']: r['xla_gflop'] for r in steps if r['method'] == 'ft'}
  primed = {r['remat']: r['xla_gflop'] for r in steps
            if r['method'] == 'primed'}
  assert primed[False] > ft[False]  # the reference pairs cost compute
  assert primed[True] > primed[False]  # remat recomputes the forward

  pipe = result['pipeline'][0]
  if 'skipped' not in pipe:
    assert pipe['images_per_s'] > 0 and pipe['batch_shape'][1:] == [224, 224,
                                                                     3]
  exact, scann = result['topk']
  assert exact['recall_at_10'] == 1.0 and exact['qps'] > 0
  # The device search agrees with NumPy's brute force (independent check).
  assert exact['numpy_agreement'] == 1.0
  if 'skipped' not in scann:
    assert scann['recall_at_10'] > 0.9

  e2e = result['e2e'][0]
  assert e2e['steps'] == 3 and e2e['step_s'] > 0 and e2e['eval_s'] > 0
  assert e2e['retrieval_s'] > 0 and e2e['reference_set'] > 0
  assert e2e['data_wait_s'] >= 0
  assert np.isfinite(e2e['accuracy'])


def test_configs_build_with_the_stand_in_when_ml_collections_is_absent():
  # The accelerator host may lack ml_collections: block its import in a
  # fresh interpreter and build a config through the stand-in.
  code = (
      'import sys; sys.modules["ml_collections"] = None\n'
      f'sys.path.insert(0, {BENCH!r})\n'
      'import gpu_suite\n'
      'assert gpu_suite.ensure_ml_collections() == "stand-in"\n'
      'from configs import mgtil_synth\n'
      'c = mgtil_synth.get_config("runlocal,tasks=1,method=primed")\n'
      'assert c.method == "primed" and c.data.train_per_class == 16\n'
      'd = c.to_dict()\n'
      'assert type(d["train"]) is dict\n'
      'assert d["train"]["batch_size"] == c.train.batch_size > 0\n'
      'print("ok")\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, cwd=os.path.dirname(BENCH), check=False)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-800:]
