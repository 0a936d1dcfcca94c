r"""Accelerator suite: one command on a GPU or TPU host, JSON plus a markdown
table (benchmarks/results/gpu_suite_<platform>.{json,md}).

  python benchmarks/gpu_suite.py                       # real sizes, bf16
  python benchmarks/gpu_suite.py --parts=step --methods=primed --batches=128
  python benchmarks/gpu_suite.py --smoke               # tiny, CPU, < 2 min

Parts (`--parts`, default all):
  step      a. the trainer's continual step (steps.make_task_step) of ft, zscl
            and primed at 64/128/256 images per device, bf16 compute, with and
            without remat: step time, img/s, MFU = XLA FLOPs / time / (device
            bf16 peak x devices), peak device memory (memory_stats) and XLA's
            compiled memory analysis. Texts are trimmed (the default).
  pipeline  b. input pipeline: grain over an array_record file of JPEG-encoded
            224-px images (decode + random crop/flip + batch, one worker per
            host core): img/s, against the fastest primed step's img/s.
            Skipped (with the reason) without grain or array_record.
  topk      c. exact top-k on the device (retrieval.index.ExactSearcher) over
            1M x 512 vectors vs ScaNN on the host (ScannSearcher, the
            project's parameters): QPS and recall@10 against exact search.
            ScaNN is skipped (with the reason) when not installed.
  e2e       d. one continual PRIMED-style task end to end at real size on
            synthetic 224-px data: retrieval (embed a synthetic corpus with
            the CLIP towers, exact top-k for the task's queries), training
            steps fed by a prefetching host thread, evaluation; wall time
            split into step / data wait / eval / retrieval.

Goals on H100/H200 (issue 14): the PRIMED step at >= 45% MFU in bf16, data
wait <= 2% of step time. Only jax/flax/optax and this package are required:
grain, array_record, scann and ml_collections are imported when present (the
configs use ml_collections.ConfigDict; without it a minimal stand-in with the
same attribute/dict behaviour is installed for this process only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top


# ------------------------------------------------------ optional imports --


class _ConfigDict(dict):
  """The part of ml_collections.ConfigDict the configs use: attribute access,
  nested dicts converted on assignment, get, to_dict,
  copy_and_resolve_references, lock/unlocked (no-ops)."""

  def __init__(self, initial=None, **kwargs):
    super().__init__()
    for k, v in dict(initial or {}, **kwargs).items():
      self[k] = v

  def __setitem__(self, key, value):
    if isinstance(value, dict) and not isinstance(value, _ConfigDict):
      value = _ConfigDict(value)
    super().__setitem__(key, value)

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  def __setattr__(self, key, value):
    self[key] = value

  def __deepcopy__(self, memo):
    return _ConfigDict(copy.deepcopy(dict(self), memo))

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _ConfigDict) else v
            for k, v in self.items()}

  def copy_and_resolve_references(self):
    return copy.deepcopy(self)

  def lock(self):
    return self

  def unlock(self):
    return self

  @contextlib.contextmanager
  def unlocked(self):
    yield self


def ensure_ml_collections() -> str:
  """'ml_collections' or 'stand-in' (installed into sys.modules)."""
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top,unused-import
    return 'ml_collections'
  except ImportError:
    module = types.ModuleType('ml_collections')
    module.ConfigDict = module.FrozenConfigDict = _ConfigDict
    sys.modules['ml_collections'] = module
    return 'stand-in'


def _optional(name):
  try:
    return __import__(name)
  except ImportError:
    return None


# ------------------------------------------------------------- helpers --


def _median_time(fn, steps):
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times)), times


def _peak_memory():
  """Peak bytes in use on device 0 so far (None where the backend keeps no
  statistics, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else int(peak)


def _device_peak_flops(dtype):
  import step_time  # pylint: disable=g-import-not-at-top
  return step_time.device_peak(dtype)


def _sizes(smoke):
  if smoke:
    return dict(preset='tiny', batches=(2,), steps=2, ref_batch=2,
                pipeline_images=64, pipeline_batch=16, topk_n=10_000,
                topk_queries=64, e2e_steps=3, e2e_corpus=64, dtype='float32')
  return dict(preset='vit_b16_pubmedbert', batches=(64, 128, 256), steps=10,
              ref_batch=None, pipeline_images=2048, pipeline_batch=256,
              topk_n=1_000_000, topk_queries=1024, e2e_steps=100,
              e2e_corpus=8192, dtype='bfloat16')


# ------------------------------------------------------------ a. steps --


def _build_step(method, preset, global_batch, ref_batch, dtype, remat,
                caption_words=38):
  """The trainer's continual step at real size, its state and placed
  inputs (task batch, reference pairs of ~40-token captions, prompts)."""
  import step_time  # pylint: disable=g-import-not-at-top
  from mgtil_jax.training import steps  # pylint: disable=g-import-not-at-top
  from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data import synth  # pylint: disable=g-import-not-at-top
  exp, tx, shardings, state = step_time.fresh_method_state(
      method, preset, global_batch, dtype, remat=remat)
  task = exp.tasks[0]
  host = tasks_lib.task_batch(task, 0, global_batch, 0, 0)
  rng = np.random.default_rng(0)
  if exp.method.distill:
    s = exp.model.cfg.vision.image_size
    words = sorted(w for w in synth.vocabulary() if w.isalpha())
    host['ref_image'] = rng.integers(0, 256, (ref_batch, s, s, 3), np.uint8)
    host['ref_tokens'] = exp.tokenizer([' '.join(rng.choice(
        words, caption_words)) for _ in range(ref_batch)])
  prompts = {'task': exp.replicated(exp.prompt_tokens(task.class_names))}
  step = steps.make_task_step(exp, tx, shardings)
  with exp.context():
    placed = exp.put_batch(host)
  return exp, step, state, placed, prompts, host


def step_grid(methods, batches, remats, smoke):
  """(method, per-device batch, remat) to run; the smoke run compiles remat
  only for the last method (each compile costs seconds on CPU)."""
  grid = [(m, b, r) for m in methods for b in batches for r in remats]
  if smoke:
    grid = [(m, b, r) for m, b, r in grid if not r or m == methods[-1]]
  return grid


def part_step(cfg, grid):
  import step_time  # pylint: disable=g-import-not-at-top
  n_dev = jax.device_count()
  peak, peak_src = _device_peak_flops('bfloat16' if cfg['dtype'] ==
                                      'bfloat16' else 'float32')
  rows = []
  for method, per_device, remat in grid:
    gb = per_device * n_dev
    row = {'method': method, 'per_device_batch': per_device,
           'global_batch': gb, 'remat': remat, 'dtype': cfg['dtype'],
           'preset': cfg['preset'], 'devices': n_dev,
           'peak_tflops': peak * n_dev / 1e12, 'peak_source': peak_src}
    try:
      exp, step, state, placed, prompts, host = _build_step(
          method, cfg['preset'], gb, cfg['ref_batch'] or gb,
          cfg['dtype'], remat)
      with exp.context():
        t = time.perf_counter()
        compiled = step.lower(state, placed, prompts).compile()
        row['compile_s'] = time.perf_counter() - t
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get('flops', np.nan))
        mem = compiled.memory_analysis()
        # The compiled executable itself: no second compilation on call.
        state, m = compiled(state, placed, prompts)  # warm-up
        jax.block_until_ready(m)
        box = [state]

        def run():
          box[0], metrics = compiled(box[0], placed, prompts)
          return box[0], metrics

        step_s, times = _median_time(run, cfg['steps'])
      mcfg = exp.model.cfg
      real = lambda x: [int(n) for n in (np.asarray(x) != 0).sum(1)]
      minimum = step_time.method_step_flops(
          mcfg, bool(exp.method.distill), gb,
          real(jax.device_get(prompts['task'])),
          len(host.get('ref_tokens', [])),
          real(host['ref_tokens']) if 'ref_tokens' in host else [])
      row.update(
          step_s=step_s, all_s=times, images_per_s=gb / step_s,
          xla_gflop=flops / 1e9, analytic_min_gflop=minimum / 1e9,
          mfu=flops / step_s / (peak * n_dev),
          peak_memory_bytes=_peak_memory(),
          compiled_temp_bytes=int(getattr(mem, 'temp_size_in_bytes', 0)),
          compiled_argument_bytes=int(getattr(
              mem, 'argument_size_in_bytes', 0)))
      del state, box, placed, exp, step, compiled
    except Exception as e:  # pylint: disable=broad-except
      # An out-of-memory batch size is a result, not a crash.
      row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
    rows.append(row)
    print(_fmt_step(row), flush=True)
  return rows


def _fmt_step(r):
  if 'error' in r:
    return (f"| {r['method']} | {r['per_device_batch']} | {r['remat']} | "
            f"{r['error']} | | | | |")
  mem = r['peak_memory_bytes']
  mem = f'{mem / 2 ** 30:.1f}' if mem is not None else 'n/a'
  return (f"| {r['method']} | {r['per_device_batch']} | {r['remat']} | "
          f"{1e3 * r['step_s']:.1f} | {r['images_per_s']:.1f} | "
          f"{100 * r['mfu']:.1f}% | {mem} | "
          f"{r['compiled_temp_bytes'] / 2 ** 30:.2f} |")


# -------------------------------------------------------- b. pipeline --


def _jpeg_records(n, size, seed=0):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (8, size + 32, size + 32, 3), np.uint8)
  for i in range(n):
    buf = io.BytesIO()
    Image.fromarray(base[i % 8]).save(buf, format='JPEG', quality=90)
    yield buf.getvalue()


class _DecodeCrop:
  """JPEG bytes -> uint8[S, S, 3]: decode, random crop, random flip (a
  class, so grain can send it to worker processes)."""

  def __init__(self, size):
    self.size = size

  def __call__(self, record, rng=None):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = np.asarray(Image.open(io.BytesIO(record)).convert('RGB'))
    rng = rng or np.random.default_rng(len(record))
    y = rng.integers(0, img.shape[0] - self.size + 1)
    x = rng.integers(0, img.shape[1] - self.size + 1)
    img = img[y:y + self.size, x:x + self.size]
    return img[:, ::-1] if rng.integers(2) else img


def part_pipeline(cfg, workdir, consumed_images_per_s=None):
  grain = _optional('grain')
  array_record = _optional('array_record')
  row = {'images': cfg['pipeline_images'], 'batch': cfg['pipeline_batch'],
         'image_size': 224, 'workers': os.cpu_count()}
  if grain is None or array_record is None:
    row['skipped'] = ('grain and array_record are needed '
                      f"(grain: {'yes' if grain else 'no'}, array_record: "
                      f"{'yes' if array_record else 'no'})")
    return [row]
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'images.array_record')
  writer = ArrayRecordWriter(path, 'group_size:1')
  for rec in _jpeg_records(cfg['pipeline_images'], 224):
    writer.write(rec)
  writer.close()
  source = grain.sources.ArrayRecordDataSource([path])
  workers = 0 if cfg['preset'] == 'tiny' else os.cpu_count()
  row['workers'] = workers
  ds = (grain.MapDataset.source(source).shuffle(seed=0)
        .random_map(_RandomDecode(224), seed=1)
        .batch(cfg['pipeline_batch'], drop_remainder=True))
  it_ds = ds.to_iter_dataset()
  if workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers))
  it = iter(it_ds)
  first = next(it)  # workers started
  t, n = time.perf_counter(), 0
  for batch in it:
    n += len(batch)
  dt = time.perf_counter() - t
  row.update(images_per_s=n / dt if n else float('nan'),
             batch_shape=list(np.shape(first)))
  if consumed_images_per_s:
    row['step_images_per_s'] = consumed_images_per_s
    # The share of step time spent waiting if loading did not overlap.
    row['load_over_step'] = consumed_images_per_s / row['images_per_s']
  return [row]


class _RandomDecode:
  """grain RandomMapTransform-style callable: (record, rng) -> image."""

  def __init__(self, size):
    self.decode = _DecodeCrop(size)

  def __call__(self, record, rng):
    return self.decode(record, rng)


# ------------------------------------------------------------ c. top-k --


def _scann_params(n):
  try:
    ensure_ml_collections()
    from configs import retrieval as retrieval_config  # pylint: disable=g-import-not-at-top
    scann_cfg = retrieval_config.get_config().retrieval.scann
  except Exception:  # pylint: disable=broad-except
    scann_cfg = None
  if scann_cfg is None or 'leaves_per_sqrt' not in scann_cfg:
    # The defaults of configs/retrieval.py (c.retrieval.scann).
    scann_cfg = types.SimpleNamespace(
        leaves_per_sqrt=1.0, search_fraction=0.02, training_sample=100000,
        spherical=True, dims_per_block=2, aq_threshold=0.2,
        reorder_factor=30, reorder_dtype='float32')
  elif isinstance(scann_cfg, dict):
    scann_cfg = types.SimpleNamespace(**scann_cfg)
  from mgtil_jax.retrieval import index  # pylint: disable=g-import-not-at-top
  return index.scann_params(n, scann_cfg)


def part_topk(cfg, k=10):
  from mgtil_jax.retrieval import index  # pylint: disable=g-import-not-at-top
  n, q, dim = cfg['topk_n'], cfg['topk_queries'], 512
  rng = np.random.default_rng(0)
  # Clustered unit vectors: neighbours are meaningful, as with embeddings.
  centers = rng.standard_normal((256, dim)).astype(np.float32)
  vectors = centers[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal(
      (n, dim)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  queries = vectors[rng.integers(0, n, q)] + 0.1 * rng.standard_normal(
      (q, dim)).astype(np.float32)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  rows = []
  exact = index.ExactSearcher(vectors)
  exact.search(queries, k)  # compile
  s, (truth_scores, truth) = time.perf_counter(), exact.search(queries, k)
  dt = time.perf_counter() - s
  rows.append({'searcher': f'exact on {jax.devices()[0].platform}',
               'n': n, 'dim': dim, 'queries': q, 'qps': q / dt,
               'recall_at_10': 1.0, 'build_s': 0.0})
  # The truth is checked against NumPy on a few queries (exactness guard).
  few = np.argsort(-(vectors @ queries[:4].T), axis=0)[:k].T
  rows[-1]['numpy_agreement'] = float(np.mean([len(set(a) & set(b)) / k
                                               for a, b in zip(few,
                                                               truth[:4])]))
  if _optional('scann') is None:
    rows.append({'searcher': 'scann on host', 'n': n,
                 'skipped': 'scann is not installed'})
    return rows
  params = _scann_params(n)
  t = time.perf_counter()
  searcher = index.ScannSearcher.build(vectors, params, k=k)
  build_s = time.perf_counter() - t
  searcher.search(queries[:8], k)
  t = time.perf_counter()
  _, found = searcher.search(queries, k)
  dt = time.perf_counter() - t
  # Tie-aware: a returned copy of a true neighbour is a hit.
  recall = index.search_recall(vectors, queries, found, truth_scores, k)
  rows.append({'searcher': 'scann on host', 'n': n, 'dim': dim, 'queries': q,
               'qps': q / dt, 'recall_at_10': recall, 'build_s': build_s,
               'params': params})
  return rows


# -------------------------------------------------------- d. end to end --


def part_e2e(cfg):
  """One task of a distillation method, end to end: retrieval, prefetched
  steps, evaluation; wall time per phase."""
  from mgtil_jax.data import reference  # pylint: disable=g-import-not-at-top
  from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mgtil_jax.retrieval import embed, index, sampler  # pylint: disable=g-import-not-at-top
  per_device = cfg['batches'][0]
  gb = per_device * jax.device_count()
  wall = time.perf_counter()
  exp, step, state, _, prompts, _ = _build_step(
      'primed', cfg['preset'], gb, gb, cfg['dtype'], remat=False)
  setup_s = time.perf_counter() - wall
  task = exp.tasks[0]
  # Retrieval: embed a synthetic image-caption corpus with the CLIP towers,
  # search it with the task's queries, decode-free gather of the set.
  t = time.perf_counter()
  images, captions = tasks_lib.synth_corpus(
      exp.config.data, max(1, cfg['e2e_corpus'] // 40),
      os.path.join(exp.cache_dir, 'data'))
  towers = embed.ClipTowers(exp, batch_size=min(256, 4 * gb))
  params = state['params']
  text_vectors = towers.text(params, exp.tokenizer(list(captions)))
  queries = towers.text(params, exp.prompt_tokens(task.class_names))
  k = max(1, min(len(captions), 4 * gb // max(1, len(queries))))
  _, rows_found = index.ExactSearcher(text_vectors).search(queries, k)
  rows_found = np.unique(rows_found[rows_found >= 0])
  ref_source = reference.FixedReferenceSet(
      images[rows_found], exp.tokenizer([captions[i] for i in rows_found]),
      gb, exp.config.seed, pad_id=exp.tokenizer.pad_id)
  retrieval_s = time.perf_counter() - t

  class Source:
    def batch(self, task_index, s):
      b = tasks_lib.task_batch(task, s, gb, exp.config.seed, task_index)
      r = ref_source.batch(task_index, s)
      return dict(b, ref_image=r['image'], ref_tokens=r['tokens'])

  step_s = wait_s = 0.0
  n_steps = cfg['e2e_steps']
  with exp.context():
    t = time.perf_counter()
    compiled = step.lower(state, exp.put_batch(Source().batch(0, 0)),
                          prompts).compile()
    compile_s = time.perf_counter() - t
    batches = sampler.prefetch(Source(), 0, range(n_steps), exp.put_batch)
    for _ in range(n_steps):
      t = time.perf_counter()
      batch = next(batches)
      wait_s += time.perf_counter() - t
      t = time.perf_counter()
      state, m = compiled(state, batch, prompts)
      jax.block_until_ready(m)
      step_s += time.perf_counter() - t
    batches.close()
  t = time.perf_counter()
  evaluate = train.make_evaluator(exp)
  result = evaluate(state['params'], task, 0)
  eval_s = time.perf_counter() - t
  total = time.perf_counter() - wall
  # setup_s: building the experiment and state (synthetic data included).
  return [{'method': 'primed (fixed retrieved set)', 'preset': cfg['preset'],
           'global_batch': gb, 'steps': n_steps, 'setup_s': setup_s,
           'compile_s': compile_s,
           'retrieval_s': retrieval_s, 'step_s': step_s,
           'data_wait_s': wait_s, 'eval_s': eval_s, 'total_s': total,
           'data_wait_over_step': wait_s / step_s if step_s else None,
           'reference_set': int(len(rows_found)),
           'corpus': int(len(captions)),
           'accuracy': float(np.asarray(result[0]))}]


# ---------------------------------------------------------------- main --


def to_markdown(result) -> str:
  out = [f"# gpu_suite: {result['device']} x{result['device_count']} "
         f"({result['platform']}), jax {result['jax']}"
         f"{', SMOKE (tiny sizes)' if result['smoke'] else ''}", '']
  if result.get('step'):
    out += ['## a. continual step', '',
            '| method | per-device batch | remat | ms/step | img/s | MFU | '
            'peak mem GiB | XLA temp GiB |', '|---|---|---|---|---|---|---|---|']
    out += [_fmt_step(r) for r in result['step']]
    out += ['', f"MFU against {result['step'][0]['peak_source']} x devices.",
            '']
  if result.get('pipeline'):
    out += ['## b. input pipeline (grain over array_record, 224 px)', '']
    for r in result['pipeline']:
      if 'skipped' in r:
        out.append(f"skipped: {r['skipped']}")
      else:
        line = (f"{r['images_per_s']:.0f} img/s with {r['workers']} workers "
                f"(batch {r['batch']})")
        if 'step_images_per_s' in r:
          line += (f"; the fastest primed step consumes "
                   f"{r['step_images_per_s']:.0f} img/s = "
                   f"{100 * r['load_over_step']:.1f}% of the loader")
        out.append(line)
    out.append('')
  if result.get('topk'):
    out += ['## c. top-k search', '',
            '| searcher | N | queries | QPS | recall@10 | build s |',
            '|---|---|---|---|---|---|']
    for r in result['topk']:
      if 'skipped' in r:
        out.append(f"| {r['searcher']} | {r['n']} | skipped: "
                   f"{r['skipped']} | | | |")
      else:
        out.append(f"| {r['searcher']} | {r['n']} | {r['queries']} | "
                   f"{r['qps']:.0f} | {r['recall_at_10']:.4f} | "
                   f"{r['build_s']:.1f} |")
    out.append('')
  if result.get('e2e'):
    out += ['## d. one task end to end', '',
            '| steps | batch | step s | data wait s | eval s | retrieval s | '
            'setup s | compile s | total s | wait / step |',
            '|---|---|---|---|---|---|---|---|---|---|']
    for r in result['e2e']:
      out.append(f"| {r['steps']} | {r['global_batch']} | {r['step_s']:.2f} | "
                 f"{r['data_wait_s']:.3f} | {r['eval_s']:.2f} | "
                 f"{r['retrieval_s']:.2f} | {r['setup_s']:.1f} | "
                 f"{r['compile_s']:.1f} | "
                 f"{r['total_s']:.1f} | "
                 f"{100 * (r['data_wait_over_step'] or 0):.1f}% |")
  for name, err in result.get('errors', {}).items():
    out.append(f'part {name} failed: {err}')
  return '\n'.join(out) + '\n'


def run(smoke=False, parts=('step', 'pipeline', 'topk', 'e2e'),
        methods=('ft', 'zscl', 'primed'), batches=None, remats=(False, True),
        out_dir=None, stream=sys.stdout):
  """Runs the parts; returns the result dict (also written as JSON + md)."""
  cfg = _sizes(smoke)
  if batches:
    cfg['batches'] = tuple(batches)
  config_lib = ensure_ml_collections()
  dev = jax.devices()[0]
  result = {'device': dev.device_kind, 'platform': dev.platform,
            'device_count': jax.device_count(), 'jax': jax.__version__,
            'python': platform.python_version(), 'smoke': smoke,
            'config_library': config_lib, 'sizes': dict(cfg), 'errors': {}}
  workdir = tempfile.mkdtemp(prefix='gpu_suite_')
  timings = {}
  for part in parts:
    t = time.perf_counter()
    try:
      if part == 'step':
        result['step'] = part_step(cfg, step_grid(methods, cfg['batches'],
                                                  remats, smoke))
      elif part == 'pipeline':
        fastest = max((r.get('images_per_s', 0) for r in result.get(
            'step', []) if r['method'] == 'primed'), default=None)
        result['pipeline'] = part_pipeline(cfg, workdir, fastest)
      elif part == 'topk':
        result['topk'] = part_topk(cfg)
      elif part == 'e2e':
        result['e2e'] = part_e2e(cfg)
      else:
        raise ValueError(f'--parts: unknown part {part!r}; expected step, '
                         'pipeline, topk or e2e')
    except ValueError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # One failing part (e.g. OOM at real size) must not lose the others.
      result['errors'][part] = f'{type(e).__name__}: {e}'[:500]
    timings[part] = time.perf_counter() - t
  result['part_wall_s'] = timings
  out_dir = out_dir or os.path.join(ROOT, 'benchmarks', 'results')
  os.makedirs(out_dir, exist_ok=True)
  stem = f"gpu_suite_{dev.platform}{'_smoke' if smoke else ''}"
  with open(os.path.join(out_dir, stem + '.json'), 'w') as f:
    json.dump(result, f, indent=1, default=str)
  md = to_markdown(result)
  with open(os.path.join(out_dir, stem + '.md'), 'w') as f:
    f.write(md)
  print(md, file=stream)
  print(f"wrote {os.path.join(out_dir, stem)}.{{json,md}}", file=stream)
  return result


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--smoke', action='store_true',
                 help='tiny sizes on CPU (< 2 min), for CI')
  p.add_argument('--parts', default='step,pipeline,topk,e2e')
  p.add_argument('--methods', default='ft,zscl,primed')
  p.add_argument('--batches', default='',
                 help='per-device batch sizes (default 64,128,256)')
  p.add_argument('--remat', default='false,true',
                 help='remat settings to run: false,true')
  p.add_argument('--out_dir', default=None)
  a = p.parse_args(argv)
  remats = tuple({'false': False, 'true': True}[x.strip().lower()]
                 for x in a.remat.split(','))
  batches = tuple(int(x) for x in a.batches.split(',') if x)
  result = run(a.smoke, tuple(a.parts.split(',')), tuple(a.methods.split(',')),
               batches or None, remats, a.out_dir)
  return 1 if result['errors'] else 0


if __name__ == '__main__':
  sys.exit(main())
