"""Knobs of the retrieval memory (docs/retrieval.md): corpus, embeddings,
index, multi-stage retrieval, Dynamic Siphon, reference batches.

`base_config()` adds `c.retrieval = retrieval.defaults()`; an experiment
config overrides single fields, e.g. `c.retrieval.mode = 'uni'`.

The paper gives b:c (30:80 on one benchmark, 70:100 on the other) but not a,
k, k_v or n; the values below are our choice (documented and exposed here).
"""

from __future__ import annotations

import os

import ml_collections


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --------------------------------------------------- the reference set --
  # 'dyn': the Dynamic Siphon (three query levels, quotas a / b / c);
  # 'uni': PRIMED_uni, proportional retrieval over `uni_keywords`.
  c.mode = 'dyn'
  c.a = 64    # results kept per task-level query (class names of earlier tasks)
  c.b = 16    # per domain-level query (M0 queries of an earlier task's domain)
  c.c = 4     # per general query; a > b > c concentrates on what was learned
  c.n = 24    # general queries drawn at random from the rest of M0 per task
  # PRIMED_uni and ZSCL-style baselines: one fixed reference-set size.
  c.reference_size = 2000
  # Upper bound on the 'dyn' set (0 = none); the union is cut in level order
  # (task, domain, general) so the most specific memories survive.
  c.max_reference_size = 0
  # PRIMED_uni's ~30 medical domain keywords; () = the benchmark's default
  # list (queries.MEDICAL_KEYWORDS, or the synthetic modalities).
  c.uni_keywords = ()

  # ------------------------------------------------------ question pool --
  # '' = the benchmark's default pool (mgtil_synth: every finding under every
  # modality phrase); else a JSON or CSV file with domain / site / finding
  # (optional modality, query) per row.
  c.pool = ''
  c.query_template = 'A {modality} photo of {finding}.'  # the paper's form
  # 'model': domain of each M0 query by zero-shot text classification with
  # the current model (the paper); 'pool': trust the pool's domain column.
  c.domain_source = 'model'
  # Domains scoring within this cosine of the best are a tie the model cannot
  # decide; the query keeps its pool label (if tied) or the first tied
  # domain by name. Trained weights on more processes differ by float
  # rounding; this keeps such noise from moving near-tied queries between
  # levels (docs/retrieval.md).
  c.domain_tolerance = 1e-4
  # domain -> phrases describing it (prompts for zero-shot domain
  # classification; the first one is the modality of task-level queries).
  # {} = the benchmark's defaults (synthetic modality phrases, or the name).
  c.domain_descriptions = ml_collections.ConfigDict()

  # ------------------------------------------------ multi-stage retrieval --
  c.k = 64       # dense candidates per query (the k'-th distinct score is the cut)
  c.k_v = 2      # images kept per caption: multi-panel figures share a caption
  # Scores within this of a tie group's top score are ties: float error
  # between identical captions must not break the tie-robust cutoff.
  c.tie_tolerance = 1e-6
  # Stage switches (ablations). dense=False ranks stage 1 by the CLIP
  # text->image score over an image index; visual=False keeps every image of
  # a caption and orders by the dense score; bm25=False keeps all candidates.
  c.stages = ml_collections.ConfigDict(dict(dense=True, visual=True,
                                             bm25=True))
  # What the BM25 gate matches against captions: 'query' (the paper: the
  # whole query text) or 'finding' (only the pool's finding phrase, so the
  # template words "photo of <modality>" do not dominate the lexical match).
  c.bm25_query = 'query'
  c.bm25 = ml_collections.ConfigDict(dict(
      k1=1.5,  # Lucene defaults (bm25s), the usual choice for short captions
      b=0.75,
  ))
  # Stage 1 asks the searcher for fetch_factor * k and doubles until the
  # k'-th distinct score's tie group is complete, at most max_fetch entries.
  c.fetch_factor = 2
  c.max_fetch = 65536

  # ------------------------------------------------------------ searcher --
  # 'auto': exact below scann.min_size entries (ScaNN's advice: brute force
  # under ~20k points), ScaNN above; 'exact' is the ground truth.
  c.searcher = 'auto'
  c.scann = ml_collections.ConfigDict(dict(
      min_size=20000,
      leaves_per_sqrt=1.0,     # num_leaves = leaves_per_sqrt * sqrt(N)
      training_sample=100000,  # k-means / codebook training rows (<= N)
      spherical=True,          # spherical k-means: the vectors are unit-norm
      dims_per_block=2,        # AH: 2 dims per 4-bit code (ScaNN's default)
      aq_threshold=0.2,        # anisotropic quantization for dot products
      reorder_dtype='float32',  # 'float32' | 'bfloat16' | 'int8' reorder data
      # Calibration at build time (index.calibrate_scann): per shard, the
      # smallest leaves-to-search, then reorder factor, whose recall@k (k =
      # config.retrieval.k) against exact search reaches target_recall on
      # calibration_queries held-out corpus rows + up to
      # calibration_pool_queries question-pool vectors. The recall curve and
      # the choice go into the index manifest and results.json.
      calibrate=True,
      target_recall=0.95,
      calibration_queries=1000,
      calibration_pool_queries=1000,
      # Held-out rows stand for captions outside the corpus: rows at this
      # cosine or above (copies, templated variants) are not counted as
      # their neighbours.
      calibration_copy_cosine=0.95,
      max_search_fraction=0.25,  # cap: leaves searched <= 25% of the leaves
      max_reorder_factor=100,    # cap: reordered candidates <= 100 * k
      # A shard of at most this many rows whose target is out of reach
      # within the caps is searched exactly instead (one warning line).
      exact_fallback_rows=1_000_000,
      # Used only with calibrate=False (values tuned on one synthetic
      # distribution, recall@10 0.998; 0.93 on two others, RESULTS.md).
      search_fraction=0.02,
      reorder_factor=30,
  ))
  # One index per this many rows, top-k merged across shards, so the corpus
  # can exceed one machine's memory (shards can be searched one at a time).
  c.index_shard_rows = 4_000_000
  c.exact_block_rows = 262144  # rows per jitted matmul block of the exact searcher
  # sha256 of every embedding / index file when a process first loads them
  # (a stale or changed file is an error); minutes at PMC scale.
  c.verify_checksums = True

  # --------------------------------------------------------------- corpus --
  c.corpus = ml_collections.ConfigDict(dict(
      # () = the benchmark's corpus (mgtil_synth: the pretraining
      # literature). Else a tuple of dicts, each {'kind': 'jsonl' | 'csv' |
      # 'parquet' | 'webdataset' | 'medpix' | 'roco' | 'synth', 'paths': ...,
      # 'image_dir': ..., 'fields': {...}} (see retrieval.corpus.READERS).
      sources=(),
      # Where the ingested dataset lives ('' = <workdir>/retrieval/corpus-<key>).
      # A directory that already holds an ingested corpus is used as is.
      dir='',
      shard_size=20000,     # entries per array_record shard = embedding shard
      check_images=True,    # decode every image at ingestion; corrupt = skipped
      synth_per_class=0,    # 0 = config.pretrain.corpus_per_class
  ))

  # ----------------------------------------------------------- embedding --
  # 'clip': the initial model's text tower embeds captions and queries;
  # 'precomputed': caption vectors from .npy shards (row order = corpus
  # order) and query vectors from an .npz {'texts', 'vectors'} (e.g. the
  # paper's 8B text-embedding model run offline).
  c.text_encoder = 'clip'
  c.precomputed = ml_collections.ConfigDict(dict(caption_vectors='',
                                                 query_vectors=''))
  c.embed_batch_size = 256  # rows per device per jitted embedding call (fixed
                            # per device: same vectors on any process count)
  c.decode_threads = 4      # host threads decoding corpus images

  # -------------------------------------------------------------- leakage --
  c.leakage = ml_collections.ConfigDict(dict(
      check=True,          # compare the corpus with every evaluation split
      method='phash',      # 'phash' (perceptual hash) | 'embedding' (cosine)
      max_distance=4,      # phash: Hamming distance (of 64 bits) = candidate
      # phash candidates are duplicates when their 32x32 grey images differ
      # by at most this mean |diff| (re-encoded copy ~3, distinct draw >= 7).
      max_pixel_diff=5.0,
      min_cosine=0.97,     # embedding: image-image cosine = duplicate
      drop=True,           # leaked entries never enter the index
  ))

  # ----------------------------------------------------- reference batches --
  c.prefetch_depth = 2  # batches prepared ahead on a host thread
  return c


def apply_args(c, *, corpus: str = '', pool: str = '',
               builtin: dict | None = None) -> ml_collections.ConfigDict:
  """The `corpus=` and `pool=` arguments every benchmark config takes.

  corpus: '' = the benchmark's built-in corpus (`builtin`, a reader spec,
    or none); else a file, glob or folder in one of the layouts of
    docs/retrieval.md ("A corpus from the command line"), several joined by
    '+'. Its layout is found on disk when the run starts
    (retrieval.corpus.specs_from_path); a missing path fails before any
    data is built.
  pool: '' = the benchmark's default question pool; else a JSON or CSV file.
  """
  corpus = str(corpus or '').strip()
  if corpus:
    parts = [p for p in corpus.split('+') if p] if not os.path.exists(
        os.path.expanduser(corpus)) else [corpus]
    c.retrieval.corpus.sources = ({
        'kind': 'path', 'arg': 'corpus',
        'paths': '+'.join(os.path.abspath(os.path.expanduser(p))
                          for p in parts)},)
  elif builtin:
    c.retrieval.corpus.sources = (dict(builtin),)
  if pool:
    c.retrieval.pool = os.path.abspath(os.path.expanduser(str(pool)))
  return c
