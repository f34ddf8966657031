"""Built-in clip sources (the ``loader`` part kind)."""
