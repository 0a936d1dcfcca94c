"""The continual trainer: setup, jitted sharded steps, the task loop.

The train state is a plain dict pytree `{'params', 'opt'[, 'anchor']}`; each
step is one jitted pure function with explicit in/out shardings over the mesh
of `config.mesh`, with the logical -> mesh rules of `config.sharding_rules`.
`run(config, workdir)` is the whole experiment; every piece is importable on
its own (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgtil_jax import checkpoint as ckpt_lib
from mgtil_jax import hosts, learned, losses, methods, report, sharding
from mgtil_jax import validation, workdir as workdir_lib
from mgtil_jax import steps as steps_lib
from mgtil_jax.data import pipeline as pipeline_lib
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.data import synth
from mgtil_jax.models import clip
from mgtil_jax.tokenizer import Tokenizer, write_vocab

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ setup --


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


def validate_config(config, workdir: str | None = None):
  """Fails fast, before any data or device work, naming the bad field."""
  validation.validate(config, workdir)  # issue 13 hook: validation.py


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
  model_cfg = clip.get_preset(config.model.preset)
  tok = Tokenizer(vocab_file, model_cfg.text.context_length,
                  bucket=config.get('tokenizer', {}).get('bucket', 16))
  if tok.vocab_size > model_cfg.text.vocab_size:
    raise ValueError(f'tokenizer: vocab size {tok.vocab_size} exceeds the '
                     f'model preset {config.model.preset!r} text vocab '
                     f'({model_cfg.text.vocab_size})')
  return tok


def setup(config, workdir: str) -> Experiment:
  validate_config(config, workdir)
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
    task_list = tasks_lib.load_benchmark(config.data, cache)
  _sync('data')
  if not hosts.is_lead():
    task_list = tasks_lib.load_benchmark(config.data, cache)
  _check_class_balance(config, task_list)
  tokenizer = build_tokenizer(
      config, workdir, [c for t in task_list for c in t.class_names] +
      list(config.prompts.templates))
  adapter = method.adapter(len(task_list))
  model = clip.make_model(clip.get_preset(config.model.preset),
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


# -------------------------------------------------------------- optimiser --


def make_optimizer(*, lr: float, steps: int, warmup_steps: int,
                   weight_decay: float, freeze_logit_scale: bool,
                   labels=None):
  """AdamW with linear warm-up then cosine decay to 0 over `steps`; the logit
  scale optionally frozen (the recipe of docs/methods.md)."""
  warmup_steps = min(warmup_steps, max(steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps, max(steps, warmup_steps + 1), end_value=0.0)
  adamw = optax.adamw(schedule, weight_decay=weight_decay)
  if labels is not None:  # adapter methods: 'train' / 'frozen' per leaf
    return optax.multi_transform({'train': adamw,
                                  'frozen': optax.set_to_zero()}, labels)
  if not freeze_logit_scale:
    return adamw
  # A label prefix tree (not a function) so optax.tree_map_params can map
  # shardings over the state.
  labels = {'visual': 'train', 'text': 'train', 'logit_scale': 'frozen'}
  return optax.multi_transform({'train': adamw, 'frozen': optax.set_to_zero()},
                               labels)


def state_shardings(exp: Experiment, tx, trees=()):
  """Shardings of `{'params', 'opt', *trees}`: optimiser moments follow
  their params; counts and other scalars are replicated; every extra tree
  (anchor, initial, fisher, ensemble) is sharded like the params."""
  abstract_params = nn.unbox(jax.eval_shape(
      functools.partial(clip.init_params, exp.model), jax.random.key(0)))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt = sharding.shardings_like_params(abstract_opt, abstract_params,
                                       exp.param_shardings, exp.mesh)
  out = {'params': exp.param_shardings, 'opt': opt}
  for name in trees:
    out[name] = exp.param_shardings
  return out


# ------------------------------------------------------------------ steps --

# The step builders live in steps.py; re-exported for callers of train.*.
make_task_step = steps_lib.make_task_step
make_pretrain_step = steps_lib.make_pretrain_step


def task_batch(task: tasks_lib.TaskData, step: int, batch_size: int,
               seed: int, task_index: int) -> dict:
  idx = tasks_lib.batch_indices(len(task.train_labels), batch_size, step,
                                seed, stream=task_index)
  return {'image': task.train_images[idx], 'label': task.train_labels[idx]}


class TaskBatches:
  """Device batches of task `task_index` from step `start`, from the grain
  pipeline (`config.data.pipeline = 'grain'`: each process loads only its
  rows of the global batch; `get_state()` goes into the checkpoint record)
  or from the stateless sampler (`'stateless'`: every process builds the
  global batch, `get_state()` is None)."""

  def __init__(self, exp: Experiment, task, task_index: int, start: int,
               state: dict | None = None):
    cfg = exp.config
    self._exp, self._task, self._t, self._step = exp, task, task_index, start
    self._size = cfg.train.batch_size
    kind = cfg.data.get('pipeline', 'grain')
    if kind not in ('grain', 'stateless'):
      raise ValueError(f"config.data.pipeline: expected 'grain' or "
                       f"'stateless', got {kind!r}")
    self._pipe = None
    if kind == 'grain':
      self._rows = pipeline_lib.rows_of_sharding(
          sharding.batch_sharding(exp.mesh, exp.rules, 1), self._size)
      self._pipe = pipeline_lib.TaskPipeline(
          task, self._size, cfg.seed, task_index, rows=self._rows,
          worker_count=cfg.data.get('workers', 0))
      if state is None:  # a fresh task, or a record from a stateless run
        state = dict(self._pipe.get_state(), next_batch=start)
      if state.get('next_batch') != start:
        raise ValueError(f'checkpoint: data pipeline at batch '
                         f'{state.get("next_batch")} but the task at step '
                         f'{start}')
      self._pipe.set_state(state)

  def __next__(self) -> dict:
    self._step += 1
    if self._pipe is None:
      return self._exp.put_batch(task_batch(
          self._task, self._step - 1, self._size, self._exp.config.seed,
          self._t))
    return pipeline_lib.put_rows(next(self._pipe), self._exp.mesh,
                                 self._exp.rules, self._rows, self._size)

  def get_state(self):
    return None if self._pipe is None else self._pipe.get_state()

  def close(self):
    if self._pipe is not None:
      self._pipe.close()


# ------------------------------------------------------------- evaluation --


def make_evaluator(exp: Experiment):
  """`evaluate(params, task) -> (accuracy, macro_auc, predictions)`."""
  templates = len(exp.config.prompts.templates)
  repl = sharding.replicated(exp.mesh)
  img_sh = sharding.batch_sharding(exp.mesh, exp.rules, 4)

  @functools.partial(jax.jit, out_shardings=repl)
  def class_emb(params, prompt_tokens, task_id):
    return clip.class_embeddings(exp.model, params, prompt_tokens, templates,
                                 task_id=task_id)

  @functools.partial(jax.jit, in_shardings=(None, img_sh, repl, None),
                     out_shardings=repl)
  def logits_fn(params, images, class_embeddings, task_id):
    img = clip.l2_normalize(exp.model.apply(
        {'params': params}, tasks_lib.preprocess(images), task_id=task_id,
        method=clip.CLIP.encode_image))
    return jnp.exp(params['logit_scale']) * img @ class_embeddings.T

  from mgtil_jax import metrics  # pylint: disable=g-import-not-at-top
  bs = exp.config.eval.batch_size
  n_shards = exp.mesh.shape['data'] * exp.mesh.shape['fsdp']
  bs = max(n_shards, bs // n_shards * n_shards)

  def evaluate(params, task: tasks_lib.TaskData, task_index: int = 0):
    # Adapter models route by the task id (known at test time in MGTIL).
    task_id = (jnp.asarray(task_index, jnp.int32)
               if exp.model.adapter is not None else None)
    with exp.context():
      cls = class_emb(params, exp.replicated(
          exp.prompt_tokens(task.class_names)), task_id)
      n = len(task.test_labels)
      out = []
      for start in range(0, n, bs):
        chunk = task.test_images[start:start + bs]
        pad = bs - len(chunk)
        if pad:  # fixed shapes: one compilation per task shape, not per size
          chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                                  chunk.dtype)])
        logits = logits_fn(params, exp.put_batch({'x': chunk})['x'], cls,
                           task_id)
        out.append(np.asarray(logits)[:bs - pad])
    logits = np.concatenate(out)
    preds = logits.argmax(-1)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    return (metrics.accuracy(task.test_labels, preds),
            metrics.macro_auc(task.test_labels, probs), preds)

  return evaluate


def evaluate_all(exp: Experiment, evaluate, params, desc: str,
                 predictions: dict | None = None):
  """Accuracy and AUC of every task; each task's predictions go into
  `predictions` (task index -> int[N]) when it is given."""
  accs, aucs = [], []
  for t, task in enumerate(report.progress(exp.tasks, desc=desc,
                                           leave=False)):
    acc, auc, preds = evaluate(params, task, t)
    accs.append(acc)
    aucs.append(auc)
    if predictions is not None:
      predictions[t] = preds
  return accs, aucs


# ------------------------------------------------------------- pretraining --


def pretrain(exp: Experiment, writer) -> dict:
  """Contrastive pretraining of the initial model on the benchmark's
  image-caption corpus; cached (and resumable) in the workdir."""
  cfg = exp.config
  pcfg = cfg.pretrain
  key = tasks_lib._config_key(dict(   # pylint: disable=protected-access
      pretrain=pcfg.to_dict(), model=cfg.model.preset, seed=start_seed(cfg),
      data=dict(size=cfg.data.image_size, seed=cfg.data.seed),
      # Word ids: a vocabulary with other class names shifts them, and the
      # cached text embeddings would then belong to other words.
      vocab=exp.tokenizer.vocab_digest(), version=1,
      # The corpus's contents, not only its regime's name: redefining a
      # regime's corpus must not reuse a model pretrained on the old one.
      corpus=synth.corpus_spec(cfg.data.get('regime', 'same_scanner'))))
  ckpt = ckpt_lib.Checkpointer(os.path.join(exp.cache_dir, f'pretrain_{key}'),
                               keep=1)
  tx = make_optimizer(lr=pcfg.lr, steps=pcfg.steps,
                      warmup_steps=pcfg.warmup_steps,
                      weight_decay=pcfg.weight_decay, freeze_logit_scale=False)
  shardings_ = state_shardings(exp, tx)
  latest = ckpt.latest_step()
  if latest is not None:
    abstract = jax.eval_shape(lambda: _fresh_state(exp, tx))
    state, restored_meta = ckpt.restore(latest, ckpt_lib.abstract_like(
        abstract, shardings_))
    latest = restored_meta['step']  # issue 13: may fall back past a corrupt one
    if latest >= pcfg.steps:
      ckpt.close()
      return state['params']
  else:
    params = init_params(exp, start_seed(cfg))
    with exp.context():
      opt = jax.jit(tx.init, out_shardings=shardings_['opt'])(params)
    state, latest = {'params': params, 'opt': opt}, 0

  cache = os.path.join(exp.cache_dir, 'data')
  images, captions = tasks_lib.synth_corpus(cfg.data, pcfg.corpus_per_class,
                                            cache)
  tokens = exp.tokenizer(captions)
  step_fn = make_pretrain_step(exp, tx, shardings_)
  bar = report.progress(range(latest, pcfg.steps), desc='pretrain (corpus)',
                        initial=latest, total=pcfg.steps)
  with exp.context():
    for step in bar:
      idx = tasks_lib.batch_indices(len(captions), pcfg.batch_size, step,
                                    start_seed(cfg), stream=10_000)
      state, m = step_fn(state, exp.put_batch(
          {'image': images[idx], 'tokens': tokens[idx]}))
      if (step + 1) % cfg.train.log_every == 0:
        m = jax.device_get(m)
        ckpt_lib.check_finite(m, f'pretraining step {step + 1}')  # issue 13
        bar.set_postfix(loss=f"{m['loss']:.3f}")
        report.scalars(writer, 'pretrain', m, step + 1)
      if (step + 1) % cfg.checkpoint.every_steps == 0 or step + 1 == pcfg.steps:
        ckpt.save(step + 1, state, {'step': step + 1})
  ckpt.close()
  return state['params']


def initial_params(exp: Experiment, writer):
  params = exp.method.initial_params(exp, writer)  # e.g. adapters
  if params is not None:
    return params
  init = exp.config.model.init
  if init == 'random':
    return init_params(exp, start_seed(exp.config))
  if init == 'pretrain':
    return pretrain(exp, writer)
  # A BiomedCLIP checkpoint directory / file (see models/checkpoint_init.py).
  from mgtil_jax.models import checkpoint_init  # pylint: disable=g-import-not-at-top
  return checkpoint_init.load_params(
      exp.config, exp.param_shardings,
      lambda: init_params(exp, start_seed(exp.config)))


# ----------------------------------------------------------- task streams --


def initial_trees(exp: Experiment, params) -> dict:
  """The method's extra state trees at the start of the sequence."""
  return exp.method.init_trees(params)


class _TaskStream:
  """(batch, prompts) of one task: its batches, with the task's prompts."""

  def __init__(self, batches: TaskBatches):
    self._batches = batches

  def __next__(self):
    return next(self._batches), None

  def get_state(self):
    return self._batches.get_state()

  def close(self):
    self._batches.close()


# ------------------------------------------------------------ the sequence --


@workdir_lib.guarded  # issue 13: validate, lock, fingerprint, finish saves
def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole continual experiment; returns the results.

  Init or restore, then for each phase (a task, or one phase over
  all tasks): the method's task-begin actions, the steps, its task-end
  actions, evaluation, a checkpoint. Everything a method does is a hook of
  `exp.method` (docs/methods.md)."""
  wall_start = time.time()
  exp = setup(config, workdir)
  workdir = exp.workdir  # absolute: orbax requires absolute paths
  writer = report.summary_writer(workdir) if hosts.is_lead() else None
  cfg, method = exp.config, exp.method
  num_phases, steps = method.phases(len(exp.tasks), cfg.train.steps_per_task)
  evaluate = make_evaluator(exp)
  tx = build_optimizer(exp, steps)
  shardings_ = state_shardings(exp, tx, exp.state_trees)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               keep=cfg.checkpoint.keep)
  opt_init = jax.jit(tx.init, out_shardings=shardings_['opt'])
  state, meta = _init_or_restore(exp, tx, shardings_, ckpt, evaluate, writer,
                                 opt_init)
  prior = meta['elapsed']
  elapsed = lambda: prior + time.time() - wall_start

  step_fn = make_task_step(exp, tx, shardings_) if method.trains else None
  for t in range(meta['task'], num_phases):
    if method.trains:
      state = train_phase(exp, state, meta, t, steps, step_fn, opt_init,
                          ckpt, writer, elapsed, num_phases)
    if method.trains or t == 0:
      preds = {}
      acc, auc = evaluate_all(exp, evaluate, state['params'],
                              f'eval after task {t + 1}', preds)
      if method.trains:  # the tasks this phase trained: did they learn?
        trained = [t] if num_phases == len(exp.tasks) else range(len(preds))
        meta.setdefault('not_learned', []).extend(
            learned.check_phase(exp.tasks, trained, preds))
    else:  # no training: the model never changes, every row is the same
      acc, auc = list(meta['zero_shot']), list(meta['zero_shot_auc'])
    meta['acc_rows'].append(acc)
    meta['auc_rows'].append(auc)
    report.scalars(writer, f'eval/after_{t + 1}', dict(
        zip([x.name for x in exp.tasks], acc)), (t + 1) * steps)
    meta.update(task=t + 1, step=0, elapsed=elapsed())
    ckpt.save((t + 1) * steps, state, meta)
  ckpt.close()

  results = report.build_results(exp, meta, wall_time=elapsed())
  if hosts.is_lead():
    report.write_outputs(workdir, results)
    print(report.format_table(results))
    print(report.final_summary(results, workdir))
  if writer is not None:
    writer.close()
  _sync('done')
  return results


def build_optimizer(exp: Experiment, steps: int):
  """The task optimiser: AdamW at config.train.lr, or the method's own lr
  and trainable-leaf labels (adapters)."""
  cfg = exp.config
  abstract = nn.unbox(jax.eval_shape(
      functools.partial(clip.init_params, exp.model), jax.random.key(0)))
  own = exp.method.optimizer(cfg, abstract) or {}
  return make_optimizer(lr=own.get('lr', cfg.train.lr), steps=steps,
                        warmup_steps=cfg.train.warmup_steps,
                        weight_decay=cfg.train.weight_decay,
                        freeze_logit_scale=cfg.train.freeze_logit_scale,
                        labels=own.get('labels'))


def _init_or_restore(exp, tx, shardings_, ckpt, evaluate, writer, opt_init):
  """A fresh state (initial params, zero-shot rows, the method's trees) and
  record, or the latest checkpoint's."""
  latest = ckpt.latest_step()
  if latest is None:
    params = initial_params(exp, writer)
    zs_acc, zs_auc = evaluate_all(exp, evaluate, params, 'zero-shot eval')
    meta = {'task': 0, 'step': 0, 'zero_shot': zs_acc, 'zero_shot_auc': zs_auc,
            'acc_rows': [], 'auc_rows': [], 'train_curves': [],
            'elapsed': 0.0, 'reference': []}
    state = {'params': params, 'opt': opt_init(params),
             **initial_trees(exp, params)}
    report.scalars(writer, 'zero_shot', dict(zip(
        [t.name for t in exp.tasks], zs_acc)), 0)
    ckpt.save(0, state, meta)
    return state, meta
  abstract = jax.eval_shape(lambda: _fresh_state(exp, tx, exp.state_trees))
  state, meta = ckpt.restore(latest, ckpt_lib.abstract_like(abstract,
                                                           shardings_))
  # A corrupt latest checkpoint falls back to an earlier one: log its own
  # task and step.
  log.info('resumed at task %d, step %d', meta['task'], meta['step'])
  return state, meta


def _log_point(curve: dict, s: int, m: dict):
  """Appends step s's loss, every loss term and every gradient share."""
  curve['loss'].append([s, float(m['loss'])])
  for k, v in m.items():
    if k.startswith('grad_share/'):
      curve['grad_share'].setdefault(k.split('/', 1)[1], []).append(
          [s, float(v)])
    elif k not in ('loss', 'grad_norm', 'train_accuracy'):
      curve['terms'].setdefault(k, []).append([s, float(v)])


def train_phase(exp, state, meta, t, steps, step_fn, opt_init, ckpt, writer,
                elapsed, num_phases):
  """Trains phase t from meta['step'] to `steps`, then the method's
  task-end actions; the record `meta` carries everything a resume needs."""
  cfg, method = exp.config, exp.method
  task, start = exp.tasks[t], meta['step']
  # One phase over every task (multi-task training) is named for all.
  name = task.name if num_phases == len(exp.tasks) else 'all_tasks'
  if start == 0:  # a task starts: fresh optimiser, the method's resets
    state['opt'] = opt_init(state['params'])
    state = method.begin_task(exp, state, meta, t)
  method.open_task(exp, state, meta, t, start)  # (re)builds reference sets
  own = exp.task_prompts(task)
  method_prompts = method.task_prompts(exp, meta, t)
  prompts = {**own, **method_prompts}  # the phase task's, for end_task
  stream = method.stream(exp, t, start, meta) or _TaskStream(
      TaskBatches(exp, task, t, start, meta.get('pipeline')))
  bar = report.progress(range(start, steps), initial=start, total=steps,
                        desc=f'task {t + 1}/{num_phases} {name}')
  # The curves so far survive a mid-task resume through `meta`.
  curve = meta.get('partial_curve') if start else None
  curve = curve or {'loss': [], 'terms': {}, 'grad_share': {}}
  meta['partial_curve'] = curve
  with exp.context():
    for s in bar:
      batch, phase_prompts = next(stream)
      batch = dict(batch, **method.extra_batch(exp, meta, t, s))
      # A stream's own prompts (joint: this step's task) replace the
      # phase task's whole set, class weights included.
      step_prompts = {**(own if phase_prompts is None else phase_prompts),
                      **method_prompts,
                      **method.step_prompts(exp, t, s, steps)}
      state, m = step_fn(state, batch, step_prompts)
      state = method.after_step(exp, state, meta, t, s, steps)
      if (s + 1) % cfg.train.log_every == 0 or s + 1 == steps:
        m = jax.device_get(m)
        # A NaN loss stops the run, naming the step (the last good
        # checkpoint stays).
        ckpt_lib.check_finite(m, f'task {t + 1} ({name}) step {s + 1}')
        bar.set_postfix(loss=f"{m['loss']:.3f}",
                        acc=f"{m['train_accuracy']:.2f}")
        report.scalars(writer, f'train/{name}', m, t * steps + s + 1)
        _log_point(curve, s + 1, m)
      if (s + 1) % cfg.checkpoint.every_steps == 0 and s + 1 < steps:
        meta.update(step=s + 1, elapsed=elapsed(), pipeline=stream.get_state())
        ckpt.save(t * steps + s + 1, state, meta)
  stream.close()
  method.close_task()
  meta.pop('pipeline', None)
  state = method.end_task(exp, state, meta, t, prompts)
  curve = meta.pop('partial_curve')
  meta['train_curves'].append({'task': name, **curve})
  return state


def _fresh_state(exp: Experiment, tx, trees=()):
  """A state of the right structure (used under eval_shape as a restore
  target)."""
  params = nn.unbox(clip.init_params(exp.model, jax.random.key(0)))
  state = {'params': params, 'opt': tx.init(params)}
  for name in trees:
    state[name] = params
  return state
