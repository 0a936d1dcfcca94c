"""DIKI, Tang et al. ECCV 2024: per-task residual attention prompts into a
frozen backbone, with a per-task feature Gaussian fitted at the task end
that calibrates how much of the task's knowledge to inject at test time.
docs/methods.md, "Adapters"."""

from __future__ import annotations

import jax
import numpy as np

from mgtil_jax.methods import adapter, base, registry
from mgtil_jax.models import adapters


class Diki(adapter.Adapters):

  def task_end_params(self, exp, params, t, prompts):
    params = adapters.mark_task_trained(params, t)
    model = exp.model
    with exp.context():
      feats_fn = jax.jit(lambda p, x: adapters.calibration_features(
          model, p, adapter.preprocess(x)),
                         out_shardings=exp.replicated_sharding)
      feats = np.concatenate([np.asarray(feats_fn(params, images))
                              for images in adapter.task_images(exp, t)])
      params = adapters.set_calibration(params, t,
                                        adapters.fit_calibration(feats))
    return jax.device_put(params, exp.param_shardings)


@registry.register('diki', paper='DIKI, Tang et al. ECCV 2024')
def build(kw):
  del kw
  return base.Method('diki', [Diki('diki')])
