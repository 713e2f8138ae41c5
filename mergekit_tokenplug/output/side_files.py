"""Where the plugin's own files go inside an output directory.

Loaders that read every ``*.safetensors`` of a model directory (vLLM without an index, some
converters) would take a side file for weights, so side files live in a subfolder no loader
looks into, and the manifest lists them under ``side_files``.
"""

from __future__ import annotations

SIDE_DIR = "tokenplug"
TOOL_PRIORS = f"{SIDE_DIR}/tool_token_priors.safetensors"
