"""mergekit-tokenplug: principled tokenizer transplantation inside mergekit recipes."""

__version__ = "0.1.0"
