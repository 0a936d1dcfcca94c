"""Corpus embeddings: caption vectors from a pluggable text encoder and image
vectors from the initial CLIP image tower.

The CLIP towers run as jitted functions with the batch sharded over every
device of the experiment's mesh (the same placement as the train step), on
fixed-size padded batches (one compilation). Output is written per corpus
shard, float16, atomically; a manifest records the encoder ids, dims, row
counts and a sha256 per file, so an interrupted embedding resumes at the
first missing shard and a stale file is detected on load.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
from concurrent import futures
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.core import sharding
from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip
from mgtil_jax.retrieval import corpus as corpus_lib

log = logging.getLogger(__name__)

MANIFEST = 'embeddings_manifest.json'


@jax.jit
def _param_stats(params):
  return jax.tree.map(
      lambda x: jnp.stack([jnp.sum(x.astype(jnp.float32)),
                           jnp.sum(jnp.square(x.astype(jnp.float32)))]),
      params)


def params_fingerprint(params) -> str:
  """A short id of a params tree: per-leaf sum and sum of squares (computed
  on device, so it works for any sharding), rounded, hashed."""
  stats = _param_stats(params)
  text = str(jax.tree.structure(params)) + ';'.join(
      f'{float(x):.6g}' for v in jax.tree.leaves(jax.device_get(stats))
      for x in np.ravel(v))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class ClipTowers:
  """Jitted CLIP encoders with the batch sharded over the experiment mesh.

  `text(params, tokens int32[N, L]) -> float32[N, E]` and
  `image(params, images uint8[N, S, S, 3]) -> float32[N, E]`, both
  L2-normalised; any N (padded to `batch_size` internally). Texts run at
  the longest caption of the whole call rounded up to `token_bucket` tokens
  (`tokenizer.trim_padding`), not at the context length.

  `batch_size` rows go to each batch shard (device) per call, whatever the
  device count: XLA picks its kernels by shape, and on CPU the text tower's
  vectors change in the last bits between 256 and 128 rows per device. With
  a fixed per-device shape every row is computed by the same program on one
  process or many, so the vectors, and the retrieval built on them, do not
  depend on the process count (docs/retrieval.md).
  """

  def __init__(self, exp, batch_size: int = 256,
               token_bucket: int | None = tokenizer_lib.DEFAULT_BUCKET):
    self.exp = exp
    shards = exp.mesh.shape['data'] * exp.mesh.shape['fsdp']
    unit = int(np.lcm(shards, jax.process_count()))
    self.per_device = batch_size
    self.batch_size = -(-batch_size * shards // unit) * unit  # per call
    self.image_size = exp.model.cfg.vision.image_size
    self.token_bucket = token_bucket
    model = exp.model
    repl = sharding.replicated(exp.mesh)
    img_sh = sharding.batch_sharding(exp.mesh, exp.rules, 4)
    tok_sh = sharding.batch_sharding(exp.mesh, exp.rules, 2)

    @functools.partial(jax.jit, in_shardings=(None, img_sh),
                       out_shardings=repl)
    def image_fn(params, images):
      return clip.l2_normalize(model.apply(
          {'params': params}, tasks_lib.preprocess(images),
          method=clip.CLIP.encode_image))

    @functools.partial(jax.jit, in_shardings=(None, tok_sh),
                       out_shardings=repl)
    def text_fn(params, tokens):
      return clip.l2_normalize(model.apply({'params': params}, tokens,
                                           method=clip.CLIP.encode_text))

    self._image_fn, self._text_fn = image_fn, text_fn

  def _run(self, fn, params, x: np.ndarray) -> np.ndarray:
    n, bs = len(x), self.batch_size
    out = []
    with self.exp.context():
      for start in range(0, n, bs):
        chunk = x[start:start + bs]
        pad = bs - len(chunk)
        if pad:
          chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                                  chunk.dtype)])
        y = fn(params, self.exp.put_batch({'x': chunk})['x'])
        out.append(np.asarray(jax.device_get(y))[:bs - pad])
    if not out:
      return np.zeros((0, self.exp.model.cfg.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32)

  def text(self, params, tokens: np.ndarray) -> np.ndarray:
    # Trimmed over the whole call, not per chunk: a chunk's rows depend on
    # the device count, and its width must not (docs/retrieval.md).
    tokens = tokenizer_lib.trim_padding(np.asarray(tokens, np.int32),
                                        self.token_bucket,
                                        self.exp.model.cfg.text.pad_id)
    return self._run(self._text_fn, params, tokens)

  def image(self, params, images: np.ndarray) -> np.ndarray:
    return self._run(self._image_fn, params, np.asarray(images, np.uint8))


# ----------------------------------------------------------- text encoders --


class TextEncoder(Protocol):
  encoder_id: str
  dim: int

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32[N, dim], L2-normalised (queries)."""

  def encode_rows(self, corpus, rows: np.ndarray) -> np.ndarray:
    """float32[len(rows), dim], L2-normalised (captions of corpus rows)."""


class ClipTextEncoder:
  """The CLIP text tower of the given (initial) params."""

  def __init__(self, towers: ClipTowers, params, tokenizer,
               fingerprint: str | None = None):
    self.towers, self.params, self.tokenizer = towers, params, tokenizer
    self.dim = towers.exp.model.cfg.embed_dim
    self.encoder_id = f'clip-text:{fingerprint or params_fingerprint(params)}'

  def encode(self, texts):
    if not len(texts):
      return np.zeros((0, self.dim), np.float32)
    return self.towers.text(self.params, self.tokenizer(list(texts)))

  def encode_rows(self, corpus, rows):
    return self.encode(corpus.captions.take(rows))


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class PrecomputedTextEncoder:
  """Vectors computed offline by any text-embedding model.

  caption_vectors: a glob of .npy shards whose rows, concatenated in sorted
    file order, follow the corpus row order.
  query_vectors: an .npz with 'texts' (str[Q]) and 'vectors' (float[Q, D]);
    every query the run needs must be in it.
  """

  def __init__(self, caption_vectors: str, query_vectors: str):
    self.files = sorted(glob.glob(os.path.expanduser(caption_vectors)))
    if not self.files:
      raise FileNotFoundError(f'config.retrieval.precomputed.caption_vectors: '
                              f'no .npy file matches {caption_vectors!r}')
    self.shards = [np.load(f, mmap_mode='r') for f in self.files]
    dims = {s.shape[1] if s.ndim == 2 else None for s in self.shards}
    if len(dims) != 1 or None in dims:
      raise ValueError(f'precomputed caption vectors {caption_vectors!r}: '
                       f'expected 2-D arrays of one width, got shapes '
                       f'{[s.shape for s in self.shards][:5]}')
    self.dim = dims.pop()
    self.starts = np.concatenate([[0], np.cumsum([len(s) for s in
                                                  self.shards])])
    if not os.path.exists(query_vectors):
      raise FileNotFoundError(f'config.retrieval.precomputed.query_vectors: '
                              f'{query_vectors!r} not found (an .npz with '
                              "'texts' and 'vectors')")
    with np.load(query_vectors, allow_pickle=False) as f:
      if 'texts' not in f or 'vectors' not in f:
        raise ValueError(f'{query_vectors}: expected arrays texts and '
                         f'vectors, got {f.files}')
      texts, vectors = [str(t) for t in f['texts']], f['vectors']
    if vectors.shape != (len(texts), self.dim):
      raise ValueError(f'{query_vectors}: vectors {vectors.shape} do not '
                       f'match {len(texts)} texts x caption dim {self.dim}')
    self.query_file = query_vectors
    self.queries = dict(zip(texts, _normalize(vectors)))
    h = hashlib.sha256()
    for f in self.files + [query_vectors]:
      h.update(os.path.basename(f).encode())
      h.update(corpus_lib.sha256_file(f).encode())
    self.encoder_id = f'precomputed:{h.hexdigest()[:16]}'

  def __len__(self):
    return int(self.starts[-1])

  def encode(self, texts):
    missing = [t for t in texts if t not in self.queries]
    if missing:
      raise KeyError(f'{self.query_file}: no precomputed vector for '
                     f'{len(missing)} queries, e.g. {missing[:3]}')
    if not len(texts):
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self.queries[t] for t in texts])

  def encode_rows(self, corpus, rows):
    if len(self) != len(corpus):
      raise ValueError(f'precomputed caption vectors: {len(self)} rows in '
                       f'{len(self.files)} files, the corpus has '
                       f'{len(corpus)} entries')
    return _normalize(_gather(self.shards, self.starts, rows))


def _gather(shards, starts, rows, dtype=np.float32) -> np.ndarray:
  rows = np.asarray(rows, np.int64)
  width = shards[0].shape[1]
  out = np.empty((len(rows), width), dtype)
  which = np.searchsorted(starts, rows, side='right') - 1
  for s in np.unique(which):
    sel = which == s
    out[sel] = shards[s][rows[sel] - starts[s]]
  return out


class ClipImageEncoder:

  def __init__(self, towers: ClipTowers, params,
               fingerprint: str | None = None):
    self.towers, self.params = towers, params
    self.dim = towers.exp.model.cfg.embed_dim
    self.image_size = towers.image_size
    self.encoder_id = f'clip-image:{fingerprint or params_fingerprint(params)}'

  def encode(self, images: np.ndarray) -> np.ndarray:
    return self.towers.image(self.params, images)


# -------------------------------------------------------------- the store --


def _atomic_save(path: str, array: np.ndarray) -> str:
  tmp = path + '.tmp.npy'
  np.save(tmp, array)
  os.replace(tmp, path)
  return corpus_lib.sha256_file(path)


def _chunks(corpus, rows, size, batch, threads):
  """(rows, decoded images) per batch of image rows; the next batch is
  decoded on a thread while the current one is embedded."""
  pool = futures.ThreadPoolExecutor(1)
  try:
    parts = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    nxt = pool.submit(corpus.images, parts[0], size, threads) if parts else None
    for i, part in enumerate(parts):
      images = nxt.result()
      if i + 1 < len(parts):
        nxt = pool.submit(corpus.images, parts[i + 1], size, threads)
      yield part, images
  finally:
    pool.shutdown(wait=True)


def embed_corpus(corpus, out_dir: str, *, text_encoder, image_encoder,
                 batch_size: int = 256, threads: int = 4,
                 write: bool = True, progress: bool = False) -> dict:
  """Embeds every shard of `corpus` not yet in `out_dir`; returns the
  manifest. Text-only entries get an all-zero image vector.

  `write=False` (non-lead processes) runs the same jitted calls, so every
  process takes part in the sharded computation, and writes nothing.
  """
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MANIFEST)
  header = {'corpus_snapshot': corpus.snapshot, 'dtype': 'float16',
            'text_encoder': text_encoder.encoder_id,
            'image_encoder': image_encoder.encoder_id,
            'text_dim': int(text_encoder.dim),
            'image_dim': int(image_encoder.dim),
            'num_entries': len(corpus), 'num_shards': corpus.num_shards}
  manifest = dict(header, shards={}, complete=False)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    clash = {k: (old.get(k), v) for k, v in header.items() if old.get(k) != v}
    if clash:
      raise ValueError(f'{path}: existing embeddings were made for another '
                       f'corpus or encoder ({clash}); use another directory '
                       'or delete it')
    manifest = old
  shards = range(corpus.num_shards)
  if progress:
    from mgtil_jax.core import logs  # pylint: disable=g-import-not-at-top
    shards = logs.progress(shards, desc='embed corpus', unit=' shards')
  for s in shards:
    key = f'{s:05d}'
    done = manifest['shards'].get(key)
    if done and _shard_ok(out_dir, done):
      continue
    rows = corpus.shard_rows(s)
    text = np.zeros((len(rows), text_encoder.dim), np.float16)
    for i in range(0, len(rows), batch_size * 8):
      part = rows[i:i + batch_size * 8]
      text[i:i + len(part)] = text_encoder.encode_rows(corpus, part)
    image = np.zeros((len(rows), image_encoder.dim), np.float16)
    with_image = rows[corpus.has_image[rows]]
    # One tower call per chunk (its batch covers every device).
    chunk = max(batch_size, getattr(getattr(image_encoder, 'towers', None),
                                    'batch_size', 0))
    for part, images in _chunks(corpus, with_image, image_encoder.image_size,
                                chunk, threads):
      image[part - rows[0]] = image_encoder.encode(images)
    if not write:
      continue
    text_file, image_file = f'text-{key}.npy', f'image-{key}.npy'
    manifest['shards'][key] = {
        'rows': int(len(rows)),
        'text_file': text_file,
        'text_sha256': _atomic_save(os.path.join(out_dir, text_file), text),
        'image_file': image_file,
        'image_sha256': _atomic_save(os.path.join(out_dir, image_file),
                                     image)}
    corpus_lib._write_json(path, manifest)  # pylint: disable=protected-access
  if write:
    manifest['complete'] = len(manifest['shards']) == corpus.num_shards
    corpus_lib._write_json(path, manifest)  # pylint: disable=protected-access
  return manifest


def _shard_ok(out_dir: str, info: dict) -> bool:
  for kind in ('text', 'image'):
    p = os.path.join(out_dir, info[f'{kind}_file'])
    if not os.path.exists(p) or corpus_lib.sha256_file(p) != info[
        f'{kind}_sha256']:
      return False
  return True


class Embeddings:
  """Read access to embedded shards (memory-mapped float16)."""

  def __init__(self, directory: str, corpus, verify: bool = True):
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f'retrieval embeddings: {path} not found')
    with open(path) as f:
      self.manifest = m = json.load(f)
    if m['corpus_snapshot'] != corpus.snapshot:
      raise ValueError(f'retrieval embeddings {directory} were made from '
                       f'corpus snapshot {m["corpus_snapshot"]}, but the '
                       f'corpus is {corpus.snapshot}: embed it again')
    if not m.get('complete') or len(m['shards']) != corpus.num_shards:
      raise ValueError(f'retrieval embeddings {directory}: incomplete '
                       f'({len(m["shards"])} of {corpus.num_shards} shards); '
                       'run the embedding again to finish it')
    self.directory = directory
    self.text_dim, self.image_dim = m['text_dim'], m['image_dim']
    self.text_encoder, self.image_encoder = m['text_encoder'], m[
        'image_encoder']
    self._text, self._image = [], []
    for s in range(corpus.num_shards):
      info = m['shards'][f'{s:05d}']
      if info['rows'] != corpus.shard_lengths[s]:
        raise ValueError(f'retrieval embeddings {directory}: shard {s} has '
                         f'{info["rows"]} rows, the corpus shard has '
                         f'{corpus.shard_lengths[s]}')
      if verify and not _shard_ok(directory, info):
        raise ValueError(f'retrieval embeddings {directory}: shard {s} is '
                         'missing or its checksum does not match the '
                         'manifest')
      self._text.append(np.load(os.path.join(directory, info['text_file']),
                                mmap_mode='r'))
      self._image.append(np.load(os.path.join(directory, info['image_file']),
                                 mmap_mode='r'))
    self.starts = corpus.shard_starts
    h = hashlib.sha256()
    for s in range(corpus.num_shards):
      info = m['shards'][f'{s:05d}']
      h.update((info['text_sha256'] + info['image_sha256']).encode())
    h.update((m['text_encoder'] + m['image_encoder']).encode())
    self.checksum = h.hexdigest()[:32]

  def text(self, rows) -> np.ndarray:
    return _gather(self._text, self.starts, rows)

  def image(self, rows) -> np.ndarray:
    return _gather(self._image, self.starts, rows)

  def vectors(self, kind: str, rows) -> np.ndarray:
    """float16[len(rows), D] of 'text' or 'image' vectors (index input)."""
    shards = self._text if kind == 'text' else self._image
    return _gather(shards, self.starts, rows, np.float16)
