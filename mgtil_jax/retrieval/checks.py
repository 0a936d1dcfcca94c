"""The retrieval memory's own config checks and messages: its knobs
(`validate_config`), the corpus sources and question pool a config names,
and the line that tells a user of a corpus method what to give. The
whole-config validation (entry/validation.py) calls them."""

from __future__ import annotations

import os

from mgtil_jax.core.errors import UserError, UserFileError
from mgtil_jax.retrieval import corpus as corpus_lib


def benchmark_name(config) -> str:
  data = config.get('data') or {}
  return str(data.get('benchmark') or data.get('name') or 'your benchmark')


def corpus_missing_message(config) -> str:
  """The one line telling a user of a corpus-needing method what to give."""
  bench = benchmark_name(config)
  return (f'method {config.get("method")!r} needs an image-caption corpus and '
          f'benchmark {bench!r} has none built in: give corpus=<folder or '
          f'file> (e.g. --config=configs/{bench}.py:method='
          f'{config.get("method")},corpus=/data/captions.jsonl; JSONL / CSV / '
          'Parquet of image path + caption, a MedPix 2.0 folder or webdataset '
          '.tar shards, see docs/retrieval.md), or set '
          'config.retrieval.corpus.sources')


def check_sources(retrieval) -> tuple:
  """The corpus sources of `config.retrieval` (kind 'path' files that
  exist and parse, 'real_mini' folders) and its question pool file; returns
  the sources. One line naming the argument to give for each bad one."""
  sources = tuple((retrieval.get('corpus') or {}).get('sources') or ()) if (
      retrieval) else ()
  for spec in sources:
    spec = dict(spec)
    kind = spec.get('kind')
    try:
      if kind == 'path':
        corpus_lib.specs_from_path(spec.get('paths', ''),
                                   spec.get('arg', 'corpus'))
      elif kind == 'real_mini':
        for key in ('medpix', 'vqa_rad'):
          if not os.path.isdir(str(spec.get(key) or '')):
            raise UserFileError(
                f'corpus=real_mini: the {key} folder {spec.get(key)!r} does '
                'not exist (it is read from root=; set root= or MGTIL_DATA to '
                'the folder holding medpix2/ and vqa_rad/)')
      elif kind not in corpus_lib.READERS:
        raise UserError(f'config.retrieval.corpus.sources: unknown kind '
                        f'{kind!r}; expected one of '
                        f'{sorted(corpus_lib.READERS)}')
    except UserError:
      raise
    except FileNotFoundError as e:
      raise UserFileError(str(e)) from e
    except ValueError as e:
      raise UserError(str(e)) from e
  pool = retrieval.get('pool') if retrieval else ''
  if pool and not os.path.isfile(os.path.expanduser(str(pool))):
    raise UserFileError(f'pool: {pool} not found (config.retrieval.pool: '
                        'expected a JSON or CSV question pool file, see '
                        'docs/retrieval.md)')
  return sources


def validate_config(cfg) -> None:
  """Fails fast on a bad config.retrieval field, naming it."""
  def positive(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise ValueError(f'config.retrieval.{name}: expected an integer >= '
                       f'{minimum}, got {value!r}')
  if cfg.mode not in ('dyn', 'uni'):
    raise ValueError(f"config.retrieval.mode: expected 'dyn' or 'uni', got "
                     f'{cfg.mode!r}')
  for name in ('k', 'k_v', 'fetch_factor', 'max_fetch', 'reference_size',
               'embed_batch_size', 'index_shard_rows', 'prefetch_depth',
               'exact_block_rows', 'decode_threads'):
    positive(name, cfg[name])
  for name in ('a', 'b', 'c', 'n', 'max_reference_size'):
    positive(name, cfg[name], 0)
  for name in ('tie_tolerance', 'domain_tolerance'):
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        value < 0):
      raise ValueError(f'config.retrieval.{name}: expected a number >= 0, '
                       f'got {value!r}')
  positive('corpus.shard_size', cfg.corpus.shard_size)
  if cfg.searcher not in ('auto', 'exact', 'scann'):
    raise ValueError(f"config.retrieval.searcher: expected 'auto', 'exact' or "
                     f"'scann', got {cfg.searcher!r}")
  if cfg.text_encoder not in ('clip', 'precomputed'):
    raise ValueError(f"config.retrieval.text_encoder: expected 'clip' or "
                     f"'precomputed', got {cfg.text_encoder!r}")
  if cfg.domain_source not in ('model', 'pool'):
    raise ValueError(f"config.retrieval.domain_source: expected 'model' or "
                     f"'pool', got {cfg.domain_source!r}")
  if cfg.bm25_query not in ('query', 'finding'):
    raise ValueError(f"config.retrieval.bm25_query: expected 'query' or "
                     f"'finding', got {cfg.bm25_query!r}")
  if cfg.leakage.method not in ('phash', 'embedding'):
    raise ValueError(f"config.retrieval.leakage.method: expected 'phash' or "
                     f"'embedding', got {cfg.leakage.method!r}")
  for name in ('{modality}', '{finding}'):
    if name not in cfg.query_template:
      raise ValueError(f'config.retrieval.query_template: expected {name} in '
                       f'{cfg.query_template!r}')
