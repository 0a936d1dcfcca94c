"""Benchmarks: task sequences and retrieval/pretraining corpora."""
from mgtil_jax.data.tasks import (TaskData, batch_indices, load_benchmark,
                                  preprocess)
