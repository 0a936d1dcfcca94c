"""Starting the continual trainer from a BiomedCLIP checkpoint
(`config.model.init=/path/to/dir`).

The trainer builds its model from `config.model.preset` before it reads any
weights, so the checkpoint's architecture must equal that preset: set the
preset to the checkpoint directory itself (`--config.model.preset=DIR`, read
from its open_clip_config.json) or to a named preset with the same sizes (the
real BiomedCLIP is `vit_b16_pubmedbert`). A mismatch is one error naming
every differing field, raised before any data or device work.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.models import biomedclip
from mgtil_jax.models import preprocessing
from mgtil_jax.models import presets

log = logging.getLogger(__name__)


def is_checkpoint_path(init) -> bool:
  """`config.model.init` names a checkpoint (not 'random' / 'pretrain')."""
  return isinstance(init, str) and init not in ('random', 'pretrain')


def check_init(config, mean, std) -> str:
  """Checks `config.model.init` against the run; returns its directory.

  mean, std: the normalisation the trainer applies to uint8 images; the
  checkpoint's preprocess_cfg must use the same.
  """
  init = config.model.init
  if not os.path.exists(init):
    raise FileNotFoundError(
        f"config.model.init: expected 'random', 'pretrain' or a BiomedCLIP "
        f'checkpoint directory / file, got {init!r} (no such path)')
  ck_dir = init if os.path.isdir(init) else os.path.dirname(
      os.path.abspath(init))
  model_cfg = presets.get_preset(config.model.preset)
  if os.path.exists(os.path.join(ck_dir, biomedclip.CONFIG_FILE)):
    ck_cfg, pre, _ = biomedclip.read_config(ck_dir)
    if ck_cfg != model_cfg:
      raise ValueError(
          f'config.model.init={init}: its architecture differs from '
          f'config.model.preset={config.model.preset!r} ('
          f'{biomedclip.config_difference(ck_cfg, model_cfg)}); set '
          f'--config.model.preset={ck_dir}')
    if not (np.allclose(pre.mean, mean) and np.allclose(pre.std, std)):
      raise ValueError(
          f'config.model.init={init}: preprocess_cfg mean/std {pre.mean} / '
          f'{pre.std} differ from the normalisation the trainer applies '
          f'({tuple(mean)} / {tuple(std)})')
  size = config.get('data', {}).get('image_size')
  if size is not None and size != model_cfg.vision.image_size:
    raise ValueError(
        f'config.data.image_size={size} but the checkpoint '
        f'config.model.init={init} takes {model_cfg.vision.image_size}x'
        f'{model_cfg.vision.image_size} images; set --config.data.image_size='
        f'{model_cfg.vision.image_size}')
  return ck_dir


def tokenizer(config, mean, std) -> preprocessing.OpenClipTokenizer:
  """The checkpoint's tokenizer (or `config.tokenizer.vocab_file`), with
  open_clip's text cleaning; runs `check_init` first."""
  ck_dir = check_init(config, mean, std)
  vocab_file = (config.get('tokenizer', {}).get('vocab_file', '') or
                os.path.join(ck_dir, 'vocab.txt'))
  if not os.path.exists(vocab_file):
    raise FileNotFoundError(
        f'config.model.init={config.model.init}: {vocab_file} not found; '
        'set config.tokenizer.vocab_file')
  model_cfg = presets.get_preset(config.model.preset)
  tok = preprocessing.OpenClipTokenizer.from_files(
      vocab_file, model_cfg.text.context_length,
      os.path.join(os.path.dirname(vocab_file), 'tokenizer_config.json'),
      # Training pays the text tower only for real tokens (exact under the
      # attention mask; tests/test_text_trim.py).
      bucket=config.get('tokenizer', {}).get('bucket',
                                             tokenizer_lib.DEFAULT_BUCKET))
  if tok.vocab_size > model_cfg.text.vocab_size or (tok.pad_id !=
                                                    model_cfg.text.pad_id):
    raise ValueError(
        f'tokenizer {vocab_file}: vocab size {tok.vocab_size} / [PAD] id '
        f'{tok.pad_id} do not fit the text tower ({model_cfg.text.vocab_size}'
        f' embeddings, pad id {model_cfg.text.pad_id})')
  return tok


def load_params(config, param_shardings, fresh_params):
  """The checkpoint's params placed with `param_shardings` (same tree as the
  model's params). Model params the checkpoint does not hold (layers added
  on top of CLIP) are taken from `fresh_params()` (called only then)."""
  ck = biomedclip.load_checkpoint(config.model.init,
                                  preset=config.model.preset)
  loaded = dict(jax.tree_util.tree_flatten_with_path(ck.params)[0])
  flat, treedef = jax.tree_util.tree_flatten_with_path(param_shardings)
  absent = [path for path, _ in flat if path not in loaded]
  fresh = {}
  if absent:
    log.info('config.model.init: %d params not in the checkpoint keep their '
             'initialisation: %s', len(absent),
             [jax.tree_util.keystr(p) for p in absent])
    fresh = dict(jax.tree_util.tree_flatten_with_path(fresh_params())[0])
  leaves = []
  for path, sharding in flat:
    if path in fresh:
      leaves.append(fresh[path])
      continue
    host = loaded[path]
    # Every process holds the whole array; each device takes its shard.
    leaves.append(jax.make_array_from_callback(
        host.shape, sharding, lambda index, host=host: host[index]))
  return jax.tree_util.tree_unflatten(treedef, leaves)
