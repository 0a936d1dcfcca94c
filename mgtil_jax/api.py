"""Public API: load BiomedCLIP weights, embed images and text, classify
zero-shot.

  from mgtil_jax import api
  model = api.load('BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/')
  image_emb = model.encode_image(images)   # uint8[B, H, W, 3] -> float32[B, 512]
  text_emb = model.encode_text(['chest x-ray showing pneumothorax'])
  probs = model.zero_shot(images, ['pneumothorax', 'pleural effusion'])

`load` takes a directory laid out like the hub repository (open_clip_config
.json, open_clip_pytorch_model.bin and/or a .safetensors file, vocab.txt,
tokenizer_config.json) or a single checkpoint file plus a preset name; see
`mgtil_jax.models.biomedclip`. Embeddings equal open_clip's
`encode_image` / `encode_text` (unnormalised unless `normalize=True`), with
open_clip's preprocessing and tokenization included.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.models import biomedclip
from mgtil_jax.models import clip
from mgtil_jax.models import preprocessing

# BiomedCLIP's model card uses this template for zero-shot classification.
DEFAULT_TEMPLATES = ('this is a photo of {}',)


@dataclasses.dataclass
class ClipModel:
  """A loaded dual encoder: Flax module, float32 params, tokenizer and image
  preprocessing. `dtype` is the compute dtype; params stay float32.
  `text_bucket`: `encode_text` runs each batch at its longest text rounded up
  to this many tokens (None: the full context length); the [PAD] keys are
  masked, so only float rounding differs."""
  model: clip.CLIP
  params: dict
  tokenizer: preprocessing.OpenClipTokenizer | None
  preprocess: biomedclip.Preprocess
  checkpoint: biomedclip.Checkpoint
  text_bucket: int | None = tokenizer_lib.DEFAULT_BUCKET

  def __post_init__(self):
    model, pre = self.model, self.preprocess

    def image_fn(params, images):
      return model.apply({'params': params},
                         preprocessing.preprocess_images(images, pre),
                         method=clip.CLIP.encode_image)

    def text_fn(params, tokens):
      return model.apply({'params': params}, tokens,
                         method=clip.CLIP.encode_text)

    self._image_fn = jax.jit(image_fn)
    self._text_fn = jax.jit(text_fn)

  @property
  def config(self) -> clip.ClipConfig:
    return self.model.cfg

  def tokenize(self, texts) -> np.ndarray:
    """int32[N, context_length], ids as open_clip's tokenizer gives them."""
    if self.tokenizer is None:
      raise ValueError('no tokenizer: the checkpoint has no vocab.txt beside '
                       'it; pass vocab_file= to api.load')
    return self.tokenizer(texts)

  def encode_image(self, images, *, normalize: bool = False,
                   batch_size: int = 64) -> np.ndarray:
    """images: uint8[B, H, W, C] (0..255) or float[B, H, W, C] (0..1), C in
    {1, 3}, any size (resized and centre-cropped as open_clip does) ->
    float32[B, embed_dim]."""
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f'images: expected a batch [B, H, W, C], got shape '
                       f'{images.shape}')
    out = _batched(lambda x: self._image_fn(self.params, x), images,
                   batch_size)
    return _l2_normalize(out) if normalize else out

  def encode_text(self, texts, *, normalize: bool = False,
                  batch_size: int = 256) -> np.ndarray:
    """texts: a string or list of strings -> float32[N, embed_dim]."""
    tokens = self.tokenize(texts)
    pad_id = self.config.text.pad_id
    out = _batched(lambda x: self._text_fn(self.params, tokenizer_lib.
                                           trim_padding(x, self.text_bucket,
                                                        pad_id)),
                   tokens, batch_size)
    return _l2_normalize(out) if normalize else out

  def class_embeddings(self, class_names, templates=DEFAULT_TEMPLATES):
    """float32[C, embed_dim]: per class, the normalised mean of its
    normalised prompt embeddings (CLIP prompt ensembling)."""
    if not class_names:
      raise ValueError('class_names: expected at least one class name')
    if not templates or any('{}' not in t for t in templates):
      raise ValueError(f"templates: expected templates containing '{{}}', "
                       f'got {templates!r}')
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = self.encode_text(prompts, normalize=True)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return _l2_normalize(emb)

  def zero_shot_logits(self, images, class_names,
                       templates=DEFAULT_TEMPLATES) -> np.ndarray:
    """float32[B, C] = exp(logit_scale) * cos(image, class)."""
    img = self.encode_image(images, normalize=True)
    cls = self.class_embeddings(class_names, templates)
    scale = np.exp(np.asarray(self.params['logit_scale'], np.float32))
    return scale * img @ cls.T

  def zero_shot(self, images, class_names,
                templates=DEFAULT_TEMPLATES) -> np.ndarray:
    """float32[B, C] class probabilities (softmax of `zero_shot_logits`)."""
    logits = self.zero_shot_logits(images, class_names, templates)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=-1, keepdims=True)

  def save(self, directory: str) -> str:
    """Writes the (possibly fine-tuned) params as an open_clip-layout
    directory (open_clip_config.json, open_clip_model.safetensors, tokenizer
    files); `load(directory)` reads it back bit for bit."""
    params = jax.tree.map(np.asarray, self.params)
    vocab_file = self.tokenizer.vocab_file if self.tokenizer else None
    return biomedclip.export_directory(directory, params, self.config,
                                       self.preprocess, vocab_file,
                                       extra=self.checkpoint.ignored)


def load(path: str, *, preset: str | None = None, dtype: str = 'float32',
         vocab_file: str | None = None,
         text_bucket: int | None = tokenizer_lib.DEFAULT_BUCKET) -> ClipModel:
  """Loads a BiomedCLIP-layout directory or a checkpoint file.

  path: directory or `.bin` / `.safetensors` file (see
    `biomedclip.load_checkpoint`; a `.bin` is read without running its
    pickle). preset: the architecture of a file with no open_clip_config.json
    beside it. dtype: compute dtype, 'float32' or 'bfloat16' (weights stay
    float32). vocab_file: overrides the directory's vocab.txt. text_bucket:
    see `ClipModel` (None: every text at the full context length).
  """
  ck = biomedclip.load_checkpoint(path, preset=preset, vocab_file=vocab_file)
  model = clip.make_model(ck.model_config, dtype=dtype)
  params = jax.tree.map(jnp.asarray, ck.params)
  tokenizer_lib.bucketed_length(1, text_bucket, 1)  # validates it
  return ClipModel(model, params, ck.tokenizer, ck.preprocess, ck,
                   text_bucket=text_bucket)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _batched(fn, array: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over fixed-size chunks (the last one padded): one compilation per
  input shape, bounded memory."""
  n = len(array)
  if n == 0:
    raise ValueError('expected at least one input')
  size = min(batch_size, n)
  out = []
  for start in range(0, n, size):
    chunk = array[start:start + size]
    pad = size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(chunk), np.float32)[:size - pad])
  return np.concatenate(out)
