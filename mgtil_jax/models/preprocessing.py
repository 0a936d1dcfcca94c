"""open_clip's eval-time input pipeline, reproduced for JAX.

Images: `image_transform(size, is_train=False)` with resize_mode 'shortest':
torchvision `Resize(size, BICUBIC)` on a PIL image (shortest side -> size,
longer side truncated as torchvision computes it; PIL's antialiased bicubic,
a = -0.5), `CenterCrop(size)`, `ToTensor` (/255), `Normalize(mean, std)`.
Here the resize is `jax.image.resize(..., 'bicubic', antialias=True)`, the
same kernel with the same half-pixel centres, applied in PIL's order of
passes (see `vertical_first`), and for uint8 input each pass rounded and
clipped to the uint8 grid (PIL resamples 8-bit images into 8-bit buffers).
The result matches open_clip's pixels to within one grey level (PIL's
fixed-point weights round a rare pixel the other way) under every Pillow
that setup.cfg allows (tests/test_preprocessing.py); float input is resized
in float. Images already at the model's size are not resampled and match
exactly.

Text: open_clip's `HFTokenizer` cleans every string (`ftfy.fix_text`, HTML
unescaping twice, whitespace collapsed) before the BERT WordPiece tokenizer.
"""

from __future__ import annotations

import html
import json
import os

import ftfy
import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.models.tokenizer import Tokenizer


def clean_text(text: str) -> str:
  """open_clip.tokenizer._clean_whitespace: basic_clean then whitespace."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return ' '.join(text.split())


class OpenClipTokenizer(Tokenizer):
  """`Tokenizer` with open_clip's text cleaning in front: identical ids to
  `open_clip.get_tokenizer('local-dir:...')` on a BiomedCLIP directory.

  bucket=None (the default here) pads to the full context length as
  open_clip does; a bucket trims the padding (see `mgtil_jax.models.tokenizer`),
  which leaves the ids of every real token unchanged."""

  def __init__(self, vocab_file: str, context_length: int,
               lowercase: bool = True, bucket: int | None = None):
    super().__init__(vocab_file, context_length, lowercase=lowercase,
                     bucket=bucket)
    self.vocab_file = vocab_file

  @classmethod
  def from_files(cls, vocab_file: str, context_length: int,
                 tokenizer_config: str | None = None,
                 bucket: int | None = None) -> 'OpenClipTokenizer':
    """vocab.txt plus the HF tokenizer_config.json beside it (if present)."""
    options = {}
    if tokenizer_config and os.path.exists(tokenizer_config):
      with open(tokenizer_config, encoding='utf-8') as f:
        options = json.load(f)
    lowercase = bool(options.get('do_lower_case', True))
    # `Tokenizer` strips accents exactly when it lowercases (HF's default,
    # strip_accents=None) and always splits CJK characters.
    strip = options.get('strip_accents')
    if strip is not None and bool(strip) != lowercase:
      raise ValueError(f'{tokenizer_config}: strip_accents={strip!r} with '
                       f'do_lower_case={lowercase} is not supported (expected '
                       'null or equal to do_lower_case)')
    if not options.get('tokenize_chinese_chars', True):
      raise ValueError(f'{tokenizer_config}: tokenize_chinese_chars=false is '
                       'not supported')
    return cls(vocab_file, context_length, lowercase=lowercase,
               bucket=bucket)

  def __call__(self, texts) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else texts
    return super().__call__([clean_text(t) for t in texts])


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision's `Resize(size)` output (shortest side = size)."""
  short, long = (width, height) if width <= height else (height, width)
  new_long = int(size * long / short)
  return (new_long, size) if width <= height else (size, new_long)


def _pillow_major() -> int:
  try:
    import PIL  # pylint: disable=g-import-not-at-top
    return int(PIL.__version__.split('.')[0])
  except (ImportError, ValueError):
    return 13  # no Pillow here: follow the newest version setup.cfg allows


# Pillow 13 (python-pillow/Pillow#9549) resizes vertically first when the
# height shrinks by more than twice as many pixels as the width; Pillow
# 11-12 always resize horizontally first. The two orders differ by up to
# ~20 grey levels on uint8 images, so the order follows the Pillow that
# open_clip would run with here.
PILLOW_MAJOR = _pillow_major()


def vertical_first(height: int, width: int, new_height: int, new_width: int,
                   pillow_major: int | None = None) -> bool:
  """Whether PIL's two-pass resize does the vertical pass first."""
  if (pillow_major or PILLOW_MAJOR) < 13:
    return False
  # Only a height that shrinks: upscales keep the horizontal-first order
  # (measured against Pillow 13.0.0 on 307 shapes where the orders differ).
  return new_height < height and height - new_height > 2 * (width - new_width)


def _resize(images, shape, quantize: bool, pillow_major: int | None = None):
  """Antialiased bicubic resize in PIL's order of passes; with `quantize`,
  each pass ends on the uint8 grid (PIL resamples 8-bit images into 8-bit
  buffers)."""
  b, h, w, c = images.shape
  targets = [(b, h, shape[1], c), (b, shape[0], shape[1], c)]
  if vertical_first(h, w, shape[0], shape[1], pillow_major):
    targets[0] = (b, shape[0], w, c)
  for target in targets:
    if images.shape != target:
      images = jax.image.resize(images, target, method='bicubic',
                                antialias=True)
      if quantize:
        images = jnp.clip(jnp.round(images * 255.0), 0.0, 255.0) / 255.0
  return images


def resize_center_crop(images, size: int, quantize: bool = False):
  """float[B, H, W, C] in [0, 1] -> float32[B, size, size, C]: torchvision's
  Resize(size) (shortest side) then CenterCrop(size)."""
  b, h, w, c = images.shape
  images = images.astype(jnp.float32)
  nh, nw = resized_shape(h, w, size)
  images = _resize(images, (nh, nw), quantize)
  # torchvision's crop offsets (Python's round: halves to even).
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  return jnp.clip(images[:, top:top + size, left:left + size], 0.0, 1.0)


def preprocess_images(images, preprocess) -> jax.Array:
  """uint8[B, H, W, C] (0..255) or float[B, H, W, C] (0..1), C in {1, 3}, any
  H, W -> normalised float32[B, S, S, 3] (S = preprocess.image_size).
  Traceable: shapes are static, so it runs inside jit."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images: expected [B, H, W, 3] (or 1 channel), got '
                     f'shape {tuple(images.shape)}')
  is_uint8 = images.dtype == jnp.uint8
  if not is_uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images: expected uint8 (0..255) or float (0..1), got '
                     f'{images.dtype}')
  x = images.astype(jnp.float32) / 255.0 if is_uint8 else images
  if images.shape[1:3] != (preprocess.image_size,) * 2:
    x = resize_center_crop(x, preprocess.image_size, quantize=is_uint8)
  if x.shape[-1] == 1:  # open_clip converts to RGB first
    x = jnp.repeat(x, 3, axis=-1)
  mean = jnp.asarray(preprocess.mean, jnp.float32)
  std = jnp.asarray(preprocess.std, jnp.float32)
  return (x.astype(jnp.float32) - mean) / std
