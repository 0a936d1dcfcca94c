"""Benchmarks: task sequences and retrieval/pretraining corpora."""
from mgtil_jax.data.benchmarks import load_benchmark
from mgtil_jax.data.tasks import TaskData, batch_indices, preprocess
