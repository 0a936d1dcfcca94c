r"""Train-step time of the CLIP task step (CE on class prompts), per preset.

  python benchmarks/step_time.py                      # tiny preset, CPU
  python benchmarks/step_time.py --presets=tiny,vit_b16_pubmedbert --batch=8

Prints a table and writes benchmarks/results/step_time_<platform>.json.

FLOP count: XLA's own cost analysis of the compiled step (forward + backward
+ optimizer, all prompts of the task included), cross-checked against the
analytic count 6 * params_touched * tokens for the transformer matmuls (shown
as `analytic GFLOP`). MFU = achieved FLOP/s / peak FLOP/s, where the peak is
the device's dense bf16/fp32 spec on GPU/TPU (table below) and, on CPU, the
FLOP/s of a large float32 matmul measured in the same run.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
from mgtil_jax import train

# Dense peak FLOP/s by device kind (vendor specs, no sparsity).
PEAK = {'H100': {'bfloat16': 989e12, 'float32': 67e12},
        'H200': {'bfloat16': 989e12, 'float32': 67e12},
        'A100': {'bfloat16': 312e12, 'float32': 19.5e12}}


def measured_matmul_peak(n=2048, reps=5):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def device_peak(dtype):
  kind = jax.devices()[0].device_kind
  for k, v in PEAK.items():
    if k in kind:
      return v[dtype], f'{k} spec'
  return measured_matmul_peak(), 'measured f32 matmul'


def analytic_flops(model_cfg, batch, num_prompts):
  """6 * N * tokens for the transformer stacks (fwd + bwd, matmuls only)."""
  v, t = model_cfg.vision, model_cfg.text
  vis_tokens = (v.image_size // v.patch_size) ** 2 + 1
  vis_params = v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)
  txt_params = t.depth * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim)
  attn_v = v.depth * 2 * vis_tokens ** 2 * v.width  # QK^T and AV
  attn_t = t.depth * 2 * t.context_length ** 2 * t.width
  fwd = (2 * vis_params * vis_tokens + 2 * attn_v) * batch + (
      2 * txt_params * t.context_length + 2 * attn_t) * num_prompts
  return 3 * fwd


def bench(preset, batch, dtype, steps, remat):
  config = mgtil_synth.get_config(f'runlocal,tasks=1,preset={preset}')
  config.model.dtype = dtype
  config.model.remat = remat
  config.train.batch_size = batch
  exp = train.setup(config, tempfile.mkdtemp())
  mcfg = exp.model.cfg
  tx = train.make_optimizer(lr=1e-5, steps=1000, warmup_steps=100,
                            weight_decay=0.0, freeze_logit_scale=True)
  shardings = train.state_shardings(exp, tx, with_anchor=False)
  params = train.init_params(exp, 0)
  with exp.context():
    state = {'params': params,
             'opt': jax.jit(tx.init, out_shardings=shardings['opt'])(params)}
  step = train.make_task_step(exp, tx, shardings)
  size = mcfg.vision.image_size
  rng = np.random.default_rng(0)
  class_names = exp.tasks[0].class_names
  batch_np = {'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
              'label': rng.integers(0, len(class_names), batch).astype(
                  np.int32)}
  prompts = exp.replicated(exp.prompt_tokens(class_names))
  with exp.context():
    b = exp.put_batch(batch_np)
    compiled = step.lower(state, b, prompts).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan')))
    mem = compiled.memory_analysis()
    state, m = step(state, b, prompts)  # warm-up
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, exp.put_batch(batch_np), prompts)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
  peak, peak_src = device_peak(dtype)
  return {
      'preset': preset, 'dtype': dtype, 'remat': remat, 'batch': batch,
      'num_prompts': len(class_names), 'step_s': dt,
      'images_per_s': batch / dt, 'xla_gflop': flops / 1e9,
      'analytic_gflop': analytic_flops(mcfg, batch, len(class_names)) / 1e9,
      'achieved_tflops': flops / dt / 1e12, 'peak_tflops': peak / 1e12,
      'peak_source': peak_src, 'mfu': flops / dt / peak,
      'temp_mib': getattr(mem, 'temp_size_in_bytes', 0) / 2 ** 20,
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--presets', default='tiny')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--remat', action='store_true')
  p.add_argument('--out', default=None)
  args = p.parse_args()
  rows = [bench(preset, args.batch, args.dtype, args.steps, args.remat)
          for preset in args.presets.split(',')]
  dev = jax.devices()[0]
  header = ('preset', 'dtype', 'batch', 'step ms', 'img/s', 'XLA GFLOP',
            'analytic GFLOP', 'TFLOP/s', 'MFU', 'peak from')
  print(f'device: {dev.device_kind} x{jax.device_count()} ({dev.platform})')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    print(f"| {r['preset']} | {r['dtype']} | {r['batch']} | "
          f"{1e3 * r['step_s']:.1f} | {r['images_per_s']:.1f} | "
          f"{r['xla_gflop']:.2f} | {r['analytic_gflop']:.2f} | "
          f"{r['achieved_tflops']:.3f} | {100 * r['mfu']:.1f}% | "
          f"{r['peak_source']} ({r['peak_tflops']:.2f} TFLOP/s) |")
  out = args.out or os.path.join(ROOT, 'benchmarks', 'results',
                                 f'step_time_{dev.platform}.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'device': dev.device_kind, 'platform': dev.platform,
               'device_count': jax.device_count(), 'jax': jax.__version__,
               'python': platform.python_version(), 'rows': rows}, f,
              indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
