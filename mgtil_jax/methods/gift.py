"""GIFT, Wu et al. CVPR 2025, "Synthetic Data is an Elegant GIFT for
Continual Vision-Language Models" (docs/methods.md, "GIFT").

On image-caption pairs that stand in for the pre-training data: KD of the
initial model's image-text logits (both directions, Eq. CKT), image-text
alignment against the pairs' own captions (Eq. ITA), and adaptive weight
consolidation: a quadratic pull towards the params before the task weighted
by this step's squared KD+ITA gradient normalised by its per-tensor mean
(the official code, Luo-Jiaming/GIFT_CL `finetune_gift.py`) -- the same
term as PRIMED's DFG with dfg_normalize='mean' (Eq. DFG).

GIFT generates its pairs with Stable Diffusion from class-name prompts,
which cannot run here. The pairs come from `method_kwargs.gift_pairs` (a
folder in the layout of `load_pairs`) when set, else from the retrieval
memory (`method_kwargs.reference`, default retrieval_uni); results.json
records which under `method_info.gift_pairs`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mgtil_jax.criteria import losses
from mgtil_jax.data import reference
from mgtil_jax.methods import base, parts, registry

PAIRS_FILE = 'pairs.jsonl'


def load_pairs(directory: str, image_size: int):
  """A folder of generated pairs: `<dir>/pairs.jsonl`, one JSON object per
  line {"image": "<path relative to dir>", "caption": "<text>"}; images in
  any format Pillow reads, resized to image_size x image_size RGB.
  Returns (uint8[N, S, S, 3], captions)."""
  path = os.path.join(directory, PAIRS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.method_kwargs.gift_pairs: expected '
                            f'{path} (one {{"image", "caption"}} per line)')
  images, captions = [], []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        image_path, caption = row['image'], str(row['caption'])
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path}:{n}: expected {{"image": ..., "caption": '
                         f'...}}, got {line.strip()[:80]!r}') from e
      with Image.open(os.path.join(directory, image_path)) as im:
        images.append(np.asarray(im.convert('RGB').resize(
            (image_size, image_size), Image.BICUBIC), np.uint8))
      captions.append(caption)
  if not images:
    raise ValueError(f'{path}: no pairs')
  return np.stack(images), captions


class GiftPairs(parts.ReferenceBatches):
  """Reference batches from the generated-pairs folder, else the retrieval
  memory; records the source in meta['method_info']['gift_pairs']."""

  def __init__(self, kw):
    self.directory = kw.get('gift_pairs', '') or ''
    kind = parts.reference_kind(kw, 'retrieval_uni')
    super().__init__(kind, make_source=self._source)

  def _source(self, exp):
    bs = exp.config.method_kwargs.reference_batch_size
    if not self.directory:
      return parts.make_reference_source(exp, self.kind, bs)
    images, captions = load_pairs(self.directory,
                                  exp.model.cfg.vision.image_size)
    return reference.FixedReferenceSet(images, exp.tokenizer(captions), bs,
                                       exp.config.seed)

  def open_task(self, exp, state, meta, t, start):
    meta.setdefault('method_info', {})['gift_pairs'] = (
        f'dir:{os.path.abspath(self.directory)}' if self.directory
        else self.kind)
    super().open_task(exp, state, meta, t, start)


class GiftDistill(base.Part):
  """Group 'distill': gift_kd_weight * CKT against the initial model +
  gift_ita_weight * ITA on the pairs."""

  def state_trees(self, kw):
    return ('initial',)

  def loss_groups(self, ctx):
    kw, model = ctx.kw, ctx.model

    def distill(params, state, batch, prompts, teacher):
      del prompts, teacher
      images, tokens = batch['ref_image'], batch['ref_tokens']
      teacher_logits = jax.lax.stop_gradient(base.pair_logits(
          model, jax.lax.stop_gradient(state['initial']), images, tokens))
      student = base.pair_logits(model, params, images, tokens)
      # Pairs with the same caption (one class prompt) share targets.
      same = jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)
      return {
          'kd': kw.gift_kd_weight * losses.cross_modal_kd(
              student, teacher_logits, temperature=kw.kd_temperature),
          'ita': kw.gift_ita_weight * losses.soft_image_text_alignment(
              student, same,
              label_smoothing=ctx.config.train.label_smoothing)}

    return {'distill': distill}


class AdaptiveWeightConsolidation(parts.DFG):
  """AWC: DFG's term with per-tensor mean normalisation and its own weight
  (`gift_awc_weight`), reported as 'awc'."""

  def grad_terms(self, ctx, params, state, group_grads):
    kw = ctx.kw
    weights = jax.lax.stop_gradient(group_grads[self.group])
    anchor = jax.lax.stop_gradient(state['anchor'])
    return {'awc': jax.value_and_grad(
        lambda p: kw.gift_awc_weight * losses.dynamic_fisher_guard(
            p, anchor, weights, normalize='mean'))(params)}


@registry.register('gift', paper='GIFT, Wu et al. CVPR 2025: KD + image-text '
                   'alignment on synthetic pairs + adaptive weight '
                   'consolidation')
def build(kw):
  pairs = GiftPairs(kw)
  return base.Method('gift', [pairs, GiftDistill(),
                              AdaptiveWeightConsolidation('distill')],
                     reference=pairs.kind)
