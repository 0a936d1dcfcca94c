"""The whole config checked up front, before any data, model or device work,
each failure one `UserError` naming the field and what was expected.

`validate(config, workdir)` calls each layer's own checks (methods, models,
retrieval/checks.py). `launch.py` calls it first thing and `entry.run`
(which compare and sweep use, and a notebook should) before every run;
`training.run` itself does not (docs/architecture.md).
Fields a config does not have are skipped (the benchmarks' configs differ).
`check_inputs` also checks that every path the config names exists (data
root, corpus=, pool=, generated pairs, vocab, precomputed vectors) and that a
method drawing reference batches has a corpus; checks that need the data
read (class counts, file contents) stay with the loaders.
"""

from __future__ import annotations

import glob
import math
import numbers
import os

from mgtil_jax.retrieval import checks as retrieval_checks
from mgtil_jax.core.errors import UserError, UserFileError


def _get(config, path: str):
  node = config
  for part in path.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return _MISSING
  return node


_MISSING = object()


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(path: str, expected: str, value):
  raise UserError(f'config.{path}: expected {expected}, got {value!r}')


def positive_int(path, value):
  if not _is_int(value) or value < 1:
    _fail(path, 'a positive integer', value)


def non_negative_int(path, value):
  if not _is_int(value) or value < 0:
    _fail(path, 'an integer >= 0', value)


def positive_float(path, value):
  if not _is_real(value) or not math.isfinite(value) or value <= 0:
    _fail(path, 'a finite number > 0', value)


def non_negative_float(path, value):
  if not _is_real(value) or not math.isfinite(value) or value < 0:
    _fail(path, 'a finite number >= 0', value)


def unit_interval(path, value):
  if not _is_real(value) or not 0 <= value <= 1:
    _fail(path, 'a number in [0, 1]', value)


def below_one(path, value):
  if not _is_real(value) or not 0 <= value < 1:
    _fail(path, 'a number in [0, 1)', value)


def boolean(path, value):
  if not isinstance(value, bool):
    _fail(path, 'True or False', value)


def one_of(*choices):
  def check(path, value):
    if value not in choices:
      _fail(path, 'one of ' + ', '.join(repr(c) for c in choices), value)
  return check


def mesh_axis(path, value):
  if not _is_int(value) or (value < 1 and value != -1):
    _fail(path, 'a positive integer or -1 (all remaining devices)', value)


# field -> check; a field the config lacks is skipped.
FIELDS = {
    'seed': non_negative_int,
    'train.steps_per_task': positive_int,
    'train.batch_size': positive_int,
    'train.lr': positive_float,
    'train.weight_decay': non_negative_float,
    'train.warmup_steps': non_negative_int,
    'train.label_smoothing': below_one,
    'train.freeze_logit_scale': boolean,
    'train.log_every': positive_int,
    'eval.batch_size': positive_int,
    'checkpoint.every_steps': positive_int,
    'checkpoint.keep': positive_int,
    'pretrain.seed': non_negative_int,
    'pretrain.steps': positive_int,
    'pretrain.batch_size': positive_int,
    'pretrain.lr': positive_float,
    'pretrain.warmup_steps': non_negative_int,
    'pretrain.weight_decay': non_negative_float,
    'pretrain.corpus_per_class': positive_int,
    'model.dtype': one_of('float32', 'bfloat16'),
    'model.remat': boolean,
    'data.seed': non_negative_int,
    'data.image_size': positive_int,
    'data.num_tasks': non_negative_int,
    'data.train_per_class': positive_int,
    'data.test_per_class': positive_int,
    'data.test_fraction': lambda p, v: (
        None if _is_real(v) and 0 < v < 1 else _fail(p, 'a number in (0, 1)',
                                                     v)),
    'data.workers': non_negative_int,
    'data.build_threads': positive_int,
    'data.pipeline': one_of('grain', 'stateless'),
    'mesh.data': mesh_axis,
    'mesh.fsdp': mesh_axis,
    'mesh.tensor': mesh_axis,
    'method_kwargs.alpha': non_negative_float,
    'method_kwargs.beta': non_negative_float,
    'method_kwargs.kd_temperature': positive_float,
    'method_kwargs.granularity': one_of('both', 'image', 'text'),
    'method_kwargs.teacher': one_of('previous', 'initial', 'wise'),
    'method_kwargs.regularizer': one_of('', 'dfg', 'l2', 'ewc', 'none'),
    'method_kwargs.weight_ensemble': one_of('', 'on', 'off'),
    'method_kwargs.dfg_weight': non_negative_float,
    'method_kwargs.reference': one_of('', 'corpus', 'retrieval_dyn',
                                      'retrieval_uni'),
    'method_kwargs.reference_batch_size': positive_int,
    'method_kwargs.l2_weight': non_negative_float,
    'method_kwargs.ewc_weight': non_negative_float,
    'method_kwargs.ewc_batches': positive_int,
    'method_kwargs.lwf_weight': non_negative_float,
    'method_kwargs.lwf_temperature': positive_float,
    'method_kwargs.icarl_kd_weight': non_negative_float,
    'method_kwargs.exemplars_per_class': positive_int,
    'method_kwargs.wise_alpha': unit_interval,
    'method_kwargs.we_every': positive_int,
    'method_kwargs.adapter_lr': positive_float,
    'retrieval.reference_size': positive_int,
    'retrieval.k': positive_int,
    'retrieval.a': non_negative_int,
    'retrieval.b': non_negative_int,
    'retrieval.c': non_negative_int,
    'retrieval.n': non_negative_int,
    'retrieval.embed_batch_size': positive_int,
}


def check_fields(config):
  for path, check in FIELDS.items():
    value = _get(config, path)
    if value is not _MISSING:
      check(path, value)


def check_workdir(workdir: str):
  if not workdir or not str(workdir).strip():
    raise UserError('--workdir: expected a directory path, got an empty '
                    'string')
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'--workdir: {workdir} exists and is not a directory')
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise UserFileError(f'--workdir: the parent directory {parent} of '
                        f'{workdir} does not exist')
  if not os.access(path if os.path.isdir(path) else parent, os.W_OK):
    raise UserError(f'--workdir: {workdir} is not writable')


# ------------------------------------------------------------ inputs --


def needs_corpus(config) -> bool:
  """Whether the config's method draws reference batches from a corpus
  (ZSCL, SnD, PRIMED, PRIMED_uni, GIFT without generated pairs)."""
  from mgtil_jax import methods  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.method, config.get('method_kwargs'))
  if getattr(method, 'reference', None) is None:
    return False
  kw = config.get('method_kwargs') or {}
  return not (config.method == 'gift' and kw.get('gift_pairs'))


def check_inputs(config):
  """Every file or folder the config names, and a corpus for a method that
  needs one: checked before any data build or pretraining, one line each
  naming the config argument to give."""
  data = config.get('data') or {}
  root = data.get('root') if data.get('name') == 'sources' else ''
  data_dir = data.get('data_dir') or ''
  if root and not os.path.isdir(os.path.expanduser(str(root))) and not (
      data_dir and os.path.isdir(os.path.expanduser(str(data_dir)))):
    bench = retrieval_checks.benchmark_name(config)
    env = ' or set MGTIL_DATA' if bench == 'real_mini' else ''
    raise UserFileError(f'root: the data folder {root} does not exist '
                        f'(config.data.root); give root=<folder>{env}, e.g. '
                        f'--config=configs/{bench}.py:root=/data/{bench}')
  retrieval = config.get('retrieval')
  sources = retrieval_checks.check_sources(retrieval)
  kw = config.get('method_kwargs') or {}
  pairs = kw.get('gift_pairs') if config.get('method') == 'gift' else ''
  if pairs and not os.path.isdir(os.path.expanduser(str(pairs))):
    raise UserFileError(f'config.method_kwargs.gift_pairs: folder {pairs} not '
                        'found (expected the generated pairs, pairs.jsonl)')
  needs = needs_corpus(config)
  if not sources and needs and data.get('name') != 'mgtil_synth':
    raise UserError(retrieval_checks.corpus_missing_message(config))
  if needs and retrieval:
    try:  # the retrieval knobs, otherwise checked only at the first task
      retrieval_checks.validate_config(retrieval)
    except ValueError as e:
      raise UserError(str(e)) from e
    pre = retrieval.get('precomputed') or {}
    if retrieval.get('text_encoder') == 'precomputed':
      for name in ('caption_vectors', 'query_vectors'):
        value = str(pre.get(name) or '')
        if not value or not glob.glob(os.path.expanduser(value)):
          raise UserFileError(
              f'config.retrieval.precomputed.{name}: no file matches '
              f"{value!r} (text_encoder='precomputed' needs it)")
  vocab = _get(config, 'tokenizer.vocab_file')
  if vocab is not _MISSING and vocab and not os.path.isfile(
      os.path.expanduser(str(vocab))):
    raise UserFileError(f'config.tokenizer.vocab_file: {vocab} not found '
                        "(expected a WordPiece vocab.txt, or '' for the "
                        "checkpoint's or benchmark's own)")


def validate(config, workdir: str | None = None):
  """Raises `UserError` naming the first bad field (or the workdir)."""
  # pylint: disable=g-import-not-at-top
  from mgtil_jax import methods
  from mgtil_jax.models import presets
  check_fields(config)
  try:
    methods.get_method(config.method, config.get('method_kwargs'))
    presets.get_preset(config.model.preset)
  except (ValueError, KeyError) as e:  # their messages name the field
    raise UserError(str(e).strip('"\'')) from e
  check_inputs(config)
  templates = _get(config, 'prompts.templates')
  if templates is not _MISSING and (not templates or any(
      not isinstance(t, str) or '{}' not in t for t in templates)):
    _fail('prompts.templates', "templates that each contain '{}' for the "
          'class name', templates)
  init = _get(config, 'model.init')
  if init is not _MISSING and init not in ('random', 'pretrain') and not (
      isinstance(init, str) and os.path.exists(init)):
    raise UserFileError(f'config.model.init: no such path {init!r}; expected '
                        "'random', 'pretrain' or an existing checkpoint path")
  if workdir is not None:
    check_workdir(workdir)
