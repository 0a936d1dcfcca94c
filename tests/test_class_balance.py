"""config.train.class_balance (docs/methods.md, "Class balance"): which
tasks get inverse-frequency class weights in the step's prompts, and one
clear line for a task name that is not in the sequence. The weights are
checked against sklearn's 'balanced' formula N / (C * count_c) written out
in NumPy."""

import types

import ml_collections
import numpy as np
import pytest

from mgtil_jax import training as train
from mgtil_jax.training.setup import _check_class_balance  # pylint: disable=protected-access
from mgtil_jax.data.tasks import TaskData


def _task(name, labels, classes):
  n = len(labels)
  return TaskData(name, 'xray', classes,
                  np.zeros((n, 4, 4, 3), np.uint8), np.asarray(labels),
                  np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1, np.int32))


def _experiment(balance):
  cfg = ml_collections.ConfigDict(dict(train=dict(class_balance=balance)))
  return types.SimpleNamespace(
      config=cfg, replicated=lambda x: x,
      prompt_tokens=lambda names: np.zeros((len(names), 3), np.int32))


PNEUMONIA = _task('pneumonia', [0] * 10 + [1] * 90, ('normal', 'pneumonia'))
RETINA = _task('retina', [0, 0, 1, 2, 2, 2], ('a', 'b', 'c'))


def test_named_task_gets_inverse_frequency_weights():
  exp = _experiment('pneumonia')
  got = train.Experiment.task_prompts(exp, PNEUMONIA)
  np.testing.assert_allclose(got['class_weight'],
                             [100 / (2 * 10), 100 / (2 * 90)], rtol=1e-6)
  # A task the setting does not name keeps the plain CE.
  assert 'class_weight' not in train.Experiment.task_prompts(exp, RETINA)


@pytest.mark.parametrize('balance, weighted', [
    ('', (False, False)), ('all', (True, True)),
    ('pneumonia+retina', (True, True)), ('retina', (False, True))])
def test_which_tasks_are_weighted(balance, weighted):
  exp = _experiment(balance)
  got = tuple('class_weight' in train.Experiment.task_prompts(exp, t)
              for t in (PNEUMONIA, RETINA))
  assert got == weighted
  if weighted[1]:
    w = train.Experiment.task_prompts(exp, RETINA)['class_weight']
    np.testing.assert_allclose(w, [6 / (3 * 2), 6 / (3 * 1), 6 / (3 * 3)],
                               rtol=1e-6)


def test_unknown_task_is_one_clear_line():
  cfg = ml_collections.ConfigDict(dict(train=dict(class_balance='pneumona')))
  with pytest.raises(ValueError, match=r"config\.train\.class_balance: "
                     r"unknown task 'pneumona'"):
    _check_class_balance(cfg, [PNEUMONIA, RETINA])  # pylint: disable=protected-access
  for ok in ('', 'all', 'retina', 'pneumonia+retina'):
    cfg.train.class_balance = ok
    _check_class_balance(cfg, [PNEUMONIA, RETINA])  # pylint: disable=protected-access


def test_joint_stream_carries_each_tasks_own_weights():
  # Joint steps through every task; each step's prompts must be that task's
  # own set (train_phase uses them instead of the phase task's), so a task
  # that class_balance does not name gets no weights from another task.
  from mgtil_jax.methods import parts  # pylint: disable=g-import-not-at-top
  inner = _experiment('pneumonia')
  exp = types.SimpleNamespace(
      tasks=[PNEUMONIA, RETINA],
      task_prompts=lambda t: train.Experiment.task_prompts(inner, t))
  stream = parts.JointStream(exp, 0)
  got = stream._prompts  # pylint: disable=protected-access
  np.testing.assert_allclose(got[0]['class_weight'], [5.0, 100 / 180])
  assert 'class_weight' not in got[1]
