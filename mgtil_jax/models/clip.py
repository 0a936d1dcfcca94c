"""Functional Flax CLIP dual encoder with the BiomedCLIP structure.

Image tower: pre-LN ViT (timm `vit_base_patch16_224` layout): patch embedding,
CLS token, learned position embedding, pre-LN blocks, final LayerNorm, CLS
pooling, linear projection without bias.
Text tower: post-LN BERT (HF `BertModel` layout): word + position + token-type
embeddings, embedding LayerNorm, post-LN blocks, the last hidden state at
[CLS], an MLP projection (d -> (d + e) // 2 -> e, GELU, no biases).
A learnable logit scale (log of the inverse temperature).

Every parameter carries logical axis names (`embed`, `mlp`, `qkv`, `vocab`,
...) and activations are constrained with logical names (`batch`,
`length`, `act_embed`), so that the rules in the config decide placement
(see `mgtil_jax.core.sharding`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.models import adapters

Array = jax.Array
_init = nn.initializers.normal(stddev=0.02)
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 16
  channels: int = 3
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  ln_eps: float = 1e-6  # timm ViT


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 30522
  context_length: int = 256
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  max_positions: int = 512  # BERT's position table is larger than the context
  type_vocab_size: int = 2
  pad_id: int = 0
  ln_eps: float = 1e-12  # HF BERT


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  embed_dim: int = 512
  init_logit_scale: float = float(np.log(1 / 0.07))


PRESETS = {
    # Seconds per step on a laptop CPU; used by the embedded benchmark.
    'tiny': ClipConfig(
        vision=VisionConfig(image_size=32, patch_size=4, width=64, depth=2,
                            heads=2, mlp_dim=256),
        text=TextConfig(vocab_size=512, context_length=16, width=64, depth=2,
                        heads=2, mlp_dim=256, max_positions=16),
        embed_dim=64),
    # The real BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 sizes.
    'vit_b16_pubmedbert': ClipConfig(),
}


def get_preset(name: str, **overrides) -> ClipConfig:
  """A named preset; `overrides` may set `vision.*`, `text.*` or top fields.
  (models/presets.py also reads a BiomedCLIP checkpoint directory.)"""
  if name not in PRESETS:
    raise ValueError(f'config.model.preset: unknown preset {name!r}; '
                     f'expected one of {sorted(PRESETS)} or a directory '
                     'holding open_clip_config.json')
  return with_overrides(PRESETS[name], **overrides)


def with_overrides(cfg: ClipConfig, **overrides) -> ClipConfig:
  """`cfg` with `vision.*`, `text.*` or top fields replaced."""
  vision = {k[7:]: v for k, v in overrides.items() if k.startswith('vision.')}
  text = {k[5:]: v for k, v in overrides.items() if k.startswith('text.')}
  top = {k: v for k, v in overrides.items() if '.' not in k}
  return dataclasses.replace(
      cfg, vision=dataclasses.replace(cfg.vision, **vision),
      text=dataclasses.replace(cfg.text, **text), **top)


def _dense(features: int, names, *, use_bias=True, dtype=jnp.float32,
           name=None):
  """Dense layer whose 2-D kernel (and bias) carry logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype,
      kernel_init=nn.with_logical_partitioning(_init, names),
      bias_init=nn.with_logical_partitioning(_zeros, names[-1:]), name=name)


def _layer_norm(eps, dtype, name=None):
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(_ones, ('norm',)),
      bias_init=nn.with_logical_partitioning(_zeros, ('norm',)))


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v projections."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, prefix=None):
    """x: float[B, L, D]; mask: bool[B, L] (True = real token) or None;
    prefix: DIKI's (keys, values, weight) from `adapters.attention_prompt`."""
    b, length, d = x.shape
    head_dim = d // self.heads
    # Heads are contiguous blocks of the 'qkv' dimension, so sharding it over
    # the tensor axis splits whole heads when the sizes divide.
    split = lambda t: t.reshape(b, length, self.heads, head_dim)
    q = split(_dense(d, ('embed', 'qkv'), dtype=self.dtype, name='query')(x))
    k = split(_dense(d, ('embed', 'qkv'), dtype=self.dtype, name='key')(x))
    v = split(_dense(d, ('embed', 'qkv'), dtype=self.dtype, name='value')(x))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(
        jnp.asarray(head_dim, self.dtype))
    if mask is not None:
      big_neg = jnp.finfo(logits.dtype).min
      logits = jnp.where(mask[:, None, None, :], logits, big_neg)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(self.dtype), v)
    if prefix is not None:  # a residual branch: the attention above is intact
      out = out + adapters.prefix_attention(q, *prefix)
    return _dense(d, ('qkv', 'embed'), dtype=self.dtype, name='out')(
        out.reshape(b, length, d))


class Mlp(nn.Module):
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = _dense(self.mlp_dim, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=False),
                                   ('batch', 'length', 'act_mlp'))
    return _dense(d, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(h)


class PreLNBlock(nn.Module):
  """timm ViT block: x + attn(ln(x)); x + mlp(ln(x))."""
  heads: int
  mlp_dim: int
  eps: float
  dtype: Any = jnp.float32
  adapter: Any = None  # adapters.block_adapter(...): this block's adapter

  @nn.compact
  def __call__(self, x, mask=None, task_id=None, adapter_weight=None):
    prefix = adapters.attention_prompt(self.adapter, x.shape[-1], task_id,
                                       adapter_weight)
    x = x + Attention(self.heads, self.dtype, name='attn')(
        _layer_norm(self.eps, self.dtype, 'ln1')(x), mask, prefix)
    h = Mlp(self.mlp_dim, self.dtype, name='mlp')(
        _layer_norm(self.eps, self.dtype, 'ln2')(x))
    x = x + adapters.moe_residual(self.adapter, h, x, task_id, adapter_weight,
                                  self.dtype)
    return nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))


class PostLNBlock(nn.Module):
  """HF BERT layer: ln(x + attn(x)); ln(x + mlp(x))."""
  heads: int
  mlp_dim: int
  eps: float
  dtype: Any = jnp.float32
  adapter: Any = None  # adapters.block_adapter(...): this block's adapter

  @nn.compact
  def __call__(self, x, mask=None, task_id=None, adapter_weight=None):
    prefix = adapters.attention_prompt(self.adapter, x.shape[-1], task_id,
                                       adapter_weight)
    x = _layer_norm(self.eps, self.dtype, 'ln1')(
        x + Attention(self.heads, self.dtype, name='attn')(x, mask, prefix))
    h = Mlp(self.mlp_dim, self.dtype, name='mlp')(x)
    x = _layer_norm(self.eps, self.dtype, 'ln2')(
        x + adapters.moe_residual(self.adapter, h, x, task_id,
                                  adapter_weight, self.dtype))
    return nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))


def _blocks(block_cls, remat: bool):
  return nn.remat(block_cls) if remat else block_cls


class VisionTower(nn.Module):
  cfg: VisionConfig
  embed_dim: int
  dtype: Any = jnp.float32
  remat: bool = False
  adapter: Any = None  # adapters.AdapterConfig or None

  @nn.compact
  def __call__(self, images, task_id=None, adapter_weight=None):
    """images: float[B, H, W, C], already normalised -> float32[B, embed_dim].
    task_id / adapter_weight: see `adapters.encode_image`."""
    c = self.cfg
    b, h, w, ch = images.shape
    if h != c.image_size or w != c.image_size or ch != c.channels:
      raise ValueError(f'images: expected [B, {c.image_size}, {c.image_size}, '
                       f'{c.channels}], got {images.shape}')
    p = c.patch_size
    n = (h // p) * (w // p)
    patches = images.reshape(b, h // p, p, w // p, p, ch)
    # (row, col, channel) order inside a patch; the loader maps conv kernels.
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, n, p * p * ch)
    x = _dense(c.width, ('patch', 'embed'), dtype=self.dtype,
               name='patch_embed')(patches.astype(self.dtype))
    cls = self.param('cls_token', nn.with_logical_partitioning(
        _init, (None, None, 'embed')), (1, 1, c.width))
    pos = self.param('pos_embed', nn.with_logical_partitioning(
        _init, (None, 'length_table', 'embed')), (1, n + 1, c.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)).astype(
        self.dtype), x], axis=1) + pos.astype(self.dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    block = _blocks(PreLNBlock, self.remat)
    for i in range(c.depth):
      x = block(c.heads, c.mlp_dim, c.ln_eps, self.dtype,
                adapter=adapters.block_adapter(self.adapter, 'visual', i),
                name=f'block{i}')(x, None, task_id, adapter_weight)
    x = _layer_norm(c.ln_eps, self.dtype, 'norm')(x)
    pooled = x[:, 0]
    out = _dense(self.embed_dim, ('embed', 'proj'), use_bias=False,
                 dtype=self.dtype, name='proj')(pooled)
    return out.astype(jnp.float32)


class TextTower(nn.Module):
  cfg: TextConfig
  embed_dim: int
  dtype: Any = jnp.float32
  remat: bool = False
  adapter: Any = None  # adapters.AdapterConfig or None

  @nn.compact
  def __call__(self, tokens, task_id=None, adapter_weight=None):
    """tokens: int32[B, L] padded with pad_id -> float32[B, embed_dim]."""
    c = self.cfg
    b, length = tokens.shape
    if length > c.max_positions:
      raise ValueError(f'tokens: length {length} exceeds the position table '
                       f'({c.max_positions})')
    mask = tokens != c.pad_id
    word = nn.Embed(c.vocab_size, c.width, name='word_embed',
                    embedding_init=nn.with_logical_partitioning(
                        _init, ('vocab', 'embed')))
    pos = self.param('pos_embed', nn.with_logical_partitioning(
        _init, ('length_table', 'embed')), (c.max_positions, c.width))
    typ = self.param('type_embed', nn.with_logical_partitioning(
        _init, (None, 'embed')), (c.type_vocab_size, c.width))
    x = word(tokens) + pos[None, :length] + typ[0][None, None]
    x = _layer_norm(c.ln_eps, self.dtype, 'embed_ln')(x.astype(self.dtype))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    block = _blocks(PostLNBlock, self.remat)
    for i in range(c.depth):
      x = block(c.heads, c.mlp_dim, c.ln_eps, self.dtype,
                adapter=adapters.block_adapter(self.adapter, 'text', i),
                name=f'block{i}')(x, mask, task_id, adapter_weight)
    pooled = x[:, 0]  # last hidden state at [CLS]
    hidden = (c.width + self.embed_dim) // 2
    h = _dense(hidden, ('embed', 'proj_hidden'), use_bias=False,
               dtype=self.dtype, name='proj1')(pooled)
    h = nn.gelu(h, approximate=False)
    out = _dense(self.embed_dim, ('proj_hidden', 'proj'), use_bias=False,
                 dtype=self.dtype, name='proj2')(h)
    return out.astype(jnp.float32)


class CLIP(nn.Module):
  """Dual encoder; `__call__` returns unnormalised embeddings.

  With `adapter` (MoE-Adapters or DIKI, see `adapters`), the encoders take
  `task_id` (int32[] or None = the frozen backbone) and `train` (True: the
  adapters of `task_id` fully on; False: as at test time). The plain model
  (adapter=None) ignores both.
  """
  cfg: ClipConfig
  dtype: Any = jnp.float32
  remat: bool = False
  adapter: Any = None  # adapters.AdapterConfig or None

  def setup(self):
    self.visual = VisionTower(self.cfg.vision, self.cfg.embed_dim, self.dtype,
                              self.remat, adapter=self.adapter)
    self.text = TextTower(self.cfg.text, self.cfg.embed_dim, self.dtype,
                          self.remat, adapter=self.adapter)
    self.logit_scale = self.param(
        'logit_scale', nn.with_logical_partitioning(
            nn.initializers.constant(self.cfg.init_logit_scale), ()), ())
    if self.adapter is not None:
      self.adapter_state = adapters.AdapterState(self.adapter,
                                                 self.cfg.embed_dim)

  def encode_image(self, images, *, task_id=None, train=False):
    if self.adapter is None:
      return self.visual(images)
    return adapters.encode_image(self, images, task_id, train)

  def encode_text(self, tokens, *, task_id=None, train=False):
    if self.adapter is None:
      return self.text(tokens)
    return adapters.encode_text(self, tokens, task_id, train)

  def __call__(self, images, tokens, *, task_id=None, train=False):
    return (self.encode_image(images, task_id=task_id, train=train),
            self.encode_text(tokens, task_id=task_id, train=train),
            self.logit_scale)


def make_model(cfg: ClipConfig, *, dtype: str = 'float32',
               remat: bool = False, adapter=None) -> CLIP:
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'config.model.dtype: expected float32 or bfloat16, '
                     f'got {dtype!r}')
  return CLIP(cfg, dtype=jnp.dtype(dtype), remat=remat, adapter=adapter)


def init_params(model: CLIP, rng) -> dict:
  """Boxed (logically partitioned) params; use `nn.unbox` for arrays."""
  v, t = model.cfg.vision, model.cfg.text
  images = jnp.zeros((1, v.image_size, v.image_size, v.channels), jnp.float32)
  tokens = jnp.zeros((1, t.context_length), jnp.int32)
  return model.init(rng, images, tokens)['params']


def l2_normalize(x, axis=-1, eps=1e-6):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def class_embeddings(model: CLIP, params, prompt_tokens, num_templates: int,
                     *, task_id=None, train=False, rngs=None):
  """Zero-shot classifier weights.

  prompt_tokens: int32[C * num_templates, L], class-major (all templates of
  class 0 first). Returns float32[C, E]: per class, the normalised mean of the
  normalised template embeddings (CLIP's prompt ensembling). task_id, train,
  rngs: for adapter models (see `CLIP`); rngs={'gating': key} turns on
  MoE-Adapters' router noise.
  """
  emb = l2_normalize(model.apply({'params': params}, prompt_tokens,
                                 task_id=task_id, train=train, rngs=rngs,
                                 method=CLIP.encode_text))
  emb = emb.reshape(-1, num_templates, emb.shape[-1]).mean(axis=1)
  return l2_normalize(emb)


def classify_logits(model: CLIP, params, images, prompt_tokens,
                    num_templates: int, *, task_id=None, train=False,
                    rngs=None):
  """float32[B, C] = exp(logit_scale) * cos(image, class text)."""
  img = l2_normalize(model.apply({'params': params}, images, task_id=task_id,
                                 train=train, rngs=rngs,
                                 method=CLIP.encode_image))
  cls = class_embeddings(model, params, prompt_tokens, num_templates,
                         task_id=task_id, train=train, rngs=rngs)
  return jnp.exp(params['logit_scale']) * img @ cls.T
