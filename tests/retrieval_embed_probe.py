"""Subprocess probe for test_retrieval_embed: embeds fixed images and texts
with the tiny model (params from a fixed seed) on however many (fake)
devices this process has, and saves the vectors.

  python tests/retrieval_embed_probe.py OUT.npz WORKDIR
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
from configs import retrieval as retrieval_cfg  # pylint: disable=g-import-not-at-top
from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
from mgtil_jax.retrieval import embed  # pylint: disable=g-import-not-at-top


def probe_inputs():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (13, 32, 32, 3), np.uint8)
  texts = [f'a photo of nodule {i}' if i % 2 else 'fundus photograph'
           for i in range(11)]
  return images, texts


def main(out, workdir):
  # The regime of tests/test_retrieval_memory.py's config: the vocabulary
  # (and so the text embeddings) depends on it.
  cfg = mgtil_synth.get_config('runlocal,tasks=1,regime=same_scanner')
  cfg.retrieval = retrieval_cfg.defaults()
  exp = train.setup(cfg, workdir)
  params = train.init_params(exp, 0)
  towers = embed.ClipTowers(exp, batch_size=16)
  images, texts = probe_inputs()
  np.savez(out, image=towers.image(params, images),
           text=towers.text(params, exp.tokenizer(texts)),
           devices=jax.device_count(), batch=towers.batch_size)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
