"""The experiment a run is built from: the mesh, the model, the tokenizer,
the tasks and the method, made once from the config (`setup`), and the
random params of its model."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re

import flax.linen as nn
import jax
import numpy as np

from mgtil_jax import methods
from mgtil_jax.core import hosts
from mgtil_jax.core import sharding
from mgtil_jax.criteria import losses
from mgtil_jax.data import benchmarks
from mgtil_jax.data import synth
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip
from mgtil_jax.models import presets
from mgtil_jax.models.tokenizer import Tokenizer, write_vocab


@dataclasses.dataclass
class Experiment:
  """Everything a step or an evaluation needs, built once from the config."""
  config: object
  workdir: str
  mesh: jax.sharding.Mesh
  rules: tuple
  model: clip.CLIP
  tokenizer: Tokenizer
  tasks: list
  method: methods.Method
  param_shardings: object  # NamedShardings, same tree as params

  def context(self):
    """Mesh + logical rules: the context every step is traced in."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def prompt_tokens(self, class_names) -> np.ndarray:
    """int32[C * n_templates, L], class-major."""
    templates = self.config.prompts.templates
    return self.tokenizer([t.format(c) for c in class_names
                           for t in templates])

  def task_prompts(self, task) -> dict:
    """What the step takes about `task`: its class prompts ('task') and,
    when config.train.class_balance names it, its inverse-frequency class
    weights ('class_weight', docs/methods.md "Class balance")."""
    out = {'task': self.replicated(self.prompt_tokens(task.class_names))}
    balanced = class_balanced_tasks(self.config)
    if balanced is None or task.name in balanced:
      out['class_weight'] = self.replicated(losses.balanced_class_weights(
          task.train_labels, len(task.class_names)))
    return out

  def put_batch(self, batch: dict) -> dict:
    return sharding.put_global_batch(batch, self.mesh, self.rules)

  @property
  def cache_dir(self) -> str:
    """Where data and pretraining caches live: `config.cache_dir`, shared
    by the runs of a comparison, or else the workdir."""
    return os.path.abspath(self.config.get('cache_dir', '') or self.workdir)

  def replicated(self, tree):
    return sharding.put_replicated(tree, self.mesh)

  @property
  def replicated_sharding(self):
    return sharding.replicated(self.mesh)

  @property
  def state_trees(self) -> tuple[str, ...]:
    return self.method.state_trees(self.config.method_kwargs)


def _sync(name: str):
  hosts.sync(name)  # a barrier with a timeout (hosts.py)


def build_tokenizer(config, workdir: str, texts=()) -> Tokenizer:
  """The tokenizer of a checkpoint `config.model.init`, or of
  `config.tokenizer.vocab_file`, else a vocabulary of the synthetic corpus
  plus every word of `texts` (the benchmark's class names and prompt
  templates), so real class names are whole words rather than character
  pieces."""
  from mgtil_jax.models import checkpoint_init  # pylint: disable=g-import-not-at-top
  if checkpoint_init.is_checkpoint_path(config.model.init):
    # The checkpoint's vocab and open_clip's text cleaning; checks the
    # checkpoint against the run first.
    return checkpoint_init.tokenizer(config, tasks_lib.CLIP_MEAN,
                                     tasks_lib.CLIP_STD)
  vocab_file = config.get('tokenizer', {}).get('vocab_file', '')
  if not vocab_file:
    vocab_file = os.path.join(workdir, 'vocab.txt')
    words = set(synth.vocabulary(config.data.get('regime', 'same_scanner')))
    for text in texts:  # split as synth.vocabulary() splits its texts
      text = text.replace('{', ' ').replace('}', ' ').lower()
      words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text))
    if hosts.is_lead():
      write_vocab(sorted(words), vocab_file)
    _sync('vocab')
  model_cfg = presets.get_preset(config.model.preset)
  tok = Tokenizer(vocab_file, model_cfg.text.context_length,
                  bucket=config.get('tokenizer', {}).get('bucket', 16))
  if tok.vocab_size > model_cfg.text.vocab_size:
    raise ValueError(f'tokenizer: vocab size {tok.vocab_size} exceeds the '
                     f'model preset {config.model.preset!r} text vocab '
                     f'({model_cfg.text.vocab_size})')
  return tok


def setup(config, workdir: str) -> Experiment:
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(dict(config.mesh))
  sharding.check_batch_divisible(config.train.batch_size, mesh,
                                 'config.train.batch_size')
  rules = sharding.rules_from_config(config.sharding_rules)
  method = methods.get_method(config.method, config.method_kwargs)
  cache = os.path.join(os.path.abspath(config.get('cache_dir', '') or workdir),
                       'data')
  if hosts.is_lead():
    task_list = benchmarks.load_benchmark(config.data, cache)
  _sync('data')
  if not hosts.is_lead():
    task_list = benchmarks.load_benchmark(config.data, cache)
  _check_class_balance(config, task_list)
  tokenizer = build_tokenizer(
      config, workdir, [c for t in task_list for c in t.class_names] +
      list(config.prompts.templates))
  adapter = method.adapter(len(task_list))
  model = clip.make_model(presets.get_preset(config.model.preset),
                          dtype=config.model.dtype, remat=config.model.remat,
                          adapter=adapter)
  abstract = jax.eval_shape(functools.partial(clip.init_params, model),
                            jax.random.key(0))
  param_shardings = sharding.param_shardings(abstract, mesh, rules)
  return Experiment(config, workdir, mesh, rules, model, tokenizer, task_list,
                    method, param_shardings)


def class_balanced_tasks(config) -> set[str] | None:
  """The task names config.train.class_balance weights ('' = none, 'all' =
  None, else names joined by '+')."""
  balance = str(config.train.get('class_balance', '') or '')
  if balance == 'all':
    return None
  return set(balance.split('+')) - {''}


def _check_class_balance(config, task_list):
  names = [t.name for t in task_list]
  unknown = sorted((class_balanced_tasks(config) or set()) - set(names))
  if unknown:
    raise ValueError(f"config.train.class_balance: unknown task "
                     f"{unknown[0]!r}; expected '', 'all' or task names "
                     f"joined by '+' from {names}")


def backbone_experiment(exp: Experiment) -> Experiment:
  """The same experiment with the plain CLIP (no adapters): adapter methods
  pretrain / load their frozen backbone through it."""
  model = clip.make_model(exp.model.cfg, dtype=exp.config.model.dtype,
                          remat=exp.config.model.remat)
  abstract = jax.eval_shape(functools.partial(clip.init_params, model),
                            jax.random.key(0))
  return dataclasses.replace(
      exp, model=model, method=methods.Method('backbone'),
      param_shardings=sharding.param_shardings(abstract, exp.mesh, exp.rules))


def start_seed(config) -> int:
  """The seed of the pretrained start: `config.pretrain.seed` (fixed by
  default, so every run seed starts from one model, as the paper keeps one
  BiomedCLIP), else `config.seed` where a config has no pretraining. The run
  seed `config.seed` varies the continual run alone: batch order, reference
  draws, the init of new parts (docs/metrics.md, "Seeds")."""
  pretrain = config.get('pretrain') or {}
  seed = pretrain.get('seed')
  return config.seed if seed is None else int(seed)


def init_params(exp: Experiment, seed: int):
  """Random params, created directly with their shardings."""
  with exp.context():
    init = jax.jit(lambda key: nn.unbox(clip.init_params(exp.model, key)),
                   out_shardings=exp.param_shardings)
    return init(jax.random.key(seed))
