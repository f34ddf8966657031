"""fovea's core: config, plugin manager and hook specs, the two-pass model, training loop, run directory."""
