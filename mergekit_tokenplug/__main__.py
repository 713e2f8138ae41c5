"""``python -m mergekit_tokenplug`` (also what ``accelerate launch -m`` runs)."""

from mergekit_tokenplug.cli import main

main()
