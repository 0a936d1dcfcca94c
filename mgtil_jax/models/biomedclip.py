"""BiomedCLIP (open_clip) checkpoints <-> Flax params of `clip.CLIP`.

A checkpoint directory is laid out like the hub repository
`microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`:

  open_clip_config.json        model_cfg (timm ViT + HF BERT) and preprocess_cfg
  open_clip_pytorch_model.bin  and/or a `.safetensors` file: the state dict
  vocab.txt, tokenizer_config.json[, tokenizer.json]   the WordPiece tokenizer

The architecture comes from `open_clip_config.json` only:
  * image tower: `vision_cfg.timm_model_name` of the timm pattern
    `vit_{tiny|small|base|large}_patch{P}_{S}`; any other name needs a
    top-level `"timm_model_kwargs"` object with timm's `create_model` keyword
    names (`embed_dim, depth, num_heads, mlp_ratio, patch_size, img_size`);
  * text tower: `text_cfg.hf_model_name` of a BERT-base model (BiomedBERT /
    PubMedBERT / bert-base-uncased); any other name needs a top-level
    `"hf_model_config"` object with HF `BertConfig` field names
    (`hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    vocab_size, max_position_embeddings, type_vocab_size`).
open_clip reads only `model_cfg` and `preprocess_cfg`, so the two extra
top-level objects keep such a file loadable by open_clip too.

State dict keys (open_clip `CustomTextCLIP`):
  visual.trunk.*       timm VisionTransformer (fused qkv, conv patch embedding)
  visual.head.proj     linear projection, no bias
  text.transformer.*   HF BertModel (the pooler, unused by the
                       `cls_last_hidden_state_pooler`, is ignored)
  text.proj.{0,2}      MLP projection, no biases
  logit_scale
Every key is mapped or explicitly ignored (`IGNORED_KEYS`); missing,
unexpected and mis-shaped keys raise one `CheckpointMismatchError` that
lists them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import ml_dtypes
import numpy as np

from mgtil_jax.models import clip
from mgtil_jax.models import safe_torch_pickle

CONFIG_FILE = 'open_clip_config.json'
# open_clip's own preference order when a directory holds several files.
CHECKPOINT_FILES = ('open_clip_model.safetensors',
                    'open_clip_pytorch_model.safetensors',
                    'open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pth',
                    'model.safetensors', 'pytorch_model.bin')
SAFETENSORS_FILE = 'open_clip_model.safetensors'

# Keys a BiomedCLIP state dict may hold that the model does not use: the BERT
# pooler (open_clip's CLS-last-hidden-state pooler bypasses it) and HF
# buffers that older transformers versions saved.
IGNORED_KEYS = re.compile(
    r'^text\.transformer\.(pooler\.dense\.(weight|bias)|'
    r'embeddings\.(position_ids|token_type_ids))$')

# open_clip defaults (open_clip.transform.PreprocessCfg, OPENAI_DATASET_*).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_VIT_SIZES = {  # timm: (embed_dim, depth, num_heads); mlp_ratio 4
    'tiny': (192, 12, 3), 'small': (384, 12, 6), 'base': (768, 12, 12),
    'large': (1024, 24, 16)}
_VIT_NAME = re.compile(r'^vit_(tiny|small|base|large)_patch(\d+)_(\d+)$')
_BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, vocab_size=30522,
                  max_position_embeddings=512, type_vocab_size=2)
_BERT_NAMES = ('microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract',
               'microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract',
               'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext',
               'microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext',
               'bert-base-uncased', 'google-bert/bert-base-uncased')
_TIMM_KWARGS = ('embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'patch_size',
                'img_size')
_BERT_FIELDS = tuple(_BERT_BASE)


class CheckpointMismatchError(ValueError):
  """The state dict does not match the architecture its config describes."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """open_clip's eval transform: resize the shortest side to `image_size`
  (bicubic, antialiased), centre crop, scale to [0, 1], normalise."""
  image_size: int = 224
  mean: tuple[float, ...] = OPENAI_MEAN
  std: tuple[float, ...] = OPENAI_STD
  interpolation: str = 'bicubic'
  resize_mode: str = 'shortest'


@dataclasses.dataclass
class Checkpoint:
  """A loaded checkpoint. `params` is the Flax tree of float32 NumPy arrays
  (the layout of `nn.unbox(clip.init_params(...))`); `ignored` holds the
  tensors of `IGNORED_KEYS` so that an export can write them back."""
  model_config: clip.ClipConfig
  params: dict
  preprocess: Preprocess
  tokenizer: object | None  # preprocessing.OpenClipTokenizer
  ignored: dict
  checkpoint_file: str
  open_clip_config: dict | None = None


# ---------------------------------------------------------------- config --


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON, or not UTF-8 ({e})') from None
  if not isinstance(out, dict):
    raise ValueError(f'{path}: expected a JSON object, got a '
                     f'{type(out).__name__}')
  return out


def _require(cond: bool, path: str, field: str, expected: str, got):
  if not cond:
    raise ValueError(f'{path}: {field}: expected {expected}, got {got!r}')


def _vision_config(raw: dict, vision_cfg: dict, path: str) -> clip.VisionConfig:
  name = vision_cfg.get('timm_model_name')
  _require(isinstance(name, str), path, 'model_cfg.vision_cfg.timm_model_name',
           'a timm ViT name (only timm image towers are supported)', name)
  pool = vision_cfg.get('timm_pool', 'avg')
  _require(pool in ('', 'token'), path, 'model_cfg.vision_cfg.timm_pool',
           "'' or 'token' (CLS-token pooling, as BiomedCLIP)", pool)
  proj = vision_cfg.get('timm_proj', 'linear')
  _require(proj == 'linear', path, 'model_cfg.vision_cfg.timm_proj',
           "'linear'", proj)
  _require(not vision_cfg.get('timm_proj_bias', False), path,
           'model_cfg.vision_cfg.timm_proj_bias', 'false', True)
  match = _VIT_NAME.match(name)
  kwargs = raw.get('timm_model_kwargs')
  if match:
    width, depth, heads = _VIT_SIZES[match.group(1)]
    patch, size, mlp = int(match.group(2)), int(match.group(3)), 4 * width
  else:
    _require(isinstance(kwargs, dict) and all(k in kwargs
                                              for k in _TIMM_KWARGS), path,
             'timm_model_kwargs',
             f'an object with {list(_TIMM_KWARGS)} for the timm model '
             f'{name!r}, which is not of the form '
             'vit_{tiny|small|base|large}_patch{P}_{S}', kwargs)
    width, depth, heads = (int(kwargs[k]) for k in ('embed_dim', 'depth',
                                                    'num_heads'))
    patch, size = int(kwargs['patch_size']), int(kwargs['img_size'])
    mlp = int(width * float(kwargs['mlp_ratio']))
  image_size = vision_cfg.get('image_size', size)
  # timm builds the ViT for the size in its name / kwargs; open_clip's
  # image_size only drives preprocessing, so the two must agree.
  _require(image_size == size, path, 'model_cfg.vision_cfg.image_size',
           f'{size} (the input size of {name})', image_size)
  _require(width % heads == 0 and size % patch == 0, path, 'vision tower',
           'width divisible by heads and image size by patch',
           (width, heads, size, patch))
  return clip.VisionConfig(image_size=size, patch_size=patch, width=width,
                           depth=depth, heads=heads, mlp_dim=mlp)


def _text_config(raw: dict, text_cfg: dict, path: str) -> clip.TextConfig:
  name = text_cfg.get('hf_model_name')
  _require(isinstance(name, str), path, 'model_cfg.text_cfg.hf_model_name',
           'a HF BERT model name (only HF BERT text towers are supported)',
           name)
  proj = text_cfg.get('hf_proj_type', 'mlp')
  _require(proj == 'mlp', path, 'model_cfg.text_cfg.hf_proj_type', "'mlp'",
           proj)
  pooler = text_cfg.get('hf_pooler_type', 'mean_pooler')
  _require(pooler == 'cls_last_hidden_state_pooler', path,
           'model_cfg.text_cfg.hf_pooler_type',
           "'cls_last_hidden_state_pooler' (as BiomedCLIP)", pooler)
  if name in _BERT_NAMES:
    bert = _BERT_BASE
  else:
    bert = raw.get('hf_model_config')
    _require(isinstance(bert, dict) and all(k in bert for k in _BERT_FIELDS),
             path, 'hf_model_config',
             f'an object with BertConfig fields {list(_BERT_FIELDS)} for the '
             f'text model {name!r}, which is not a known BERT-base', bert)
    _require(bert.get('model_type', 'bert') == 'bert', path,
             'hf_model_config.model_type', "'bert'", bert.get('model_type'))
    _require(bert.get('hidden_act', 'gelu') == 'gelu', path,
             'hf_model_config.hidden_act', "'gelu'", bert.get('hidden_act'))
  context = text_cfg.get('context_length', 77)  # open_clip's default
  _require(isinstance(context, int) and
           0 < context <= bert['max_position_embeddings'], path,
           'model_cfg.text_cfg.context_length',
           f"an int <= {bert['max_position_embeddings']} (BERT positions)",
           context)
  _require(bert['hidden_size'] % bert['num_attention_heads'] == 0, path,
           'text tower', 'hidden_size divisible by num_attention_heads',
           (bert['hidden_size'], bert['num_attention_heads']))
  return clip.TextConfig(
      vocab_size=int(bert['vocab_size']), context_length=context,
      width=int(bert['hidden_size']), depth=int(bert['num_hidden_layers']),
      heads=int(bert['num_attention_heads']),
      mlp_dim=int(bert['intermediate_size']),
      max_positions=int(bert['max_position_embeddings']),
      type_vocab_size=int(bert['type_vocab_size']),
      pad_id=int(bert.get('pad_token_id', 0)),
      ln_eps=float(bert.get('layer_norm_eps', 1e-12)))


def read_config(path: str) -> tuple[clip.ClipConfig, Preprocess, dict]:
  """Model config, preprocessing and the raw dict of an open_clip_config.json
  (a file or the directory holding it)."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: not found (a BiomedCLIP directory holds '
                            f'{CONFIG_FILE})')
  raw = _read_json(path)
  model_cfg = raw.get('model_cfg')
  _require(isinstance(model_cfg, dict), path, 'model_cfg', 'an object',
           model_cfg)
  embed_dim = model_cfg.get('embed_dim')
  _require(isinstance(embed_dim, int) and embed_dim > 0, path,
           'model_cfg.embed_dim', 'a positive int', embed_dim)
  vision = _vision_config(raw, model_cfg.get('vision_cfg') or {}, path)
  text = _text_config(raw, model_cfg.get('text_cfg') or {}, path)
  cfg = clip.ClipConfig(vision=vision, text=text, embed_dim=embed_dim)
  pre = raw.get('preprocess_cfg') or {}
  size = pre.get('size', vision.image_size)
  _require(size in (vision.image_size, [vision.image_size] * 2), path,
           'preprocess_cfg.size', f'{vision.image_size} (the model input)',
           size)
  preprocess = Preprocess(
      image_size=vision.image_size,
      mean=tuple(float(x) for x in pre.get('mean', OPENAI_MEAN)),
      std=tuple(float(x) for x in pre.get('std', OPENAI_STD)),
      interpolation=pre.get('interpolation', 'bicubic'),
      resize_mode=pre.get('resize_mode', 'shortest'))
  _require(len(preprocess.mean) == 3 and len(preprocess.std) == 3 and
           min(preprocess.std) > 0, path, 'preprocess_cfg.mean/std',
           '3 values each, std > 0', (preprocess.mean, preprocess.std))
  _require(preprocess.interpolation == 'bicubic', path,
           'preprocess_cfg.interpolation', "'bicubic'",
           preprocess.interpolation)
  _require(preprocess.resize_mode == 'shortest', path,
           'preprocess_cfg.resize_mode', "'shortest'", preprocess.resize_mode)
  return cfg, preprocess, raw


def open_clip_config(cfg: clip.ClipConfig,
                     preprocess: Preprocess | None = None) -> dict:
  """An open_clip_config.json dict describing `cfg` (inverse of
  `read_config`): known timm / HF names where the sizes are those of a named
  model, explicit `timm_model_kwargs` / `hf_model_config` otherwise."""
  v, t = cfg.vision, cfg.text
  preprocess = preprocess or Preprocess(image_size=v.image_size)
  timm_name = f'vit_custom_patch{v.patch_size}_{v.image_size}'
  for size, (width, depth, heads) in _VIT_SIZES.items():
    if (v.width, v.depth, v.heads, v.mlp_dim) == (width, depth, heads,
                                                  4 * width):
      timm_name = f'vit_{size}_patch{v.patch_size}_{v.image_size}'
  bert = dict(hidden_size=t.width, num_hidden_layers=t.depth,
              num_attention_heads=t.heads, intermediate_size=t.mlp_dim,
              vocab_size=t.vocab_size, max_position_embeddings=t.max_positions,
              type_vocab_size=t.type_vocab_size)
  is_base = bert == _BERT_BASE and t.pad_id == 0 and t.ln_eps == 1e-12
  hf_name = _BERT_NAMES[0] if is_base else 'custom-bert'
  out = {
      'model_cfg': {
          'embed_dim': cfg.embed_dim,
          'vision_cfg': {'timm_model_name': timm_name,
                         'timm_model_pretrained': False, 'timm_pool': '',
                         'timm_proj': 'linear', 'image_size': v.image_size},
          'text_cfg': {'hf_model_name': hf_name, 'hf_tokenizer_name': hf_name,
                       'hf_proj_type': 'mlp',
                       'hf_pooler_type': 'cls_last_hidden_state_pooler',
                       'context_length': t.context_length},
      },
      'preprocess_cfg': {'mean': list(preprocess.mean),
                         'std': list(preprocess.std)},
  }
  if not _VIT_NAME.match(timm_name):
    out['timm_model_kwargs'] = dict(
        embed_dim=v.width, depth=v.depth, num_heads=v.heads,
        mlp_ratio=v.mlp_dim / v.width, patch_size=v.patch_size,
        img_size=v.image_size)
  if not is_base:
    out['hf_model_config'] = dict(bert, model_type='bert', hidden_act='gelu',
                                  pad_token_id=t.pad_id,
                                  layer_norm_eps=t.ln_eps)
  return out


# --------------------------------------------------------------- key map --


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One state-dict key <-> one or more Flax leaves."""
  key: str
  shape: tuple  # torch shape
  paths: tuple  # Flax paths, each a tuple of names
  to_flax: Callable  # torch array -> tuple of Flax arrays
  to_torch: Callable  # tuple of Flax arrays -> torch array


def _same(key, shape, path):
  return _Entry(key, shape, (path,), lambda a: (a,), lambda xs: xs[0])


def _linear(prefix, path, d_in, d_out, bias=True):
  """torch Linear weight [out, in] <-> Flax Dense kernel [in, out]."""
  out = [_Entry(f'{prefix}.weight', (d_out, d_in), (path + ('kernel',),),
                lambda a: (a.T,), lambda xs: xs[0].T)]
  if bias:
    out.append(_same(f'{prefix}.bias', (d_out,), path + ('bias',)))
  return out


def _layer_norm(prefix, path, d):
  return [_same(f'{prefix}.weight', (d,), path + ('scale',)),
          _same(f'{prefix}.bias', (d,), path + ('bias',))]


def _fused_qkv(prefix, path, d):
  """timm's fused qkv Linear ([q; k; v] rows) <-> separate q/k/v Dense."""
  names = ('query', 'key', 'value')
  return [
      _Entry(f'{prefix}.weight', (3 * d, d),
             tuple(path + (n, 'kernel') for n in names),
             lambda a: tuple(w.T for w in np.split(a, 3, axis=0)),
             lambda xs: np.concatenate([x.T for x in xs], axis=0)),
      _Entry(f'{prefix}.bias', (3 * d,),
             tuple(path + (n, 'bias') for n in names),
             lambda a: tuple(np.split(a, 3)), np.concatenate)]


def key_map(cfg: clip.ClipConfig) -> list[_Entry]:
  """Every open_clip state-dict key of `cfg`, with its Flax leaves."""
  v, t, e = cfg.vision, cfg.text, cfg.embed_dim
  w, p, c = v.width, v.patch_size, v.channels
  n = (v.image_size // p) ** 2
  vt = 'visual.trunk'
  entries = [
      _same(f'{vt}.cls_token', (1, 1, w), ('visual', 'cls_token')),
      _same(f'{vt}.pos_embed', (1, n + 1, w), ('visual', 'pos_embed')),
      # Conv kernel [out, in, kh, kw] <-> Dense over (row, col, channel)-
      # flattened patches (clip.VisionTower's patch layout).
      _Entry(f'{vt}.patch_embed.proj.weight', (w, c, p, p),
             (('visual', 'patch_embed', 'kernel'),),
             lambda a: (a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0]),),
             lambda xs, p=p, c=c: (xs[0].reshape(p, p, c, -1)
                                   .transpose(3, 2, 0, 1))),
      _same(f'{vt}.patch_embed.proj.bias', (w,),
            ('visual', 'patch_embed', 'bias')),
  ]
  for i in range(v.depth):
    pre, path = f'{vt}.blocks.{i}', ('visual', f'block{i}')
    entries += _layer_norm(f'{pre}.norm1', path + ('ln1',), w)
    entries += _fused_qkv(f'{pre}.attn.qkv', path + ('attn',), w)
    entries += _linear(f'{pre}.attn.proj', path + ('attn', 'out'), w, w)
    entries += _layer_norm(f'{pre}.norm2', path + ('ln2',), w)
    entries += _linear(f'{pre}.mlp.fc1', path + ('mlp', 'fc1'), w, v.mlp_dim)
    entries += _linear(f'{pre}.mlp.fc2', path + ('mlp', 'fc2'), v.mlp_dim, w)
  entries += _layer_norm(f'{vt}.norm', ('visual', 'norm'), w)
  entries += _linear('visual.head.proj', ('visual', 'proj'), w, e, bias=False)

  d, emb = t.width, 'text.transformer.embeddings'
  entries += [
      _same(f'{emb}.word_embeddings.weight', (t.vocab_size, d),
            ('text', 'word_embed', 'embedding')),
      _same(f'{emb}.position_embeddings.weight', (t.max_positions, d),
            ('text', 'pos_embed')),
      _same(f'{emb}.token_type_embeddings.weight', (t.type_vocab_size, d),
            ('text', 'type_embed')),
  ]
  entries += _layer_norm(f'{emb}.LayerNorm', ('text', 'embed_ln'), d)
  for i in range(t.depth):
    pre, path = f'text.transformer.encoder.layer.{i}', ('text', f'block{i}')
    for name in ('query', 'key', 'value'):
      entries += _linear(f'{pre}.attention.self.{name}',
                         path + ('attn', name), d, d)
    entries += _linear(f'{pre}.attention.output.dense', path + ('attn', 'out'),
                       d, d)
    entries += _layer_norm(f'{pre}.attention.output.LayerNorm',
                           path + ('ln1',), d)
    entries += _linear(f'{pre}.intermediate.dense', path + ('mlp', 'fc1'), d,
                       t.mlp_dim)
    entries += _linear(f'{pre}.output.dense', path + ('mlp', 'fc2'), t.mlp_dim,
                       d)
    entries += _layer_norm(f'{pre}.output.LayerNorm', path + ('ln2',), d)
  hidden = (d + e) // 2  # open_clip's MLP projection width
  entries += _linear('text.proj.0', ('text', 'proj1'), d, hidden, bias=False)
  entries += _linear('text.proj.2', ('text', 'proj2'), hidden, e, bias=False)
  entries.append(_same('logit_scale', (), ('logit_scale',)))
  return entries


def _set(tree: dict, path: tuple, value):
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple):
  for name in path:
    tree = tree[name]
  return tree


def state_dict_to_params(state_dict: dict, cfg: clip.ClipConfig,
                         source: str = 'state dict') -> tuple[dict, dict]:
  """(Flax params as float32 NumPy, ignored tensors). Raises
  `CheckpointMismatchError` listing every missing, unexpected and mis-shaped
  key."""
  if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
    state_dict = state_dict['state_dict']  # an open_clip training checkpoint
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: x for k, x in state_dict.items()}
  entries = key_map(cfg)
  expected = {e.key for e in entries}
  missing = [e.key for e in entries if e.key not in state_dict]
  ignored = {k: np.asarray(x) for k, x in state_dict.items()
             if k not in expected and IGNORED_KEYS.match(k)}
  unexpected = sorted(k for k in state_dict
                      if k not in expected and k not in ignored)
  misshaped = []
  for e in entries:
    if e.key in state_dict:
      shape = tuple(np.shape(state_dict[e.key]))
      # open_clip accepts a logit scale saved as [1] as well as a scalar.
      if shape != e.shape and not (e.key == 'logit_scale' and shape == (1,)):
        misshaped.append(f'{e.key}: {shape}, expected {e.shape}')
  if missing or unexpected or misshaped:
    lines = [f'{source} does not match the architecture of its config '
             f'(vision width {cfg.vision.width} x {cfg.vision.depth}, text '
             f'width {cfg.text.width} x {cfg.text.depth}, embed '
             f'{cfg.embed_dim}):']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('mis-shaped', misshaped)):
      if items:
        lines.append(f'  {len(items)} {title}: ' + ', '.join(items))
    raise CheckpointMismatchError('\n'.join(lines))
  params = {}
  for e in entries:
    array = np.asarray(state_dict[e.key]).reshape(e.shape)
    if not (np.issubdtype(array.dtype, np.floating) or
            array.dtype == ml_dtypes.bfloat16):
      raise CheckpointMismatchError(f'{source}: {e.key} has dtype '
                                    f'{array.dtype}, expected floating point')
    for path, x in zip(e.paths, e.to_flax(array.astype(np.float32))):
      _set(params, path, np.array(x, order="C"))  # keeps 0-d arrays 0-d
  return params, ignored


def params_to_state_dict(params, cfg: clip.ClipConfig,
                         extra: dict | None = None) -> dict:
  """open_clip state dict (NumPy, float32) of Flax `params`; `extra` tensors
  (e.g. `Checkpoint.ignored`) are added unchanged."""
  out = {}
  for e in key_map(cfg):
    leaves = tuple(np.asarray(_get(params, path), np.float32)
                   for path in e.paths)
    out[e.key] = np.array(e.to_torch(leaves), order="C").reshape(e.shape)
  for key, x in (extra or {}).items():
    out[key] = np.array(x, order="C")
  return out


# ------------------------------------------------------------------ files --


def find_checkpoint_file(directory: str) -> str:
  for name in CHECKPOINT_FILES:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  others = sorted(f for f in os.listdir(directory)
                  if f.endswith(('.safetensors', '.bin', '.pth', '.pt')))
  if len(others) == 1:
    return os.path.join(directory, others[0])
  raise FileNotFoundError(
      f'{directory}: expected one of {list(CHECKPOINT_FILES)}, found '
      f'{others or "no checkpoint file"}')


def read_state_dict(path: str) -> dict:
  """{key: NumPy array} of a `.safetensors` file or a torch `.bin`/`.pt`/
  `.pth` (read by the restricted unpickler: no code in it runs)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: checkpoint file not found')
  if path.endswith('.safetensors'):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    try:
      return dict(safetensors.numpy.load_file(path))
    except Exception as e:  # safetensors raises its own untyped errors
      raise ValueError(f'{path}: not a readable safetensors file ({e})') from e
  state = safe_torch_pickle.load(path)
  if not isinstance(state, dict):
    raise ValueError(f'{path}: expected a state dict (dict of tensors), got '
                     f'{type(state).__name__}')
  return state


def save_safetensors(path: str, params, cfg: clip.ClipConfig,
                     extra: dict | None = None) -> str:
  """Writes `params` in open_clip layout; open_clip / `safetensors.torch`
  load it as a state dict."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  tensors = params_to_state_dict(params, cfg, extra)
  safetensors.numpy.save_file(tensors, path, metadata={'format': 'pt'})
  return path


def export_directory(directory: str, params, cfg: clip.ClipConfig,
                     preprocess: Preprocess | None = None,
                     vocab_file: str | None = None,
                     extra: dict | None = None) -> str:
  """A checkpoint directory that `load_checkpoint` (and open_clip's
  `local-dir:` for known model names) reads back: open_clip_config.json, the
  safetensors weights, `vocab_file` as vocab.txt and the HF tokenizer files
  found beside it."""
  import shutil  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(open_clip_config(cfg, preprocess), f, indent=2)
  save_safetensors(os.path.join(directory, SAFETENSORS_FILE), params, cfg,
                   extra)
  if vocab_file:
    shutil.copyfile(vocab_file, os.path.join(directory, 'vocab.txt'))
    for name in ('tokenizer_config.json', 'tokenizer.json',
                 'special_tokens_map.json'):
      src = os.path.join(os.path.dirname(vocab_file), name)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(directory, name))
  return directory


def preset_config(name: str, **overrides) -> clip.ClipConfig:
  """`config.model.preset` -> the architecture: a `clip.PRESETS` name, or a
  checkpoint directory holding open_clip_config.json (models/presets.py)."""
  if isinstance(name, str) and name not in clip.PRESETS and os.path.isfile(
      os.path.join(name, CONFIG_FILE)):
    return clip.with_overrides(read_config(name)[0], **overrides)
  return clip.get_preset(name, **overrides)


def load_checkpoint(path: str, preset: str | None = None,
                    vocab_file: str | None = None) -> Checkpoint:
  """Loads a BiomedCLIP-layout directory, or a single checkpoint file.

  path: a directory (open_clip_config.json + weights + tokenizer files) or a
    `.bin` / `.safetensors` file. For a file, the architecture comes from an
    open_clip_config.json beside it, or from `preset` (a `clip.PRESETS`
    name); `preset` given with a directory must describe the same
    architecture.
  vocab_file: overrides the directory's vocab.txt.
  """
  from mgtil_jax.models import preprocessing  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    directory, ckpt_file = path, None
  elif os.path.isfile(path):
    directory, ckpt_file = os.path.dirname(os.path.abspath(path)), path
  else:
    raise FileNotFoundError(f'{path}: no such checkpoint file or directory')
  raw = None
  if os.path.exists(os.path.join(directory, CONFIG_FILE)):
    cfg, preprocess, raw = read_config(directory)
    if preset is not None and preset_config(preset) != cfg:
      raise ValueError(
          f'preset {preset!r} differs from the architecture in '
          f'{os.path.join(directory, CONFIG_FILE)}: '
          + config_difference(cfg, preset_config(preset)))
  elif preset is not None:
    cfg = preset_config(preset)
    preprocess = Preprocess(image_size=cfg.vision.image_size)
  else:
    raise ValueError(f'{path}: no {CONFIG_FILE} beside it; pass preset= (one '
                     f'of {sorted(clip.PRESETS)}) to name its architecture')
  ckpt_file = ckpt_file or find_checkpoint_file(directory)
  params, ignored = state_dict_to_params(read_state_dict(ckpt_file), cfg,
                                         ckpt_file)
  vocab_file = vocab_file or os.path.join(directory, 'vocab.txt')
  tokenizer = None
  if os.path.exists(vocab_file):
    tokenizer = preprocessing.OpenClipTokenizer.from_files(
        vocab_file, cfg.text.context_length,
        os.path.join(os.path.dirname(vocab_file), 'tokenizer_config.json'))
    if tokenizer.pad_id != cfg.text.pad_id or (tokenizer.vocab_size >
                                               cfg.text.vocab_size):
      raise ValueError(
          f'{vocab_file}: [PAD] id {tokenizer.pad_id} and vocab size '
          f'{tokenizer.vocab_size} do not fit the text tower (pad id '
          f'{cfg.text.pad_id}, {cfg.text.vocab_size} embeddings)')
  return Checkpoint(cfg, params, preprocess, tokenizer, ignored, ckpt_file,
                    raw)


def config_difference(a: clip.ClipConfig, b: clip.ClipConfig) -> str:
  """'vision.width 768 != 64, ...' for the fields where a and b differ."""
  diffs = []
  for name, x, y in (('vision', a.vision, b.vision), ('text', a.text, b.text)):
    for field in dataclasses.fields(x):
      if getattr(x, field.name) != getattr(y, field.name):
        diffs.append(f'{name}.{field.name} {getattr(x, field.name)} != '
                     f'{getattr(y, field.name)}')
  if a.embed_dim != b.embed_dim:
    diffs.append(f'embed_dim {a.embed_dim} != {b.embed_dim}')
  return ', '.join(diffs) or 'no difference'
