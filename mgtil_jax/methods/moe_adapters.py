"""MoE-Adapters, Yu et al. CVPR 2024: per-task routers over shared
mixture-of-experts adapters; at each task end the task's most used experts
are frozen (activate-freeze). docs/methods.md, "Adapters"."""

from __future__ import annotations

import jax
import numpy as np

from mgtil_jax.methods import adapter, base, registry
from mgtil_jax.models import adapters


class MoE(adapter.Adapters):

  def task_end_params(self, exp, params, t, prompts):
    params = adapters.mark_task_trained(params, t)
    model = exp.model
    with exp.context():
      counts_fn = jax.jit(lambda p, x, tok: adapters.expert_counts(
          model, p, adapter.preprocess(x), tok, t),
                          out_shardings=exp.replicated_sharding)
      counts = None
      for images in adapter.task_images(exp, t):
        c = jax.device_get(counts_fn(params, images, prompts))
        counts = c if counts is None else jax.tree.map(np.add, counts, c)
      params = adapters.freeze_experts(params, counts,
                                       model.adapter.freeze_top)
    return jax.device_put(params, exp.param_shardings)


@registry.register('moe_adapters', paper='MoE-Adapters, Yu et al. CVPR 2024')
def build(kw):
  del kw
  return base.Method('moe_adapters', [MoE('moe_adapters')])
