"""One train step on 1 device vs on 8 fake CPU devices (data x fsdp x tensor
sharding) gives the same params within float tolerance."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mgtil_jax.core import sharding

HERE = os.path.dirname(os.path.abspath(__file__))


def _probe(tmp_path, devices, data, fsdp, tensor):
  out = str(tmp_path / f'p{devices}_{data}_{fsdp}_{tensor}.npz')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  subprocess.run([sys.executable, os.path.join(HERE, 'step_probe.py'), out,
                  str(data), str(fsdp), str(tensor)], check=True, env=env,
                 cwd=os.path.dirname(HERE))
  return dict(np.load(out))


@pytest.mark.slow
def test_one_device_vs_eight_fake_devices(tmp_path):
  ref = _probe(tmp_path, 1, 1, 1, 1)
  assert int(ref['__devices']) == 1
  for data, fsdp, tensor in [(2, 4, 1), (2, 2, 2)]:
    got = _probe(tmp_path, 8, data, fsdp, tensor)
    assert int(got['__devices']) == 8
    # An MLP kernel [embed, mlp] is split into fsdp x tensor distinct shards:
    # the params really were sharded, not replicated.
    assert int(got['__kernel_shards']) == fsdp * tensor
    assert set(got) == set(ref)
    for k in ref:
      if k in ('__devices', '__kernel_shards'):
        continue
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{k} (mesh {data}x{fsdp}x{tensor})')


def test_mesh_must_match_device_count():
  with pytest.raises(ValueError, match='config.mesh'):
    sharding.make_mesh({'data': 3, 'fsdp': 1, 'tensor': 1})
  with pytest.raises(ValueError, match='config.mesh'):
    sharding.make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match='config.mesh'):
    sharding.make_mesh({'pipeline': 1})
