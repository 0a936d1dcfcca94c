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
from jax.experimental import multihost_utils

from mgtil_jax import checkpoint as ckpt_lib
from mgtil_jax import methods, reference, report, sharding
from mgtil_jax import validation, workdir as workdir_lib  # issue 13 hook
from mgtil_jax import steps as steps_lib
from mgtil_jax.data import pipeline as pipeline_lib
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.data import synth
from mgtil_jax.models import adapters, clip
from mgtil_jax.retrieval.sampler import prefetch
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
    return methods.state_trees(self.method, self.config.method_kwargs)


def validate_config(config, workdir: str | None = None):
  """Fails fast, before any data or device work, naming the bad field."""
  validation.validate(config, workdir)  # issue 13 hook: validation.py


def _sync(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _is_lead() -> bool:
  return jax.process_index() == 0


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
    words = set(synth.vocabulary())
    for text in texts:  # split as synth.vocabulary() splits its texts
      text = text.replace('{', ' ').replace('}', ' ').lower()
      words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text))
    if _is_lead():
      write_vocab(sorted(words), vocab_file)
    _sync('vocab')
  model_cfg = clip.get_preset(config.model.preset)
  tok = Tokenizer(vocab_file, model_cfg.text.context_length)
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
  if _is_lead():
    task_list = tasks_lib.load_benchmark(config.data, cache)
  _sync('data')
  if not _is_lead():
    task_list = tasks_lib.load_benchmark(config.data, cache)
  tokenizer = build_tokenizer(
      config, workdir, [c for t in task_list for c in t.class_names] +
      list(config.prompts.templates))
  adapter = (adapters.config_for_method(method.name, num_tasks=len(task_list))
             if method.adapter else None)
  model = clip.make_model(clip.get_preset(config.model.preset),
                          dtype=config.model.dtype, remat=config.model.remat,
                          adapter=adapter)
  abstract = jax.eval_shape(functools.partial(clip.init_params, model),
                            jax.random.key(0))
  param_shardings = sharding.param_shardings(abstract, mesh, rules)
  return Experiment(config, workdir, mesh, rules, model, tokenizer, task_list,
                    method, param_shardings)


def backbone_experiment(exp: Experiment) -> Experiment:
  """The same experiment with the plain CLIP (no adapters): adapter methods
  pretrain / load their frozen backbone through it."""
  model = clip.make_model(exp.model.cfg, dtype=exp.config.model.dtype,
                          remat=exp.config.model.remat)
  abstract = jax.eval_shape(functools.partial(clip.init_params, model),
                            jax.random.key(0))
  return dataclasses.replace(
      exp, model=model, method=methods.METHODS['ft'],
      param_shardings=sharding.param_shardings(abstract, exp.mesh, exp.rules))


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
  scale optionally frozen (the ZSCL recipe)."""
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
               if exp.method.adapter else None)
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


def evaluate_all(exp: Experiment, evaluate, params, desc: str):
  accs, aucs = [], []
  for t, task in enumerate(report.progress(exp.tasks, desc=desc,
                                           leave=False)):
    acc, auc, _ = evaluate(params, task, t)
    accs.append(acc)
    aucs.append(auc)
  return accs, aucs


# ------------------------------------------------------------- pretraining --


def pretrain(exp: Experiment, writer) -> dict:
  """Contrastive pretraining of the initial model on the benchmark's
  image-caption corpus; cached (and resumable) in the workdir."""
  cfg = exp.config
  pcfg = cfg.pretrain
  key = tasks_lib._config_key(dict(   # pylint: disable=protected-access
      pretrain=pcfg.to_dict(), model=cfg.model.preset, seed=cfg.seed,
      data=dict(size=cfg.data.image_size, seed=cfg.data.seed), version=1))
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
    params = init_params(exp, cfg.seed)
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
                                    cfg.seed, stream=10_000)
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
  if exp.method.adapter:  # a frozen backbone + freshly initialised adapters
    backbone = initial_params(backbone_experiment(exp), writer)
    fresh = init_params(exp, exp.config.seed)
    merged = adapters.merge_backbone(fresh, backbone)
    return jax.device_put(merged, exp.param_shardings)
  init = exp.config.model.init
  if init == 'random':
    return init_params(exp, exp.config.seed)
  if init == 'pretrain':
    return pretrain(exp, writer)
  # A BiomedCLIP checkpoint directory / file (see models/checkpoint_init.py).
  from mgtil_jax.models import checkpoint_init  # pylint: disable=g-import-not-at-top
  return checkpoint_init.load_params(
      exp.config, exp.param_shardings,
      lambda: init_params(exp, exp.config.seed))


# ------------------------------------------------- method-specific pieces --


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def initial_trees(exp: Experiment, params) -> dict:
  """The extra state trees at the start of the sequence (see
  methods.state_trees): copies of the initial params, a zero Fisher."""
  out = {}
  for name in exp.state_trees:
    if name == 'fisher':
      out[name] = jax.tree.map(jnp.zeros_like, params)
    else:
      out[name] = _copy(params)
  return out


def make_reference_source(exp: Experiment):
  """The method's reference-batch source (None when it needs none):
  the retrieval memory for PRIMED ('retrieval_dyn' = Dynamic Siphon,
  'retrieval_uni' = proportional keywords), or a fixed random subset of the
  benchmark's corpus ('corpus', ZSCL) of PRIMED_uni's size."""
  kind = exp.method.reference
  if kind is None:
    return None
  kw = exp.config.method_kwargs
  if kind.startswith('retrieval'):
    from mgtil_jax import retrieval  # pylint: disable=g-import-not-at-top
    exp.config.retrieval.mode = kind.split('_')[1]
    return retrieval.build_reference_source(exp, kw.reference_batch_size)
  if exp.config.data.name != 'mgtil_synth':
    raise ValueError(f"config.method_kwargs.reference: 'corpus' needs an "
                     f'image-caption corpus; benchmark '
                     f'{exp.config.data.name!r} has none built in (use '
                     'retrieval_uni with config.retrieval.corpus.sources)')
  images, captions = tasks_lib.synth_corpus(
      exp.config.data, exp.config.pretrain.corpus_per_class,
      os.path.join(exp.cache_dir, 'data'))
  # The same size as PRIMED_uni's reference set, so distillation methods
  # compete on equal footing; a fixed seed makes the subset identical across
  # methods.
  pick = np.random.default_rng([exp.config.seed, 7]).permutation(
      len(captions))[:exp.config.retrieval.reference_size]
  return reference.FixedReferenceSet(
      images[pick], exp.tokenizer([captions[i] for i in pick]),
      kw.reference_batch_size, exp.config.seed)


def memory_prompts(exp: Experiment, task_index: int):
  """iCaRL: the prompts of every class of tasks before `task_index`, and for
  each of those tasks its slice of them."""
  names, spans = [], []
  for task in exp.tasks[:task_index]:
    spans.append((len(names), len(names) + len(task.class_names)))
    names.extend(task.class_names)
  return exp.prompt_tokens(names), spans


def memory_batch(exp: Experiment, exemplars: dict, task_index: int,
                 step: int, spans) -> dict:
  """A batch of stored exemplars of earlier tasks, labels into the union of
  their classes, each row masked to its own task's classes."""
  pool = [(t, int(i)) for t in range(task_index)
          for i in exemplars[str(t)]]
  size = exp.config.train.batch_size
  idx = tasks_lib.batch_indices(len(pool), size, step, exp.config.seed,
                                stream=30_000 + task_index)
  num_classes = spans[-1][1]
  images, labels = [], np.zeros(size, np.int32)
  mask = np.zeros((size, num_classes), bool)
  for row, k in enumerate(idx):
    t, i = pool[k]
    lo, hi = spans[t]
    images.append(exp.tasks[t].train_images[i])
    labels[row] = lo + exp.tasks[t].train_labels[i]
    mask[row, lo:hi] = True
  return {'mem_image': np.stack(images), 'mem_label': labels,
          'mem_mask': mask}


def _chunks(array, size: int):
  """Consecutive slices of at most `size` rows (task-end passes over a
  task's training images)."""
  return (array[s:s + size] for s in range(0, len(array), size))


def herding(features: np.ndarray, m: int) -> list[int]:
  """iCaRL's herding: greedily picks m rows whose running mean stays closest
  to the mean of all rows (features L2-normalised)."""
  f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True),
                            1e-12)
  mu = f.mean(0)
  chosen, total = [], np.zeros_like(mu)
  for k in range(min(m, len(f))):
    gaps = np.linalg.norm(mu - (total + f) / (k + 1), axis=1)
    gaps[chosen] = np.inf
    i = int(np.argmin(gaps))
    chosen.append(i)
    total += f[i]
  return chosen


def select_exemplars(exp: Experiment, params, task) -> list[int]:
  """Herding per class on the image features of the model after the task."""
  encode = jax.jit(lambda p, x: exp.model.apply(
      {'params': p}, tasks_lib.preprocess(x), method=clip.CLIP.encode_image))
  feats = []
  bs = exp.config.eval.batch_size
  with exp.context():
    for images in _chunks(task.train_images, bs):
      feats.append(np.asarray(encode(params, images)))
  feats = np.concatenate(feats)
  out = []
  per_class = exp.config.method_kwargs.exemplars_per_class
  for c in range(len(task.class_names)):
    members = np.flatnonzero(task.train_labels == c)
    out.extend(members[herding(feats[members], per_class)].tolist())
  return out


def ewc_fisher(exp: Experiment, params, task, task_index: int, prompts):
  """EWC's diagonal Fisher of the finished task: mean over
  `ewc_batches` batches of the squared CE gradient."""
  fisher_fn = steps_lib.make_fisher_fn(exp)
  n = exp.config.method_kwargs.ewc_batches
  total = None
  with exp.context():
    for b in range(n):
      batch = exp.put_batch(task_batch(task, 10_000 + b,
                                       exp.config.train.batch_size,
                                       exp.config.seed, task_index))
      f = fisher_fn(params, batch, {'task': prompts})
      total = f if total is None else jax.tree.map(jnp.add, total, f)
  return jax.tree.map(lambda x: x / n, total)


@functools.partial(jax.jit, donate_argnums=(0,))
def _running_mean(mean, params, count):
  """(mean * count + params) / (count + 1), leafwise."""
  return jax.tree.map(lambda m, p: (m * count + p) / (count + 1), mean,
                      params)


@jax.jit
def _interpolate(before, after, alpha):
  """(1 - alpha) * before + alpha * after, leafwise (WiSE-FT)."""
  return jax.tree.map(lambda b, a: (1 - alpha) * b + alpha * a, before, after)


def begin_task(exp: Experiment, state: dict, opt_init):
  """A task starts: fresh optimiser; anchor / ensemble = params now."""
  state['opt'] = opt_init(state['params'])
  for name in ('anchor', 'ensemble'):
    if name in state:
      state[name] = _copy(state['params'])
  return state


def end_task(exp: Experiment, state: dict, meta: dict, t: int, prompts):
  """Post-task updates of the methods (all before the task's evaluation)."""
  method, kw = exp.method, exp.config.method_kwargs
  if method.weight_ensemble:  # ZSCL: the task's result is the ensemble
    state['ensemble'] = _running_mean(state['ensemble'], state['params'],
                                      meta['ensemble_count'])
    state['params'] = _copy(state['ensemble'])
  if method.wise:
    state['params'] = _interpolate(state['anchor'], state['params'],
                                   kw.wise_alpha)
  if method.regularizer == 'ewc':
    fisher = ewc_fisher(exp, state['params'], exp.tasks[t], t, prompts)
    state['fisher'] = jax.tree.map(jnp.add, state['fisher'], fisher)
  if method.memory:
    meta.setdefault('exemplars', {})[str(t)] = select_exemplars(
        exp, state['params'], exp.tasks[t])
  if method.adapter:
    state['params'] = adapter_task_end(exp, state['params'], t, prompts)
  return state


def adapter_task_end(exp: Experiment, params, t: int, prompts):
  """MoE-Adapters: freeze the task's most used experts; DIKI: fit the
  task's feature Gaussian; both: mark the task trained."""
  task, model = exp.tasks[t], exp.model
  bs = exp.config.eval.batch_size
  params = adapters.mark_task_trained(params, t)
  with exp.context():
    if exp.method.adapter == 'moe':
      counts_fn = jax.jit(lambda p, x, tok: adapters.expert_counts(
          model, p, tasks_lib.preprocess(x), tok, t))
      counts = None
      for images in _chunks(task.train_images, bs):
        c = jax.device_get(counts_fn(params, images, prompts))
        counts = c if counts is None else jax.tree.map(np.add, counts, c)
      params = adapters.freeze_experts(params, counts,
                                       model.adapter.freeze_top)
    else:
      feats_fn = jax.jit(lambda p, x: adapters.calibration_features(
          model, p, tasks_lib.preprocess(x)))
      feats = np.concatenate([
          np.asarray(feats_fn(params, images))
          for images in _chunks(task.train_images, bs)])
      params = adapters.set_calibration(params, t,
                                        adapters.fit_calibration(feats))
  return jax.device_put(params, exp.param_shardings)


# ------------------------------------------------------------ the sequence --


@workdir_lib.guarded  # issue 13: validate, lock, fingerprint, finish saves
def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole continual experiment; returns the results."""
  wall_start = time.time()
  exp = setup(config, workdir)
  workdir = exp.workdir  # absolute: orbax requires absolute paths
  writer = report.summary_writer(workdir) if _is_lead() else None
  cfg = exp.config
  kw = cfg.method_kwargs
  num_tasks, steps = len(exp.tasks), cfg.train.steps_per_task
  method = exp.method
  evaluate = make_evaluator(exp)
  if method.joint:  # one pass over all tasks: the multi-task upper bound
    num_phases, steps = 1, steps * num_tasks
  else:
    num_phases = num_tasks

  labels = None
  if method.adapter:  # only adapter leaves train, at the adapters' own lr
    labels = adapters.optimizer_labels(nn.unbox(jax.eval_shape(
        functools.partial(clip.init_params, exp.model), jax.random.key(0))),
                                       method.name)
  tx = make_optimizer(lr=kw.adapter_lr if method.adapter else cfg.train.lr,
                      steps=steps, warmup_steps=cfg.train.warmup_steps,
                      weight_decay=cfg.train.weight_decay,
                      freeze_logit_scale=cfg.train.freeze_logit_scale,
                      labels=labels)
  shardings_ = state_shardings(exp, tx, exp.state_trees)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               keep=cfg.checkpoint.keep)
  opt_init = jax.jit(tx.init, out_shardings=shardings_['opt'])
  latest = ckpt.latest_step()

  if latest is None:
    params = initial_params(exp, writer)
    zs_acc, zs_auc = evaluate_all(exp, evaluate, params, 'zero-shot eval')
    meta = {'task': 0, 'step': 0, 'zero_shot': zs_acc, 'zero_shot_auc': zs_auc,
            'acc_rows': [], 'auc_rows': [], 'train_curves': [],
            'elapsed': 0.0, 'ensemble_count': 1, 'reference': []}
    state = {'params': params, 'opt': opt_init(params),
             **initial_trees(exp, params)}
    report.scalars(writer, 'zero_shot', dict(zip(
        [t.name for t in exp.tasks], zs_acc)), 0)
    ckpt.save(0, state, meta)
    prior = 0.0
  else:
    abstract = jax.eval_shape(lambda: _fresh_state(exp, tx, exp.state_trees))
    state, meta = ckpt.restore(
        latest, ckpt_lib.abstract_like(abstract, shardings_))
    log.info('resumed from step %d (task %d, step %d)', latest, meta['task'],
             meta['step'])
    prior = meta['elapsed']
  elapsed = lambda: prior + time.time() - wall_start

  source = make_reference_source(exp) if method.trains else None
  step_fn = make_task_step(exp, tx, shardings_)
  for t in range(meta['task'], num_phases):
    task = exp.tasks[t]
    start = meta['step']
    name = 'joint' if method.joint else task.name
    if method.trains:
      if start == 0:  # a task starts: fresh optimiser, anchor = params now
        state = begin_task(exp, state, opt_init)
        meta['ensemble_count'] = 1
      if source is not None:  # (re)builds the same set on a resume
        stats = source.prepare(t, steps_lib.teacher_params(
            state, kw.get('teacher', 'previous')))
        if start == 0:
          meta['reference'].append(stats)
      prompts = {'task': exp.replicated(exp.prompt_tokens(task.class_names))}
      if method.adapter:
        prompts['task_id'] = exp.replicated(np.int32(t))
      spans = None
      if method.memory and t > 0:
        tokens, spans = memory_prompts(exp, t)
        prompts['memory'] = exp.replicated(tokens)
      if method.joint:
        all_prompts = [exp.replicated(exp.prompt_tokens(x.class_names))
                       for x in exp.tasks]
      bar = report.progress(range(start, steps), initial=start, total=steps,
                            desc=f'task {t + 1}/{num_phases} {name}')
      # The loss curve so far survives a mid-task resume through `meta`.
      curve = meta.setdefault('partial_curve', []) if start else []
      meta['partial_curve'] = curve
      # Joint training draws from every task in turn (stateless sampler).
      batches = (TaskBatches(exp, task, t, start, meta.get('pipeline'))
                 if not method.joint else None)
      # Reference batches are built and placed ahead on a host thread.
      references = (prefetch(source, t, range(start, steps), exp.put_batch)
                    if source is not None else None)
      with exp.context():
        for s in bar:
          if method.joint:  # round-robin over tasks, each with its prompts
            task_now = s % num_tasks
            batch = exp.put_batch(task_batch(
                exp.tasks[task_now], s // num_tasks, cfg.train.batch_size,
                cfg.seed, task_now))
            prompts = {'task': all_prompts[task_now]}
          else:
            batch = next(batches)
          if references is not None:
            ref = next(references)
            batch = dict(batch, ref_image=ref['image'],
                         ref_tokens=ref['tokens'])
          if spans is not None:
            batch = dict(batch, **exp.put_batch(
                memory_batch(exp, meta['exemplars'], t, s, spans)))
          if method.adapter:  # gating noise keyed by the global step
            prompts['step'] = exp.replicated(np.int32(t * steps + s))
          state, m = step_fn(state, batch, prompts)
          if method.weight_ensemble and (s + 1) % kw.we_every == 0 and (
              s + 1 < steps):
            state['ensemble'] = _running_mean(
                state['ensemble'], state['params'], meta['ensemble_count'])
            meta['ensemble_count'] += 1
          if (s + 1) % cfg.train.log_every == 0 or s + 1 == steps:
            m = jax.device_get(m)
            # issue 13 hook: a NaN loss stops the run, naming the step
            ckpt_lib.check_finite(m, f'task {t + 1} ({name}) step {s + 1}')
            bar.set_postfix(loss=f"{m['loss']:.3f}",
                            acc=f"{m['train_accuracy']:.2f}")
            report.scalars(writer, f'train/{name}', m, t * steps + s + 1)
            curve.append([s + 1, float(m['loss'])])
          if (s + 1) % cfg.checkpoint.every_steps == 0 and s + 1 < steps:
            meta.update(step=s + 1, elapsed=elapsed(),
                        pipeline=batches and batches.get_state())
            ckpt.save(t * steps + s + 1, state, meta)
      if batches is not None:
        batches.close()
      if references is not None:
        references.close()
      meta.pop('pipeline', None)
      state = end_task(exp, state, meta, t, prompts['task'])
      meta['train_curves'].append({'task': name,
                                   'loss': meta.pop('partial_curve')})
    if method.trains or t == 0:
      acc, auc = evaluate_all(exp, evaluate, state['params'],
                              f'eval after task {t + 1}')
    else:  # zero-shot: the model never changes, every row is the same
      acc, auc = list(meta['zero_shot']), list(meta['zero_shot_auc'])
    meta['acc_rows'].append(acc)
    meta['auc_rows'].append(auc)
    report.scalars(writer, f'eval/after_{t + 1}', dict(
        zip([x.name for x in exp.tasks], acc)), (t + 1) * steps)
    meta.update(task=t + 1, step=0, elapsed=elapsed())
    ckpt.save((t + 1) * steps, state, meta)
  ckpt.close()

  results = report.build_results(exp, meta, wall_time=elapsed())
  if _is_lead():
    report.write_outputs(workdir, results)
    print(report.format_table(results))
  if writer is not None:
    writer.close()
  _sync('done')
  return results


def _fresh_state(exp: Experiment, tx, trees=()):
  """A state of the right structure (used under eval_shape as a restore
  target)."""
  params = nn.unbox(clip.init_params(exp.model, jax.random.key(0)))
  state = {'params': params, 'opt': tx.init(params)}
  for name in trees:
    state[name] = params
  return state
