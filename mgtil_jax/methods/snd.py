"""SnD: Select and Distill, Yu et al. ECCV 2024 (docs/methods.md, "SnD").

Selective dual-teacher feature distillation on reference images: the
previous-task model and the initial (pre-trained) model both teach; each
reference image goes mostly to the previous model when the two teachers
disagree on it (it lies in what the earlier tasks changed) and mostly to the
initial model otherwise (zero-shot knowledge). Weights follow the official
code's defaults (chu0802/SnD, `snd_loss`: 9 and 0.5, threshold 0.2, scale 6).
"""

from __future__ import annotations

import jax

from mgtil_jax.criteria import losses
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.methods import base, parts, registry
from mgtil_jax.models import clip


class SelectiveDistill(base.Part):
  """Group 'distill': snd_prev_weight * term_prev + snd_init_weight *
  term_init of `losses.selective_dual_teacher_kd` (Eq. SnD)."""

  def state_trees(self, kw):
    return ('anchor', 'initial')

  def loss_groups(self, ctx):
    kw, model = ctx.kw, ctx.model

    def features(params, images):
      return clip.l2_normalize(model.apply(
          {'params': params}, tasks_lib.preprocess(images),
          method=clip.CLIP.encode_image))

    def distill(params, state, batch, prompts, teacher):
      del prompts, teacher
      images = batch['ref_image']
      previous = features(jax.lax.stop_gradient(state['anchor']), images)
      initial = features(jax.lax.stop_gradient(state['initial']), images)
      to_previous, to_initial = losses.selective_dual_teacher_kd(
          features(params, images), previous, initial,
          threshold=kw.snd_threshold, scale=kw.snd_scale)
      return {'snd_prev': kw.snd_prev_weight * to_previous,
              'snd_init': kw.snd_init_weight * to_initial}

    return {'distill': distill}


@registry.register('snd', paper='SnD, Yu et al. ECCV 2024: selective '
                   'dual-teacher (previous + initial model) feature KD on a '
                   'reference set')
def build(kw):
  ref = parts.reference_kind(kw, 'corpus')
  return base.Method('snd', [parts.ReferenceBatches(ref),
                             SelectiveDistill()], reference=ref)
