"""The retrieval memory ("dynamic memory", docs/retrieval.md, "How the
memory retrieves").

  corpus.py   entry schema, readers (JSONL/CSV + folder, Parquet, webdataset,
              synthetic, MedPix-2.0, ROCO), array_record store
  embed.py    sharded CLIP / precomputed embeddings, float16 shards + manifest
  index.py    exact and ScaNN searchers, sharded search, build/save/load
  stages.py   dense tie-robust cutoff, visual rerank, BM25 gate
  queries.py  question pool M0, task-level queries, zero-shot domains
  siphon.py   Dynamic Siphon levels and quotas, PRIMED_uni
  memory.py   all of the above built once and queried
  sampler.py  the ReferenceSource for the trainer, background prefetch
  leakage.py  near-duplicates between the corpus and evaluation splits

The trainer calls `build_reference_source(exp, batch_size)` and talks to the
result through `mgtil_jax.data.reference.ReferenceSource`.
"""

from __future__ import annotations

import os

from mgtil_jax.core import errors
from mgtil_jax.core import hosts
from mgtil_jax.core import sharding
from mgtil_jax.retrieval import checks
from mgtil_jax.retrieval import corpus as corpus_lib
from mgtil_jax.retrieval import queries as queries_lib
from mgtil_jax.retrieval import trace
from mgtil_jax.retrieval.memory import RetrievalMemory
from mgtil_jax.retrieval.sampler import RetrievalReferenceSource, prefetch

__all__ = ['build_reference_source', 'corpus_reference_set', 'prefetch',
           'RetrievalReferenceSource', 'RetrievalMemory', 'validate_config']

validate_config = checks.validate_config


def corpus_specs(exp) -> list[dict]:
  """The corpus sources: config.retrieval.corpus.sources, or the embedded
  benchmark's pretraining literature."""
  cfg = exp.config.retrieval.corpus
  if cfg.sources:
    return [dict(s) for s in cfg.sources]
  if exp.config.data.name != 'mgtil_synth':
    raise errors.UserError(checks.corpus_missing_message(exp.config))
  per_class = cfg.synth_per_class or exp.config.get(
      'pretrain', {}).get('corpus_per_class', 120)
  return [{'kind': 'synth', 'per_class': int(per_class),
           'image_size': exp.config.data.image_size,
           'seed': exp.config.data.seed, 'data_cfg': exp.config.data,
           'cache_dir': os.path.join(exp.cache_dir, 'data')}]


def domain_descriptions(exp, pool) -> dict[str, tuple[str, ...]]:
  domains = {q.domain for q in pool if q.domain} | {t.domain for t in
                                                     exp.tasks}
  out = queries_lib.default_descriptions(sorted(domains))
  if exp.config.retrieval.pool:  # a nested pool's own modality phrases
    out.update({d: p for d, p in queries_lib.pool_descriptions(
        exp.config.retrieval.pool).items() if d in domains})
  for d, phrases in dict(exp.config.retrieval.domain_descriptions).items():
    out[d] = (phrases,) if isinstance(phrases, str) else tuple(phrases)
  return out


def question_pool(exp) -> list:
  cfg = exp.config.retrieval
  synthetic = exp.config.data.name == 'mgtil_synth'
  if cfg.pool:
    base = queries_lib.default_descriptions(sorted({t.domain for t in
                                                    exp.tasks}))
    base.update({d: (p,) if isinstance(p, str) else tuple(p) for d, p in
                 dict(cfg.domain_descriptions).items()})
    return queries_lib.load_pool(cfg.pool, cfg.query_template, base)
  if synthetic:
    return queries_lib.synth_pool(cfg.query_template)
  if cfg.mode == 'uni':
    return []
  # Any other benchmark: the packaged medical pool (docs/retrieval.md).
  return queries_lib.default_pool(cfg.query_template)


def corpus_dir_of(exp, specs) -> str:
  """Where the corpus of `specs` is ingested (shared by PRIMED's memory and
  ZSCL's reference set, so one ingestion serves both)."""
  cfg = exp.config.retrieval
  root = os.path.join(exp.workdir, 'retrieval')
  return cfg.corpus.dir or os.path.join(
      root, 'corpus-' + corpus_lib.spec_key(specs, cfg.corpus.shard_size,
                                            cfg.corpus.check_images))


def corpus_reference_set(exp, batch_size: int):
  """ZSCL's reference set on a benchmark given a corpus: a random subset
  (seeded by config.seed, the same for every method) of the corpus's image
  entries, of PRIMED_uni's size (config.retrieval.reference_size), with
  entries that near-duplicate an evaluation image dropped (pHash, as the
  retrieval memory's leakage check)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data import reference  # pylint: disable=g-import-not-at-top
  from mgtil_jax.retrieval import leakage as leakage_lib  # pylint: disable=g-import-not-at-top
  cfg = exp.config.retrieval
  specs = corpus_specs(exp)
  directory = corpus_dir_of(exp, specs)
  if hosts.is_lead():
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    corpus_lib.open_or_ingest(specs, directory,
                              shard_size=cfg.corpus.shard_size,
                              check_images=cfg.corpus.check_images)
  hosts.sync('reference_corpus')
  corpus = corpus_lib.Corpus(directory)
  keep = corpus.has_image.copy()
  if cfg.leakage.check and cfg.leakage.drop:
    lk = cfg.leakage
    report = leakage_lib.check(corpus, exp.tasks, method='phash',
                               max_distance=lk.max_distance,
                               max_pixel_diff=lk.max_pixel_diff)
    keep[np.asarray(report['leaked_rows'], np.int64)] = False
  rows = np.flatnonzero(keep)
  if not len(rows):
    raise errors.UserError(f'retrieval corpus {directory}: no image entry '
                           'left for the reference set')
  pick = np.sort(rows[np.random.default_rng([exp.config.seed, 7]).permutation(
      len(rows))[:cfg.reference_size]])
  images = corpus.images(pick, exp.model.cfg.vision.image_size,
                         cfg.decode_threads)
  captions = corpus.captions.take(pick)
  return reference.FixedReferenceSet(images, exp.tokenizer(captions),
                                     batch_size, exp.config.seed)


def build_reference_source(exp, batch_size: int) -> RetrievalReferenceSource:
  """The PRIMED reference source of an experiment (see reference.py).

  Reads exp.config.retrieval (knobs), exp.tasks, exp.tokenizer, exp.model,
  exp.workdir (everything is stored under <workdir>/retrieval) and the
  corpus. Cheap: the corpus, embeddings and index are built (or loaded) at
  the first `prepare`, which must get the initial params at task 0.
  """
  from mgtil_jax.retrieval import embed as embed_lib  # pylint: disable=g-import-not-at-top
  cfg = exp.config.retrieval
  validate_config(cfg)
  sharding.check_batch_divisible(batch_size, exp.mesh, 'reference batch size')
  root = os.path.join(exp.workdir, 'retrieval')
  os.makedirs(root, exist_ok=True)
  specs = corpus_specs(exp)
  corpus_dir = corpus_dir_of(exp, specs)
  towers = embed_lib.ClipTowers(exp, cfg.embed_batch_size)
  memory = RetrievalMemory(cfg, root=root, corpus_specs=specs,
                           corpus_dir=corpus_dir, towers=towers,
                           tokenizer=exp.tokenizer, tasks=exp.tasks)
  pool = question_pool(exp)
  descriptions = domain_descriptions(exp, pool)
  templates = tuple(exp.config.prompts.templates)

  def classify(params, texts, domains, prior=None):
    return queries_lib.zero_shot_domains(
        lambda t: towers.text(params, exp.tokenizer(t)), texts,
        {d: descriptions[d] for d in domains}, templates, with_margins=True,
        tol=cfg.domain_tolerance, prior=prior)

  source = RetrievalReferenceSource(
      memory, cfg=cfg, tasks=exp.tasks, tokenizer=exp.tokenizer, pool=pool,
      descriptions=descriptions, batch_size=batch_size, seed=exp.config.seed,
      image_size=exp.model.cfg.vision.image_size, classify_fn=classify)
  if cfg.mode == 'uni' and not cfg.uni_keywords and (
      exp.config.data.name == 'mgtil_synth'):
    source.keywords = queries_lib.synth_keywords()
  # Writes <workdir>/retrieval/trace/task-<t>.json for the notebook.
  return trace.record(source, root)
