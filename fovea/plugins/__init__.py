"""Built-in parts: encoders, heads and clip sources, registered through the same hooks as any plugin."""
