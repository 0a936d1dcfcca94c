"""Single-task: each task trained alone from the initial model; the
per-task bound (docs/methods.md, "single_task").

The trainer runs the tasks in order as for ft, but every task starts from
θ_0 (state tree `initial`) with a fresh optimiser, so row t of the accuracy
matrix is the model trained on task t only. Its diagonal is the per-task
bound that joint training (all tasks at once) and every continual method are
read against; off-diagonal entries are that model's transfer to the other
tasks, not forgetting, so Transfer / BWT / Forgetting do not apply and the
report shows the diagonal instead: `summary.last` and `summary.acc` are
the diagonal's mean, results.json's `per_task_bound` the diagonal itself.
"""

from mgtil_jax.methods import base, registry


class FromInitial(base.Part):
  """Resets the params to θ_0 when each task begins."""

  def state_trees(self, kw):
    del kw
    return ('initial',)

  def begin_task(self, exp, state, meta, t):
    del exp, meta, t
    state['params'] = base.copy_tree(state['initial'])
    return state


@registry.register('single_task', paper='each task trained alone from the '
                   'initial model; per-task bound (diagonal)')
def build(kw):
  del kw
  method = base.Method('single_task', [FromInitial()])
  method.per_task_bound = True  # training.results.build_results: the diagonal only
  return method
