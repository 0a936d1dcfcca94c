r"""Train-step time of the CLIP steps, per preset, dtype and step kind.

  python benchmarks/step_time.py                      # tiny preset, CPU
  python benchmarks/step_time.py --presets=tiny,vit_b16_pubmedbert --batch=8
  python benchmarks/step_time.py --init=/path/to/BiomedCLIP --modes=task,contrastive \
      --dtypes=float32,bfloat16 --batch=2 --steps=2 --out=benchmarks/results/x.json

Step kinds (`--modes`): `task` is the continual task step (CE of the batch's
images against every prompt of the task); `contrastive` is BiomedCLIP's own
training step (image-caption pairs, CLIP loss, captions of the full context
length). Both are forward + backward + AdamW. `--init` starts from a
BiomedCLIP checkpoint directory (its architecture and image size; the model
then runs on the loaded weights, exactly as `config.model.init=DIR` does).

Prints a table and writes benchmarks/results/step_time_<platform>.json.

Text padding, trimmed vs padded (`--trim_compare`): the continual step of
each method (`--methods`, default ft,zscl,primed) runs twice on the same
state, once with every text at the full context length (the tokenizer's
bucket=None, as before trimming) and once trimmed to each call's longest
text rounded up to 16 tokens (the default). The two are interleaved step by
step and the medians compared, so both see the same load; the ratio is the
number to read. Task prompts are the task's class prompts; reference
captions are `--caption_words` words of the model's vocabulary (~40 tokens,
as PRIMED's retrieved captions).

  nice python benchmarks/step_time.py --trim_compare \
      --presets=vit_b16_pubmedbert --batch=2 --ref_batch=2 --steps=2

FLOP count: XLA's own cost analysis of the compiled step (forward + backward
+ optimizer, all prompts of the task included), cross-checked against the
analytic count 6 * params_touched * tokens for the transformer matmuls (shown
as `analytic GFLOP`). MFU = achieved FLOP/s / peak FLOP/s, where the peak is
the device's dense bf16/fp32 spec on GPU/TPU (table below) and, on CPU, the
FLOP/s of a large matmul in the step's dtype measured in the same run.
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
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import presets

# Dense peak FLOP/s by device kind (vendor specs, no sparsity).
PEAK = {'H100': {'bfloat16': 989e12, 'float32': 67e12},
        'H200': {'bfloat16': 989e12, 'float32': 67e12},
        'A100': {'bfloat16': 312e12, 'float32': 19.5e12}}


def measured_matmul_peak(dtype='float32', n=2048, reps=5, trials=3):
  """Best of `trials` timings, taken right after the step it normalises (on
  a shared machine both then see the same load)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(trials):
    t = time.perf_counter()
    for _ in range(reps):
      f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 * reps / best


def device_peak(dtype):
  kind = jax.devices()[0].device_kind
  for k, v in PEAK.items():
    if k in kind:
      return v[dtype], f'{k} spec'
  return measured_matmul_peak(dtype), f'measured {dtype} matmul'


def analytic_flops(model_cfg, batch, num_prompts):
  """6 * N * tokens for the transformer stacks (fwd + bwd, matmuls only);
  `num_prompts` texts of the full context length."""
  v, t = model_cfg.vision, model_cfg.text
  vis_tokens = (v.image_size // v.patch_size) ** 2 + 1
  vis_params = v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)
  txt_params = t.depth * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim)
  attn_v = v.depth * 2 * vis_tokens ** 2 * v.width  # QK^T and AV
  attn_t = t.depth * 2 * t.context_length ** 2 * t.width
  fwd = (2 * vis_params * vis_tokens + 2 * attn_v) * batch + (
      2 * txt_params * t.context_length + 2 * attn_t) * num_prompts
  return 3 * fwd


def text_forward_flops(t, lengths):
  """Forward matmul FLOPs of the BERT text tower over texts of the given
  token counts (each attends over its own length)."""
  per_token = 2 * t.depth * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim)
  return sum(per_token * n + 4 * t.depth * n * n * t.width for n in lengths)


def vision_forward_flops(v, images):
  tokens = (v.image_size // v.patch_size) ** 2 + 1
  per_image = (2 * v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim) *
               tokens + 4 * v.depth * tokens ** 2 * v.width +
               2 * (tokens - 1) * v.patch_size ** 2 * v.channels * v.width)
  return images * per_image


def method_step_flops(mcfg, distill, batch, prompt_lengths, ref_batch,
                      ref_lengths):
  """Analytic matmul FLOPs of one continual step: forward + backward (3x
  forward) of the student on the task batch and its prompts, and, with a
  distillation loss, of the student on the reference pairs plus the frozen
  teacher's forward on them. Pass the real token counts for the minimum, the
  padded ones for what a padded step must do."""
  v, t = mcfg.vision, mcfg.text
  total = 3 * (vision_forward_flops(v, batch) +
               text_forward_flops(t, prompt_lengths))
  if distill:
    ref = (vision_forward_flops(v, ref_batch) +
           text_forward_flops(t, ref_lengths))
    total += 3 * ref + ref
  return total


def fresh_method_state(method, preset, batch, dtype, *, remat=False):
  """The trainer's experiment for `method` on one runlocal synthetic task at
  `preset` (224 px for real presets), and a fresh state for its continual
  step: (exp, tx, state shardings, state). Shared by the step benchmarks."""
  config = mgtil_synth.get_config(f'runlocal,tasks=1,method={method},'
                                  f'preset={preset}')
  config.train.batch_size = batch
  config.model.dtype = dtype
  config.model.remat = remat
  config.data.image_size = 224 if preset != 'tiny' else 32
  exp = train.setup(config, tempfile.mkdtemp(prefix='bench_'))
  tx = train.make_optimizer(lr=1e-5, steps=100, warmup_steps=10,
                            weight_decay=0.0, freeze_logit_scale=True)
  shardings = train.state_shardings(exp, tx, exp.state_trees)
  params = train.init_params(exp, seed=0)
  with exp.context():
    opt = jax.jit(tx.init, out_shardings=shardings['opt'])(params)
  state = {'params': params, 'opt': opt, **train.initial_trees(exp, params)}
  return exp, tx, shardings, state


def _method_step(method, preset, batch, ref_batch, dtype, caption_words):
  """The trainer's continual step of `method` at 224 px (real presets),
  its state, and host task/reference batches as text lists."""
  from mgtil_jax.training import steps  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data import synth  # pylint: disable=g-import-not-at-top
  exp, tx, shardings, state = fresh_method_state(method, preset, batch,
                                                 dtype)
  task = exp.tasks[0]
  host = tasks_lib.task_batch(task, 0, batch, 0, 0)
  rng = np.random.default_rng(0)
  words = sorted(w for w in synth.vocabulary() if w.isalpha())
  captions = [' '.join(rng.choice(words, caption_words))
              for _ in range(ref_batch)] if exp.method.distill else []
  if exp.method.distill:
    s = exp.model.cfg.vision.image_size
    host['ref_image'] = rng.integers(0, 256, (ref_batch, s, s, 3), np.uint8)
  step = steps.make_task_step(exp, tx, shardings)
  return exp, step, state, host, task.class_names, captions


def _texts_for(exp, host, class_names, captions, bucket):
  """Placed batch and prompts with the tokenizer's bucket set to `bucket`;
  also the real token counts of the prompts and captions."""
  exp.tokenizer.bucket = bucket
  prompts = exp.prompt_tokens(class_names)
  batch = dict(host)
  if captions:
    batch['ref_tokens'] = exp.tokenizer(captions)
  exp.tokenizer.bucket = None
  real = lambda x: [int(n) for n in (x != exp.tokenizer.pad_id).sum(1)]
  lengths = (real(exp.prompt_tokens(class_names)),
             real(exp.tokenizer(captions)) if captions else [])
  with exp.context():
    return (exp.put_batch(batch), {'task': exp.replicated(prompts)},
            {'prompt_width': prompts.shape[1],
             'caption_width': batch['ref_tokens'].shape[1] if captions
                              else 0}, lengths)


def trim_compare(methods, preset, batch, ref_batch, dtype, steps,
                 caption_words=38):
  """Per method: padded and trimmed steps interleaved on one state; medians,
  XLA FLOPs of both compiled steps and the analytic minimum."""
  rows = []
  for method in methods:
    exp, step, state, host, names, captions = _method_step(
        method, preset, batch, ref_batch, dtype, caption_words)
    mcfg = exp.model.cfg
    variants = {}
    for kind, bucket in (('padded', None), ('trimmed', 16)):
      placed, prompts, widths, lengths = _texts_for(exp, host, names,
                                                    captions, bucket)
      with exp.context():
        t = time.perf_counter()
        compiled = step.lower(state, placed, prompts).compile()
        compile_s = time.perf_counter() - t
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      variants[kind] = dict(placed=placed, prompts=prompts, widths=widths,
                            compile_s=compile_s, times=[],
                            xla_gflop=float(cost.get('flops', np.nan)) / 1e9)
    prompt_real, caption_real = lengths
    distill = bool(exp.method.distill)
    minimum = method_step_flops(mcfg, distill, batch, prompt_real, ref_batch,
                                caption_real) / 1e9
    padded_analytic = method_step_flops(
        mcfg, distill, batch, [mcfg.text.context_length] * len(prompt_real),
        ref_batch, [mcfg.text.context_length] * len(caption_real)) / 1e9
    # steps=0: compile and count FLOPs only (no timing).
    for i in range(steps + 1 if steps else 0):  # round 0 warms both up
      for kind in ('padded', 'trimmed'):
        v = variants[kind]
        with exp.context():
          t = time.perf_counter()
          state, m = step(state, v['placed'], v['prompts'])
          jax.block_until_ready((state, m))
        if i:
          v['times'].append(time.perf_counter() - t)
          print(f"{method} {kind} step {i}: {v['times'][-1]:.2f}s",
                flush=True)
    med = {k: float(np.median(v['times'])) if v['times'] else float('nan')
           for k, v in variants.items()}
    rows.append({
        'method': method, 'preset': preset, 'dtype': dtype, 'batch': batch,
        'ref_batch': ref_batch if distill else 0,
        'num_prompts': len(prompt_real),
        'prompt_tokens_real': prompt_real, 'caption_tokens_real': caption_real,
        'prompt_width': {k: v['widths']['prompt_width']
                         for k, v in variants.items()},
        'caption_width': {k: v['widths']['caption_width']
                          for k, v in variants.items()},
        'padded_s': med['padded'], 'trimmed_s': med['trimmed'],
        'trimmed_over_padded': med['trimmed'] / med['padded'],
        'all_s': {k: v['times'] for k, v in variants.items()},
        'compile_s': {k: v['compile_s'] for k, v in variants.items()},
        'xla_gflop': {k: v['xla_gflop'] for k, v in variants.items()},
        'analytic_min_gflop': minimum,
        'analytic_padded_gflop': padded_analytic})
    print(f"{method}: padded {med['padded']:.2f}s trimmed "
          f"{med['trimmed']:.2f}s", flush=True)
    del state, variants, exp, step
  return rows


def print_trim_table(rows):
  header = ('method', 'prompts x width (pad/trim)', 'captions x width',
            'padded s', 'trimmed s', 'trimmed/padded', 'XLA GFLOP padded',
            'XLA GFLOP trimmed', 'analytic min GFLOP', 'trimmed XLA / min')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    pw, cw, x = r['prompt_width'], r['caption_width'], r['xla_gflop']
    print(f"| {r['method']} | {r['num_prompts']} x {pw['padded']}/"
          f"{pw['trimmed']} | {r['ref_batch']} x {cw['padded']}/"
          f"{cw['trimmed']} | {r['padded_s']:.2f} | {r['trimmed_s']:.2f} | "
          f"{r['trimmed_over_padded']:.3f} | {x['padded']:.0f} | "
          f"{x['trimmed']:.0f} | {r['analytic_min_gflop']:.0f} | "
          f"{x['trimmed'] / r['analytic_min_gflop']:.2f} |")


def _experiment(preset, batch, dtype, remat, init):
  config = mgtil_synth.get_config(f'runlocal,tasks=1,preset={preset}')
  if init:  # the checkpoint's architecture, image size and weights
    config.model.init = config.model.preset = init
    config.data.image_size = presets.get_preset(init).vision.image_size
  config.model.dtype = dtype
  config.model.remat = remat
  config.train.batch_size = batch
  exp = train.setup(config, tempfile.mkdtemp())
  params = (train.initial_params(exp, None) if init
            else train.init_params(exp, 0))
  return exp, params


def bench(preset, batch, dtype, steps, remat, mode='task', init=None):
  exp, params = _experiment(preset, batch, dtype, remat, init)
  mcfg = exp.model.cfg
  tx = train.make_optimizer(lr=1e-5, steps=1000, warmup_steps=100,
                            weight_decay=0.0,
                            freeze_logit_scale=mode == 'task')
  shardings = train.state_shardings(exp, tx)
  with exp.context():
    state = {'params': params,
             'opt': jax.jit(tx.init, out_shardings=shardings['opt'])(params)}
  size = mcfg.vision.image_size
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
  if mode == 'task':
    step = train.make_task_step(exp, tx, shardings)
    class_names = exp.tasks[0].class_names
    num_texts = len(class_names)
    batch_np = {'image': images, 'label': rng.integers(
        0, num_texts, batch).astype(np.int32)}
    extra = (exp.replicated(exp.prompt_tokens(class_names)),)
  elif mode == 'contrastive':
    step = train.make_pretrain_step(exp, tx, shardings)
    num_texts = batch
    # Captions filling the whole context: the compute of a padded one.
    tokens = rng.integers(5, exp.tokenizer.vocab_size,
                          (batch, mcfg.text.context_length)).astype(np.int32)
    batch_np = {'image': images, 'tokens': tokens}
    extra = ()
  else:
    raise ValueError(f'--modes: expected task or contrastive, got {mode!r}')
  with exp.context():
    b = exp.put_batch(batch_np)
    compiled = step.lower(state, b, *extra).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan')))
    mem = compiled.memory_analysis()
    state, m = step(state, b, *extra)  # warm-up
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, exp.put_batch(batch_np), *extra)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
  peak, peak_src = device_peak(dtype)
  return {
      'preset': os.path.basename(os.path.normpath(init)) if init else preset,
      'init': init, 'mode': mode, 'dtype': dtype, 'remat': remat,
      'batch': batch, 'num_texts': num_texts, 'step_s': dt,
      'images_per_s': batch / dt, 'xla_gflop': flops / 1e9,
      'analytic_gflop': analytic_flops(mcfg, batch, num_texts) / 1e9,
      'achieved_tflops': flops / dt / 1e12, 'peak_tflops': peak / 1e12,
      'peak_source': peak_src, 'mfu': flops / dt / peak,
      'temp_mib': getattr(mem, 'temp_size_in_bytes', 0) / 2 ** 20,
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--presets', default='tiny')
  p.add_argument('--init', default=None,
                 help='a BiomedCLIP checkpoint directory (replaces --presets)')
  p.add_argument('--modes', default='task', help='task,contrastive')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--dtype', '--dtypes', dest='dtypes', default='float32',
                 help='comma-separated: float32,bfloat16')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--remat', action='store_true')
  p.add_argument('--out', default=None)
  p.add_argument('--trim_compare', action='store_true',
                 help='continual steps with texts padded vs trimmed')
  p.add_argument('--methods', default='ft,zscl,primed')
  p.add_argument('--ref_batch', type=int, default=2)
  p.add_argument('--caption_words', type=int, default=38)
  args = p.parse_args()
  if args.trim_compare:
    dev = jax.devices()[0]
    rows = trim_compare(args.methods.split(','), args.presets.split(',')[0],
                        args.batch, args.ref_batch, args.dtypes.split(',')[0],
                        args.steps, args.caption_words)
    print(f'device: {dev.device_kind} x{jax.device_count()} ({dev.platform})'
          f', median of {args.steps} interleaved steps')
    print_trim_table(rows)
    out = args.out or os.path.join(ROOT, 'benchmarks', 'results',
                                   f'step_time_trim_{dev.platform}.json')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump({'device': dev.device_kind, 'platform': dev.platform,
                 'jax': jax.__version__, 'args': vars(args), 'rows': rows},
                f, indent=1)
    print(f'wrote {out}')
    return
  presets = [None] if args.init else args.presets.split(',')
  rows = [bench(preset, args.batch, dtype, args.steps, args.remat, mode,
                args.init)
          for preset in presets for mode in args.modes.split(',')
          for dtype in args.dtypes.split(',')]
  dev = jax.devices()[0]
  header = ('preset', 'step', 'dtype', 'batch', 'texts', 'step ms', 'img/s',
            'XLA GFLOP', 'analytic GFLOP', 'TFLOP/s', 'MFU', 'peak from')
  print(f'device: {dev.device_kind} x{jax.device_count()} ({dev.platform})')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    print(f"| {r['preset']} | {r['mode']} | {r['dtype']} | {r['batch']} | "
          f"{r['num_texts']} | "
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
