"""Built-in clip sources (the ``source`` part kind)."""
