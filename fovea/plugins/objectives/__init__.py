"""Built-in objectives: ``next_latent`` (SPEC phase 1) and ``caption``."""
