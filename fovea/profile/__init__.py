"""``fovea profile``: where a training step's time and memory go, measured on the real step.

``resources`` (the memory model, device peaks, the GPU/CPU sampler), ``measure`` (phase times over N steps,
one micro-batch's FLOPs and saved activations, the largest micro-batch that fits), ``report`` (the figures and
the diagnosis, a ``fovea.core.profile_report.ProfileReport``), ``render`` (the terminal table and
``profile.md``), ``run`` (``profile``: build, measure, write through ``RunDir.write_profile``).
It reads and writes runs through ``fovea.core`` only, like the audit and ``fovea.viz`` beside it.
"""

from __future__ import annotations

from fovea.core.profile_report import PHASES, ProfileReport
from fovea.profile.measure import measure_micro_batch, probe_largest_batch
from fovea.profile.render import render_markdown, render_table
from fovea.profile.report import build_report, diagnose
from fovea.profile.resources import GB, ResourceSampler, bf16_peak_flops, memory_model
from fovea.profile.run import profile, profile_target

__all__ = ["GB", "PHASES", "ProfileReport", "ResourceSampler", "bf16_peak_flops", "build_report", "diagnose",
           "measure_micro_batch", "memory_model", "probe_largest_batch", "profile", "profile_target",
           "render_markdown", "render_table"]
