"""Built-in approximation methods (registered by :mod:`mergekit_tokenplug.registry`)."""
