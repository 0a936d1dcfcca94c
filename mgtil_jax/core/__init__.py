"""Foundations: errors, hosts (processes, barriers), logs (quiet third-party
output, progress bars, TensorBoard scalars), sharding and stats. They import
nothing else of the package (docs/architecture.md)."""
