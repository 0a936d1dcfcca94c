"""The initial model: contrastive pretraining on the benchmark's corpus
(cached and resumable, keyed by `config.pretrain.seed`), random params, a
BiomedCLIP checkpoint, or the method's own (adapters on a frozen
backbone)."""

from __future__ import annotations

import contextlib
import functools
import os

import jax

from mgtil_jax.training.setup import Experiment
from mgtil_jax.core import caches
from mgtil_jax.core import hosts
from mgtil_jax.core import logs
from mgtil_jax.data import synth
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.training import checkpoint as ckpt_lib
from mgtil_jax.training import steps as steps_lib
from mgtil_jax.training.optimizer import _fresh_state, make_optimizer, state_shardings
from mgtil_jax.training.setup import backbone_experiment, init_params, start_seed


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
  directory = os.path.join(exp.cache_dir, f'pretrain_{key}')
  # One build per entry: a second run wanting the same start waits, then
  # restores it (process 0 locks for its run; core/caches.py).
  with (caches.cache_lock(directory) if hosts.is_lead()
        else contextlib.nullcontext()):
    return _pretrain_into(exp, writer, directory)


def _pretrain_into(exp: Experiment, writer, directory: str) -> dict:
  """Pretraining checkpointed in `directory`: restored when finished,
  resumed when partial, else run from the start."""
  cfg = exp.config
  pcfg = cfg.pretrain
  ckpt = ckpt_lib.Checkpointer(directory, keep=1)
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
  step_fn = steps_lib.make_pretrain_step(exp, tx, shardings_)
  bar = logs.progress(range(latest, pcfg.steps), desc='pretrain (corpus)',
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
        logs.scalars(writer, 'pretrain', m, step + 1)
      if (step + 1) % cfg.checkpoint.every_steps == 0 or step + 1 == pcfg.steps:
        ckpt.save(step + 1, state, {'step': step + 1})
  ckpt.close()
  return state['params']


def initial_params(exp: Experiment, writer):
  # A method may build its own start (adapters: a frozen backbone, the plain
  # CLIP's start, plus fresh adapters).
  params = exp.method.initial_params(
      exp, backbone=lambda: initial_params(backbone_experiment(exp), writer),
      fresh=functools.partial(init_params, exp))
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


def initial_trees(exp: Experiment, params) -> dict:
  """The method's extra state trees at the start of the sequence."""
  return exp.method.init_trees(params)
