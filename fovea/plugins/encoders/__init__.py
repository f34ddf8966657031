"""Built-in vision encoders (the encoder contract is in ``fovea.core.hookspecs``)."""
