"""Recipe tooling: validation without weights, JSON Schema, dry-run plans, output verification
(commands in :mod:`mergekit_tokenplug.recipes.cli`)."""
