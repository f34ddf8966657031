"""Checking runs against the spec: probes of the model's wiring (``probes``); the report comes with ``fovea audit``."""
