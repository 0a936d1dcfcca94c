"""Runs one task step (and one pretraining step) of the tiny model under a
given mesh and saves the resulting params; used by test_sharding.py in a
subprocess so that XLA_FLAGS can fake the device count.

  python tests/step_probe.py OUT.npz data fsdp tensor
"""

import os
import sys
import tempfile

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib


def main(out, data, fsdp, tensor):
  config = mgtil_synth.get_config('runlocal,tasks=1')
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  workdir = tempfile.mkdtemp()
  exp = train.setup(config, workdir)
  params = train.init_params(exp, seed=0)
  # Plain SGD: Adam divides by sqrt(v), which turns float-rounding noise in
  # near-zero gradients into lr-sized differences and hides real mismatches.
  tx = optax.sgd(0.1)
  shardings = train.state_shardings(exp, tx)
  with exp.context():
    opt = jax.jit(tx.init, out_shardings=shardings['opt'])(params)
  state = {'params': params, 'opt': opt}
  step = train.make_task_step(exp, tx, shardings)
  task = exp.tasks[0]
  prompts = exp.replicated(exp.prompt_tokens(task.class_names))
  with exp.context():
    for s in range(2):
      batch = exp.put_batch(tasks_lib.task_batch(task, s, 16, 0, 0))
      state, metrics = step(state, batch, prompts)
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(state['params'])[0]}
  kernel = state['params']['visual']['block0']['mlp']['fc1']['kernel']
  flat['__loss'] = np.asarray(metrics['loss'])
  flat['__devices'] = np.asarray(jax.device_count())
  flat['__kernel_shards'] = np.asarray(
      kernel.size // np.prod(kernel.sharding.shard_shape(kernel.shape)))
  np.savez(out, **flat)


if __name__ == '__main__':
  main(sys.argv[1], *map(int, sys.argv[2:5]))
