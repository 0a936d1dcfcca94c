"""config.train.frozen: the named parameters do not move under any method's
optimiser, every other trainable one does, and a prefix that names nothing is
one clear error. Reference: the parameters before the step (a frozen leaf
must equal them bit for bit)."""

import jax
import numpy as np
import pytest

from configs import mgtil_synth
from mgtil_jax import training as train
from mgtil_jax.core import errors
from mgtil_jax.data import tasks as tasks_lib

FROZEN = 'visual/patch_embed, visual/block0,text/word_embed'


def _names(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _one_step(tmp_path, method, frozen):
  cfg = mgtil_synth.get_config(f'runlocal,tasks=1,method={method}')
  cfg.cache_dir = str(tmp_path / 'cache')
  cfg.model.init = 'random'
  cfg.train.frozen = frozen
  cfg.train.warmup_steps = 0
  exp = train.setup(cfg, str(tmp_path / 'run'))
  params = train.initial_params(exp, None)
  before = _names(jax.device_get(params))   # the step donates params
  tx = train.build_optimizer(exp, 4)
  shardings = train.state_shardings(exp, tx)
  with exp.context():
    state = {'params': params, 'opt': jax.jit(tx.init)(params)}
    step = train.make_task_step(exp, tx, shardings)
    task = exp.tasks[0]
    batch = exp.put_batch(tasks_lib.task_batch(task, 0, 8, 0, 0))
    state, _ = step(state, batch, exp.task_prompts(task))
  return before, _names(jax.device_get(state['params']))


def test_frozen_leaves_stay_and_the_rest_moves(tmp_path):
  before, after = _one_step(tmp_path, 'ft', FROZEN)
  prefixes = ('visual/patch_embed', 'visual/block0', 'text/word_embed')
  frozen = [n for n in before if n.startswith(prefixes)]
  assert len(frozen) == 2 + 16 + 1   # patch_embed, block0's 16 leaves, words
  for name, value in before.items():
    if name in frozen or name == 'logit_scale':
      np.testing.assert_array_equal(after[name], value, err_msg=name)
  moved = [n for n in before if n not in frozen and n != 'logit_scale'
           and not np.array_equal(after[n], before[n])]
  # Every other weight matrix moves (biases may start at 0 and stay small,
  # but the kernels of block1 and the projections must change).
  for name in ('visual/block1/mlp/fc1/kernel', 'visual/proj/kernel',
               'text/proj1/kernel'):
    assert name in moved, name


def test_without_frozen_block0_moves(tmp_path):
  before, after = _one_step(tmp_path, 'ft', '')
  assert not np.array_equal(after['visual/block0/mlp/fc1/kernel'],
                            before['visual/block0/mlp/fc1/kernel'])


def test_a_prefix_naming_nothing_is_one_clear_error(tmp_path):
  with pytest.raises(errors.UserError, match=r"config\.train\.frozen: "
                     r"'visual/block9' names no parameter"):
    _one_step(tmp_path, 'ft', 'visual/block9')
  # Whole path components only: 'visual/block' is not a prefix of block0.
  with pytest.raises(errors.UserError, match='visual/block'):
    _one_step(tmp_path, 'ft', 'visual/block')
