"""The JAX resize + centre crop against PIL itself (the installed Pillow,
which open_clip's torchvision transform calls), on tall and wide images where
Pillow 13 and Pillow 11-12 order their two resize passes differently."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mgtil_jax.models import preprocessing


def _pil_resize_crop(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize(size, BICUBIC) + CenterCrop(size) on a PIL image,
  written out with PIL calls."""
  h, w = image.shape[:2]
  nh, nw = preprocessing.resized_shape(h, w, size)
  out = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  return out[top:top + size, left:left + size]


@pytest.mark.parametrize('shape', [(100, 33), (33, 100), (90, 34), (34, 90),
                                   (60, 50), (50, 60), (48, 47), (200, 70)])
def test_resize_crop_matches_pil(shape):
  image = np.random.default_rng(sum(shape)).integers(
      0, 256, shape + (3,), dtype=np.uint8)
  expected = _pil_resize_crop(image, 32).astype(int)
  got = preprocessing.resize_center_crop(
      jnp.asarray(image[None], jnp.float32) / 255.0, 32, quantize=True)
  got = np.asarray(jnp.round(got[0] * 255.0)).astype(int)
  # PIL's fixed-point weights round a rare pixel the other way: one grey
  # level; the wrong pass order is off by 5-20 levels on noise.
  assert np.abs(got - expected).max() <= 1


# (h, w) -> (new_h, new_w), and which pass Pillow 13 runs first, as measured
# against Pillow 13.0.0 (the pass order that matches PIL to one grey level).
ORDERS = [((100, 100, 40, 80), True), ((100, 100, 41, 70), False),
          ((100, 100, 39, 70), True), ((100, 100, 40, 70), False),
          ((1000, 333, 672, 224), True), ((500, 400, 280, 224), False),
          ((100, 50, 50, 80), True), ((100, 50, 120, 40), False),
          ((700, 100, 1568, 224), False), ((333, 1000, 224, 672), False)]


@pytest.mark.parametrize('sizes,vertical', ORDERS)
def test_pass_order(sizes, vertical):
  assert preprocessing.vertical_first(*sizes, pillow_major=13) == vertical
  assert not preprocessing.vertical_first(*sizes, pillow_major=12)


def test_pass_order_follows_installed_pillow():
  import PIL  # pylint: disable=g-import-not-at-top
  assert preprocessing.PILLOW_MAJOR == int(PIL.__version__.split('.')[0])
