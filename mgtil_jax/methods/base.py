"""The method interface: a method is a named list of parts, each part a set
of optional hooks the generic trainer calls (docs/methods.md, "Hooks").

Jitted hooks (traced inside `steps.make_task_step`, pure functions):
  loss_groups(ctx)          {group: fn(params, state, batch, prompts, teacher)
                             -> {term: weighted scalar}}; each group is
                             differentiated once, its gradient kept by name.
  grad_terms(ctx, params, state, group_grads)
                            {term: (value, gradient)} of terms whose weights
                             come from another group's gradient (DFG) or that
                             need no forward pass (l2 / EWC pulls).
  transform_updates(ctx, updates, params, prompts)   adapter update masks.
  model_kwargs(ctx, prompts)   extra arguments of the student's forward pass.

Host hooks (the task loop in `training.run`):
  state_trees(kw) / init_tree(name, params)   param-shaped trees in the state.
  adapter(num_tasks) / optimizer(cfg, abstract_params) / initial_params(...)
  phases(num_tasks, steps) / stream(exp, t, start, meta)  what a phase trains on.
  begin_task / open_task / task_prompts / extra_batch / step_prompts /
  after_step / close_task / end_task      task-begin and task-end actions and
                                          the extra batches of each step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip

TEACHERS = ('previous', 'initial', 'wise')
# Canonical order of the extra state trees (checkpoints list them this way).
TREE_ORDER = ('anchor', 'initial', 'fisher', 'ensemble')


def copy_tree(tree):
  return jax.tree.map(jnp.copy, tree)


def teacher_params(state: dict, teacher: str):
  """The frozen teacher: previous task (default), initial model, or their
  WiSE(0.5) average."""
  if teacher == 'previous':
    return state['anchor']
  if teacher == 'initial':
    return state['initial']
  return jax.tree.map(lambda a, b: 0.5 * (a + b), state['anchor'],
                      state['initial'])


def pair_logits(model, params, images, tokens, **model_kwargs):
  """float32[B, B] = exp(logit_scale) * cos(image_i, caption_j)."""
  img, txt, scale = model.apply({'params': params},
                                tasks_lib.preprocess(images), tokens,
                                **model_kwargs)
  return jnp.exp(scale) * clip.l2_normalize(img) @ clip.l2_normalize(txt).T


def masked_logits(logits, mask):
  return jnp.where(mask, logits, -1e9)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What the jitted hooks read: the model, the config and the method."""
  model: object
  config: object
  method: 'Method'

  @property
  def kw(self):
    return self.config.method_kwargs

  def logits(self, params, images, prompt_tokens, **model_kwargs):
    """float32[B, C] class logits over `prompt_tokens` (C x templates)."""
    return clip.classify_logits(self.model, params,
                                tasks_lib.preprocess(images), prompt_tokens,
                                len(self.config.prompts.templates),
                                **model_kwargs)

  def student_kwargs(self, prompts):
    return self.method.model_kwargs(self, prompts)


class Part:
  """One piece of behaviour; every hook is optional (see the module doc)."""
  uses_teacher = False

  def state_trees(self, kw) -> tuple[str, ...]:
    del kw
    return ()

  def init_tree(self, name, params):
    del name, params
    return None

  # -- jitted --
  def model_kwargs(self, ctx, prompts) -> dict:
    del ctx, prompts
    return {}

  def task_terms(self, ctx, logits, params, state, batch, prompts,
                 teacher) -> dict:
    """Terms of the 'task' group, given the student's task-batch logits."""
    del ctx, logits, params, state, batch, prompts, teacher
    return {}

  def loss_groups(self, ctx) -> dict:
    del ctx
    return {}

  def grad_terms(self, ctx, params, state, group_grads) -> dict:
    del ctx, params, state, group_grads
    return {}

  def transform_updates(self, ctx, updates, params, prompts):
    del ctx, params, prompts
    return updates

  # -- setup --
  def adapter(self, num_tasks):
    del num_tasks
    return None

  def optimizer(self, config, abstract_params):
    del config, abstract_params
    return None

  def initial_params(self, exp, backbone, fresh):
    """None (the trainer's start), or this method's initial params, built
    from `backbone()` (the plain CLIP's initial params) and `fresh(seed)`
    (random params of exp's model)."""
    del exp, backbone, fresh
    return None

  def phases(self, num_tasks: int, steps: int):
    del num_tasks, steps
    return None

  def stream(self, exp, t: int, start: int, meta: dict):
    del exp, t, start, meta
    return None

  # -- host, per task / per step --
  def begin_task(self, exp, state, meta, t):
    del exp, meta, t
    return state

  def open_task(self, exp, state, meta, t, start):
    del exp, state, meta, t, start

  def task_prompts(self, exp, meta, t) -> dict:
    del exp, meta, t
    return {}

  def extra_batch(self, exp, meta, t, s) -> dict:
    del exp, meta, t, s
    return {}

  def step_prompts(self, exp, t, s, steps) -> dict:
    del exp, t, s, steps
    return {}

  def after_step(self, exp, state, meta, t, s, steps):
    del exp, meta, t, s, steps
    return state

  def close_task(self):
    pass

  def end_task(self, exp, state, meta, t, prompts):
    del exp, meta, t, prompts
    return state


class Method:
  """A named composition of parts. Hooks run in part order; the first
  non-None answer wins for the single-valued ones (optimizer, phases, ...)."""

  def __init__(self, name: str, parts=(), *, kw=None, trains: bool = True,
               paper: str = '', reference: str | None = None):
    self.name, self.parts, self.trains, self.paper = name, tuple(parts), \
        trains, paper
    self.kw = kw if kw is not None else {}
    self.reference = reference  # reference-batch source kind, if any

  def __repr__(self):
    return (f'Method({self.name!r}, parts='
            f'{[type(p).__name__ for p in self.parts]})')

  @property
  def distill(self) -> bool:
    """Whether steps see reference batches (benchmarks read this)."""
    return self.reference is not None

  @property
  def uses_teacher(self) -> bool:
    return any(p.uses_teacher for p in self.parts)

  def _first(self, hook, *args):
    for p in self.parts:
      out = getattr(p, hook)(*args)
      if out is not None:
        return out
    return None

  def _merged(self, hook, *args) -> dict:
    """Every part's dict of `hook`, merged in part order."""
    out = {}
    for p in self.parts:
      out.update(getattr(p, hook)(*args))
    return out

  # -- state --
  def state_trees(self, kw=None) -> tuple[str, ...]:
    kw = self.kw if kw is None else kw
    names = set()
    if self.uses_teacher:
      teacher = kw.get('teacher', 'previous') or 'previous'
      if teacher in ('previous', 'wise'):
        names.add('anchor')
      if teacher in ('initial', 'wise'):
        names.add('initial')
    for p in self.parts:
      names.update(p.state_trees(kw))
    return tuple(n for n in TREE_ORDER if n in names) + tuple(
        sorted(names - set(TREE_ORDER)))

  def init_trees(self, params) -> dict:
    out = {}
    for name in self.state_trees():
      tree = None
      for p in self.parts:
        tree = p.init_tree(name, params)
        if tree is not None:
          break
      out[name] = copy_tree(params) if tree is None else tree
    return out

  def teacher(self, state):
    if not self.uses_teacher:
      return None
    kind = self.kw.get('teacher', 'previous') or 'previous'
    return jax.lax.stop_gradient(teacher_params(state, kind))

  # -- jitted --
  def model_kwargs(self, ctx, prompts) -> dict:
    return self._merged('model_kwargs', ctx, prompts)

  def task_group(self, ctx):
    """Group 'task': CE on the task batch (Eq. CE) plus the parts'
    `task_terms` on the same forward pass."""
    from mgtil_jax.criteria import losses  # pylint: disable=g-import-not-at-top

    def task(params, state, batch, prompts, teacher):
      logits = ctx.logits(params, batch['image'], prompts['task'],
                          **ctx.student_kwargs(prompts))
      terms = {'ce': losses.classification_loss(
          logits, batch['label'],
          label_smoothing=ctx.config.train.label_smoothing,
          class_weights=prompts.get('class_weight'))}
      for p in self.parts:
        terms.update(p.task_terms(ctx, logits, params, state, batch, prompts,
                                  teacher))
      accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
      return terms, {'train_accuracy': accuracy}

    return task

  def loss_groups(self, ctx) -> dict:
    out = {'task': self.task_group(ctx)} if self.trains else {}
    for p in self.parts:
      for name, fn in p.loss_groups(ctx).items():
        if name in out:
          raise ValueError(f'method {self.name}: two parts define loss group '
                           f'{name!r}')
        out[name] = fn
    return out

  def grad_terms(self, ctx, params, state, group_grads) -> dict:
    return self._merged('grad_terms', ctx, params, state, group_grads)

  def transform_updates(self, ctx, updates, params, prompts):
    for p in self.parts:
      updates = p.transform_updates(ctx, updates, params, prompts)
    return updates

  # -- setup --
  def adapter(self, num_tasks):
    return self._first('adapter', num_tasks)

  def optimizer(self, config, abstract_params):
    return self._first('optimizer', config, abstract_params)

  def initial_params(self, exp, backbone, fresh):
    return self._first('initial_params', exp, backbone, fresh)

  def phases(self, num_tasks: int, steps: int):
    return self._first('phases', num_tasks, steps) or (num_tasks, steps)

  def stream(self, exp, t, start, meta):
    return self._first('stream', exp, t, start, meta)

  # -- host --
  def begin_task(self, exp, state, meta, t):
    # 'anchor' always means "the params when this task began".
    if 'anchor' in state:
      state['anchor'] = copy_tree(state['params'])
    for p in self.parts:
      state = p.begin_task(exp, state, meta, t)
    return state

  def open_task(self, exp, state, meta, t, start):
    for p in self.parts:
      p.open_task(exp, state, meta, t, start)

  def task_prompts(self, exp, meta, t) -> dict:
    return self._merged('task_prompts', exp, meta, t)

  def extra_batch(self, exp, meta, t, s) -> dict:
    return self._merged('extra_batch', exp, meta, t, s)

  def step_prompts(self, exp, t, s, steps) -> dict:
    return self._merged('step_prompts', exp, t, s, steps)

  def after_step(self, exp, state, meta, t, s, steps):
    for p in self.parts:
      state = p.after_step(exp, state, meta, t, s, steps)
    return state

  def close_task(self):
    for p in self.parts:
      p.close_task()

  def end_task(self, exp, state, meta, t, prompts):
    for p in self.parts:
      state = p.end_task(exp, state, meta, t, prompts)
    return state
