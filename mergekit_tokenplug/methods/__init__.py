"""Built-in approximation methods; importing this package registers them."""

from mergekit_tokenplug.methods import baselines, omp  # noqa: F401
