"""Training: experiment setup, pretraining, batches, evaluation during the
run, checkpoints, the workdir guard and the loop (docs/architecture.md).

`training.run(config, workdir)` is the whole continual run; the entry
points validate the config before it (`entry.run`). The names below are
the layer's public ones, importable from here.
"""

from mgtil_jax.training.batches import TaskBatches
from mgtil_jax.training.evaluation import evaluate_all, make_evaluator
from mgtil_jax.training.loop import run, train_phase
from mgtil_jax.training.optimizer import (build_optimizer, make_optimizer,
                                          state_shardings)
from mgtil_jax.training.pretraining import (initial_params, initial_trees,
                                            pretrain)
from mgtil_jax.training.setup import (Experiment, backbone_experiment,
                                      build_tokenizer, class_balanced_tasks,
                                      init_params, setup, start_seed)
from mgtil_jax.training.steps import make_pretrain_step, make_task_step

__all__ = ['Experiment', 'TaskBatches', 'backbone_experiment',
           'build_optimizer', 'build_tokenizer', 'class_balanced_tasks',
           'evaluate_all', 'init_params', 'initial_params', 'initial_trees',
           'make_evaluator', 'make_optimizer', 'make_pretrain_step',
           'make_task_step', 'pretrain', 'run', 'setup', 'start_seed',
           'state_shardings', 'train_phase']
