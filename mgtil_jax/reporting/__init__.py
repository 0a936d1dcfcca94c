"""Reporting: results.json -> tables, figures, report.html and comparison
pages. It reads results and never starts a run (docs/architecture.md).

The names a notebook needs, from one place:
  tables.format_table / final_summary   the printed accuracy matrix
  figures.plot_*                       the PNGs of a run
  outputs.write_run                    every output of a run in a workdir
  comparison.*                         the table of several methods
"""

from mgtil_jax.reporting.figures import (
    error_interval, method_color, plot_accuracy_matrix,
    plot_accuracy_over_time, plot_loss_terms, plot_methods_over_time,
    write_figures, wrap_name)
from mgtil_jax.reporting.outputs import write_comparison, write_run
from mgtil_jax.reporting.tables import OUTPUTS, final_summary, format_table

__all__ = ['OUTPUTS', 'error_interval', 'final_summary', 'format_table',
           'method_color', 'plot_accuracy_matrix', 'plot_accuracy_over_time',
           'plot_loss_terms', 'plot_methods_over_time', 'write_comparison',
           'write_figures', 'write_run', 'wrap_name']
