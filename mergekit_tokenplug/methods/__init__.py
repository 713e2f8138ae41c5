"""Built-in approximation methods; importing this package registers them."""

from mergekit_tokenplug.methods import baselines, cw2v, omp, omp_map, tokenadapt, tool  # noqa: F401
