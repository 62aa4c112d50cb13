"""Measurements that print their figures. A package installed with flowers_jax (pyproject.toml), so that
`python benchmarks/X.py` and `python -m benchmarks.X` both find `benchmarks.common` and `configs`, and the
export tests find `benchmarks.sensitised` (the stand-in weights both use)."""
