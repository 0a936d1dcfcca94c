"""Pieces shared by every experiment config."""

from __future__ import annotations

import ast
import re

import ml_collections

from configs import retrieval


# One `key=value` of a config argument: commas inside '...' or "..." are
# part of the value.
_ITEM = re.compile(r"""(?:[^,'"]|'[^']*'|"[^"]*")+""")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,key2=value2,flag` (big_vision style) over defaults.

  Values are parsed as Python literals where possible (ints, floats, bools)
  and kept as strings otherwise; a bare `flag` means `flag=True`. Unknown
  keys are an error that names them. A value holding commas is quoted:
  `corpus='/data/a,b.jsonl'` (in a shell, inside double quotes:
  --config="configs/x.py:corpus='/data/a,b.jsonl'").
  """
  out = dict(defaults)
  arg = arg or ''
  if arg.count("'") % 2 or arg.count('"') % 2:
    raise ValueError(f'config argument: unbalanced quote in {arg!r}')
  for item in filter(None, _ITEM.findall(arg)):
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config argument: unknown key {key!r}; expected one '
                       f'of {sorted(defaults)}')
    if not _:
      out[key] = True
      continue
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return ml_collections.ConfigDict(out)


# Logical axis -> mesh axis rules (MaxText style). Parameters are sharded
# over `fsdp` along their embedding dimension and over `tensor` along attention
# heads (`qkv`) and MLP; activations are split over the batch on `data` and `fsdp`.
SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('qkv', 'tensor'),
    ('vocab', None),
    ('patch', None),
    ('proj', None),
    ('proj_hidden', None),
    ('length_table', None),
    ('norm', None),
    ('length', None),
    ('act_embed', None),
    ('act_mlp', 'tensor'),
)


def base_config() -> ml_collections.ConfigDict:
  """Defaults that read like the paper's hyper-parameter table
  (docs/methods.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 42  # the ZSCL recipe's seed
  c.method = 'ft'
  # Data and pretraining caches ('' = the workdir); `--compare` points every
  # method's run at one shared cache so the initial model is built once.
  c.cache_dir = ''
  c.method_kwargs = ml_collections.ConfigDict(dict(
      # PRIMED (docs/methods.md); every ablation of the paper is one knob here.
      alpha=1.0,             # weight of CKT (paper default)
      beta=0.25,             # weight of CMC (paper default)
      kd_temperature=2.0,    # tau of CKT / ZSCL's KD; not given: Hinton's 2
      granularity='both',    # KD direction: both | image | text
      teacher='previous',    # previous (paper) | initial | wise (0.5 avg)
      regularizer='',        # PRIMED's: '' = dfg | l2 | ewc | none
      # ZSCL's weight ensembling on ('on') or off ('off') for zscl, primed
      # and primed_uni; '' = the method's own (zscl on, PRIMED off): the
      # recipe-isolation runs of benchmarks/RESULTS.md (issue 23.5).
      weight_ensemble='',
      dfg_weight=1.0,        # weight of L_DFG (the paper gives none: 1)
      dfg_normalize='mean',  # DFG weights g^2 per tensor: none | mean | max
                             # (docs/methods.md, "DFG normalisation")
      reference='',          # '' = the method's own | corpus | retrieval_dyn
                             # | retrieval_uni
      reference_batch_size=32,
      # Baselines.
      l2_weight=1.0,         # l2 baseline and ZSCL's weight consolidation
      ewc_weight=1e4,        # lambda of EWC (Fisher values are ~1e-6)
      ewc_batches=8,         # batches for the per-task Fisher estimate
      lwf_weight=1.0,        # LwF / iCaRL KD weight
      lwf_temperature=2.0,   # LwF's T = 2 (Li & Hoiem 2017)
      icarl_kd_weight=1.0,
      exemplars_per_class=20,  # iCaRL memory per class (herding)
      wise_alpha=0.5,        # WiSE-FT mixing weight of the new weights
      we_every=100,          # ZSCL weight ensembling interval (paper: 100)
      # SnD (Yu et al. ECCV 2024): the official code's snd_loss defaults.
      snd_prev_weight=9.0,   # KD weight towards the previous-task model
      snd_init_weight=0.5,   # KD weight towards the initial model
      snd_threshold=0.2,     # teacher-disagreement threshold of the selector
      snd_scale=6.0,         # sigmoid sharpness of the selector
      # GIFT (Wu et al. CVPR 2025); docs/methods.md "GIFT".
      gift_pairs='',         # folder of generated pairs (pairs.jsonl); '' =
                             # the retrieval memory (method_kwargs.reference)
      gift_kd_weight=1.0,    # KD on the pairs against the initial model
      gift_ita_weight=1.0,   # image-text alignment on the pairs
      gift_awc_weight=1.0,   # adaptive weight consolidation (mean-normalised)
      adapter_lr=1e-3,       # MoE-Adapters / DIKI: zero-initialised adapters
                             # need far more than the backbone's 1e-5 (the
                             # MoE-Adapters code uses 1e-3)
  ))

  c.model = ml_collections.ConfigDict(dict(
      preset='vit_b16_pubmedbert',
      dtype='float32',   # compute dtype; master weights stay float32
      remat=False,       # rematerialise transformer blocks to save memory
      init='random',     # 'random', 'pretrain' (benchmark corpus), or a path
  ))

  c.prompts = ml_collections.ConfigDict(dict(
      templates=('a photo of {}.',),  # the paper's "a photo of {c}"
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps_per_task=1000,   # ZSCL recipe: 1000 iterations per task
      batch_size=64,         # per device in the paper (4 GPUs)
      lr=1e-5,               # AdamW
      weight_decay=0.0,
      warmup_steps=100,      # then cosine decay to 0 within each task
      label_smoothing=0.2,
      # Tasks whose CE is weighted by inverse class frequency (docs/methods.md,
      # "Class balance"): '' none, 'all', or task names joined by '+'.
      class_balance='',
      freeze_logit_scale=True,
      # Parameters frozen for every method alike: '/'-joined path prefixes,
      # comma separated ('visual/patch_embed,visual/block0'); '' = none
      # (docs/methods.md, "Frozen layers").
      frozen='',
      log_every=10,
  ))

  c.tokenizer = ml_collections.ConfigDict(dict(
      vocab_file='',  # '' = the checkpoint's, or the benchmark's own vocab
      # Texts are padded to the longest real text of each call, rounded up to
      # a multiple of this (few compiled shapes; exact under the attention
      # mask). 0 = always the full context length.
      bucket=16,
  ))
  c.eval = ml_collections.ConfigDict(dict(batch_size=256))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=100,  # plus one at every task boundary
      keep=2,
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = SHARDING_RULES
  # The retrieval memory (corpus, index, multi-stage retrieval, siphon).
  c.retrieval = retrieval.defaults()
  return c
