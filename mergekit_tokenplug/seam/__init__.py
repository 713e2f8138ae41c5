"""Everything that touches mergekit internals lives in this package, and nothing else does.

- ``activation``: version guard + per-module patch dispatch (called by the startup hook).
- ``schema``: the ``tokenizer.approximation`` key on mergekit's config models.
- ``vocab_task``: the vocabulary seam (replacement for ``PermutedVocabulary``).
- ``planner``: swaps the seam into ``MergePlanner.plan_tensor``.
- ``run``: atomic output, config fix-ups, model card and manifest around ``run_merge``.
"""

SUPPORTED_MERGEKIT_VERSIONS = ("0.1.5",)
