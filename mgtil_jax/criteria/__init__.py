"""What is optimised and what is measured: the loss functions, the
continual metrics (docs/metrics.md) and the check that each task learned.
Pure functions of arrays; they import nothing else of the package."""
