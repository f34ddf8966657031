"""Section 3, query mechanism: which encoder, its options, the query's init and projection, and the probes of
the mechanism: patch features that do not depend on the query, the cache against the reference forward, an
output that does, two passes that read different features, attention that is not uniform and looks at the
image (SPEC.md "Query mechanism", "Failure modes"). The measurements are ``fovea.audit.probes.query``'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fovea.audit import probes
from fovea.audit.checks.components import is_random
from fovea.audit.checks.wiring import ONE_PASS
from fovea.audit.findings import Check, fmt, verdict
from fovea.audit.spec import same

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence


def check_query(ev: Evidence) -> list[Check]:
    """Which encoder, its options, the query's init and projection, and the probes of the mechanism."""
    spec, config, model = ev.spec.query, ev.config, ev.model
    encoder = model.encoder
    name = config.model.encoder.name
    if name == spec.encoder:
        status, label, reason = "pass", "", ""
    elif name in spec.simplified:
        status, label = "warn", "SIMPLIFIED"
        reason = ("post-hoc cross-attention over the final tokens instead of the query through every block. Trade-off: "
                  "cheaper and simpler, but the query cannot shape the features; SPEC: known to collapse to "
                  "near-uniform attention on DINO features — a baseline and ablation, not the spec")
    else:
        status, label = "warn", "NOT IN SPEC"
        reason = "an encoder the spec does not describe; the probes below measure whether it behaves as the spec requires"
    checks = [verdict(
        "query.encoder", "Query mechanism", status,
        expected=f"`{spec.encoder}` (SPEC.md \"Query mechanism\" §1, deep masked injection)",
        observed=f"`{name}` ({type(encoder).__module__}.{type(encoder).__qualname__})",
        evidence="[model.encoder] name in the run's config.toml; the class the plugin registry built",
        reason=reason, label=label, fix=f"set `[model.encoder] name = \"{spec.encoder}\"` to train the spec's mechanism")]

    if name == spec.encoder and spec.options:
        options = config.model.encoder.options.model_dump()
        differ = {k: (options.get(k), v) for k, v in spec.options.items() if not same(options.get(k), v)}
        checks.append(verdict(
            "query.options", f"`{spec.encoder}` options", not differ, otherwise="warn",
            expected=", ".join(f"{k} = {fmt(v)}" for k, v in spec.options.items()),
            observed=", ".join(f"{k} = {fmt(options.get(k))}" + (f" (spec {fmt(v)})" if k in differ else "")
                               for k, v in spec.options.items()),
            evidence="[model.encoder] options in config.toml",
            reason="the query joins later or differs from the spec's injection",
            fix="use the spec's values unless this run is an ablation", label="MODIFIED",
            measurements={"differ": differ}))

    projection = getattr(encoder, "query_input_proj", None)
    if projection is None:
        checks.append(verdict("query.input_proj_bias", "query_input_proj has no bias", "info",
                              expected="no bias", observed="not measured: the encoder has no `query_input_proj`",
                              reason="not measurable for this encoder; the sensitivity probe covers the failure it "
                                     "guards against"))
    else:
        has_bias = getattr(projection, "bias", None) is not None
        checks.append(verdict(
            "query.input_proj_bias", "query_input_proj bias", has_bias == spec.input_proj_bias,
            expected="bias" if spec.input_proj_bias else "no bias (SPEC: Linear(384→384, no bias))",
            observed="bias" if has_bias else "no bias",
            evidence=f"encoder.query_input_proj = {projection}",
            reason="SPEC \"Failure modes\": a bias on query_input_proj drowns the query (loss_fine == loss_coarse)",
            fix="nn.Linear(dim, dim, bias=False)"))

    stds = {n: getattr(ev.initial, n).float().std().item() for n in ("q_static", "q_init") if hasattr(ev.initial, n)}
    low = min(stds.values()) if stds else None
    if low is None:
        status = "info"
    elif all(0.5 * spec.init_std <= s <= 2 * spec.init_std for s in stds.values()):
        status = "pass"
    else:
        status = "fail" if low < 0.1 * spec.init_std else "warn"
    checks.append(verdict(
        "query.init_std", "Learned queries' initial scale", status,
        expected=f"q_static, q_init ~ N(0, {fmt(spec.init_std)}²)",
        observed=", ".join(f"{n} std {fmt(s)}" for n, s in stds.items()) or "no q_static/q_init",
        evidence="standard deviation of the fresh build's parameters (the run's initialisation)",
        reason="SPEC \"Failure modes\": a small query (std 0.02) drowns in the projection; loss_fine == loss_coarse",
        fix=f"initialise with torch.randn (std {fmt(spec.init_std)})", measurements=stds))

    if model.single_pass:
        checks.append(verdict("query.sensitivity", "The encoder's output depends on the query", "info",
                              expected="outputs for two different queries clearly different",
                              observed=ONE_PASS.format(name)))
        return checks
    return checks + query_probes(ev)


def query_probes(ev: Evidence) -> list[Check]:
    """Patch-feature invariance, the cache against the reference, query sensitivity, the two passes' reads, entropy."""
    spec = ev.spec.query
    encoder = ev.model.encoder
    pixels = ev.frames.flatten(0, 1).float().div(255.0)                              # (B*T, 3, S, S)
    queries_a = torch.randn(len(pixels), encoder.dim) * spec.init_std                # (B*T, D)
    queries_b = torch.randn(len(pixels), encoder.dim) * spec.init_std
    batch = f"Probe batch: {ev.batch_origin}."
    checks = invariance_checks(ev, pixels, queries_a, queries_b, batch)
    checks.append(sensitivity_check(ev, pixels, queries_a, queries_b, batch))
    reads = probes.pass_reads(ev.model, ev.frames, ev.latents, ev.targets)
    if reads["correlation"] is not None:
        same_reads = reads["correlation"]
        checks.append(verdict(
            "query.static_vs_dynamic", "Pass 2 reads something other than pass 1",
            not same_reads >= spec.correlation_fail, otherwise="warn",
            expected="the dynamic queries read different features than the static query",
            observed=f"mean correlation of pass-1 and pass-2 features per frame {same_reads:.4f}",
            evidence=f"encoder.attend outputs of both passes in one forward. {batch}",
            reason="both passes read the same features, so loss_fine can only equal loss_coarse: the LLM's queries "
                   "do not steer the encoder",
            fix="look at query.sensitivity and the pass-1 queries (query_head)",
            measurements={"correlation_mean": same_reads}))
    checks.append(entropy_check(ev, reads["static"], reads["dynamic"], batch))
    return checks


def invariance_checks(ev: Evidence, pixels, queries_a, queries_b, batch: str) -> list[Check]:
    """``query.patch_invariance`` and ``query.cache_matches_reference``, on a few frames (the reference is slow)."""
    spec, tol = ev.spec.query, ev.spec.wiring.tolerance
    n = min(4, len(pixels))
    inv = probes.patch_invariance(ev.model.encoder, pixels[:n], queries_a[:n], queries_b[:n])
    token_scale = inv["scale"] or inv["features_scale"] or 1.0
    problems = []
    if inv["cache_change"] > 0:
        problems.append(f"reading with a query changed the cached per-frame encoding (max |Δ| "
                        f"{fmt(inv['cache_change'])}): pass 2 reuses features that carry pass 1's query")
    if inv["reread_change"] > tol * max(inv["features_scale"], 1e-12):
        problems.append(f"the same query reads different features after another query's read (max |Δ| "
                        f"{fmt(inv['reread_change'])}): state leaks between reads")
    if inv["tokens_query_dependence"] is not None and inv["tokens_query_dependence"] > tol * token_scale:
        problems.append(f"in the full forward with the query in the sequence, the image tokens change with the "
                        f"query (max |Δ| {fmt(inv['tokens_query_dependence'])}): patches attend to the query")
    observed = f"cache unchanged by reads: {inv['cache_change'] == 0}; reread difference {fmt(inv['reread_change'])}"
    if inv["reference"]:
        observed += (f"; image tokens for two queries in the masked full forward differ by "
                     f"{fmt(inv['tokens_query_dependence'])}")
    checks = [verdict(
        "query.patch_invariance", "Patch features do not depend on the query", not problems,
        expected="asymmetric mask: patches never attend to the query; their features equal a plain forward's, "
                 "whatever the query (SPEC §1)",
        observed=observed,
        evidence=f"{n} frames encoded once and read with two random queries (std {fmt(spec.init_std)}); every cached "
                 f"tensor compared before and after" + (", and the encoder's reference forward with the query in the "
                 "sequence (`masked_forward`) run for both queries" if inv["reference"] else
                 "; the encoder has no reference forward (`masked_forward`) to run the query through the blocks")
                 + f". {batch}",
        reason="; ".join(problems) + (". Without invariant patch features the per-layer K/V cache is wrong and "
                                      "pass 1 / pass 2 cannot share one encoding"),
        fix="mask image-token rows from the query column at every layer; never write the cache in attend",
        measurements=inv)]
    title = "The cached query pass computes the full masked forward"
    expected = "attend on the per-layer K/V cache = the encoder re-run with the query and the mask"
    if inv["reference"] is None:
        checks.append(verdict(
            "query.cache_matches_reference", title, "info", expected=expected,
            observed="not measured: the encoder has no reference forward (`masked_forward`, an optional extension of "
                     "the encoder contract)"))
        return checks
    exact = inv["features_vs_cache"] <= 1e-4 * max(inv["features_scale"], 1e-12) + 1e-6 and \
        (inv["tokens_vs_cache"] is None or inv["tokens_vs_cache"] <= 1e-4 * token_scale + 1e-6)
    checks.append(verdict(
        "query.cache_matches_reference", title, exact, expected=expected,
        observed=f"max |features − reference| {fmt(inv['features_vs_cache'])}; max |cached tokens − reference "
                 f"tokens| {fmt(inv['tokens_vs_cache'])}",
        evidence=f"{n} frames, one random query each; reference `masked_forward` (float32)",
        reason="the cheap query pass does not compute the spec's mechanism",
        fix="compare attend with masked_forward layer by layer",
        measurements={k: inv[k] for k in ("features_vs_cache", "tokens_vs_cache")}))
    return checks


def sensitivity_check(ev: Evidence, pixels, queries_a, queries_b, batch: str) -> Check:
    """``query.sensitivity``: the encoder's output for two random query sets on the same frames."""
    spec = ev.spec.query
    sens = probes.query_sensitivity(ev.model.encoder, pixels, queries_a, queries_b)
    corr = sens["correlation_mean"]
    status = "fail" if corr >= spec.correlation_fail else "warn" if corr >= spec.correlation_warn else "pass"
    return verdict(
        "query.sensitivity", "The encoder's output depends on the query", status,
        expected=f"outputs for two different queries clearly different (mean correlation < {fmt(spec.correlation_warn)}; "
                 f"≥ {fmt(spec.correlation_fail)} is the failure mode)",
        observed=f"mean correlation {corr:.4f} (min {sens['correlation_min']:.4f}, max {sens['correlation_max']:.4f}); "
                 f"switching the query moves the output {sens['query_vs_frame']:.2f}× as much as switching the frame",
        evidence=f"{len(pixels)} frames encoded once, read with two sets of random queries (std {fmt(spec.init_std)}); "
                 f"Pearson correlation of the two outputs per frame. {batch}",
        reason="the encoder ignores the query: every query reads the same features. SPEC \"Failure modes\": loss_fine "
               "== loss_coarse to 3 decimals" if status == "fail" else
               "the output barely depends on the query (near the failure mode where loss_fine == loss_coarse)",
        fix="check that the query reaches attend (std-1.0 init, no bias on query_input_proj, non-uniform attention)",
        measurements=sens)


def entropy_check(ev: Evidence, static: torch.Tensor | None, dynamic: torch.Tensor | None, batch: str) -> Check:
    """``query.entropy``: the attention of every pass-1 (``static``) and pass-2 (``dynamic``) read, (B, T, K'),
    looks at the image and is focused, more for the dynamic queries."""
    spec = ev.spec.query
    if static is None or dynamic is None:
        return verdict("query.entropy", "Attention is not uniform", "info",
                       expected="attention entropy well below log N",
                       observed="not measured: the encoder returns no attention (attend(..., return_attention=True))",
                       reason="not measurable; the sensitivity probe covers the query mechanism",
                       fix="return (features, attention) from attend(return_attention=True)")
    from fovea.core.attention import patch_attention_stats, token_layout

    prefix = getattr(ev.model.encoder, "num_prefix_tokens", None)   # optional contract extension
    layout = token_layout(static.shape[-1], prefix) if isinstance(prefix, int) else None
    if layout is None:                      # the columns' meaning is unknown: over every column, as given
        prefix, layout = 0, (static.shape[-1], 0)
        columns = "every column (the encoder does not say which are CLS/registers: `num_prefix_tokens`)"
    else:
        columns = (f"the {layout[0]} patches, renormalised ({prefix} CLS/register columns"
                   + (" and the query's own column" if layout[1] else "") + " reported apart)")
    s, d = (patch_attention_stats(a, prefix, layout[0]) for a in (static, dynamic))
    evidence = (f"final-layer attention of every pass-1 and pass-2 read (mean over heads) in one forward, over "
                f"{columns}. {batch}")
    sunk = [name for name, stats in (("static", s), ("dynamic", d)) if stats["mass_patches"] < 0.5]
    if sunk:
        return verdict(
            "query.entropy", "The queries look at the image", False,
            expected="most of each query's attention on the patches, its entropy over them below log P",
            observed="; ".join(f"{n}: {v['mass_patches']:.1%} on the patches, {v['mass_prefix']:.1%} on CLS/registers, "
                               f"{v['mass_self']:.1%} on itself" for n, v in (("static", s), ("dynamic", d))),
            evidence=evidence,
            reason=f"the {' and '.join(sunk)} queries put most of their attention outside the image: DINOv3's "
                   f"registers are attention sinks, and a query collapsed onto one reads as focused while it reads nothing",
            fix="check the query's scale and the injection; compare heatmaps of static and dynamic reads",
            measurements={"static": s, "dynamic": d})
    encoder_component = next((c for c in ev.spec.components.values() if c.modules == ["encoder"]), None)
    random_init = encoder_component is not None and is_random(ev.config, encoder_component)
    near_uniform, unfocused = d["ratio"] >= spec.entropy_warn_ratio, d["entropy"] >= s["entropy"]
    if near_uniform:
        reason = ("near-uniform attention: the query selects nothing. SPEC \"Failure modes\": post-hoc attention on "
                  "DINO features collapses to entropy ≈ log N")
        if random_init:
            reason += ("; this run's encoder is randomly initialised, and a random DINOv3 attends near-uniformly "
                       "whatever the query — expected here, not evidence of the collapse")
    else:
        reason = "dynamic queries are not more focused than the static one (SPEC: dynamic lower)"
    return verdict(
        "query.entropy", "Attention entropy against log N",
        not (near_uniform or unfocused), otherwise="warn",
        expected=f"entropy / log N < {fmt(spec.entropy_warn_ratio)}, dynamic lower than static (SPEC diagnostics)",
        observed=(f"static {s['entropy']:.3f} nats, dynamic {d['entropy']:.3f} nats, log N = {s['log_n']:.3f} "
                  f"(N = {s['num_tokens']} tokens): ratios {s['ratio']:.3f} / {d['ratio']:.3f}; peak weight "
                  f"{s['peak']:.3f} / {d['peak']:.3f} (uniform {s['uniform_peak']:.3f}); mass on the patches "
                  f"{s['mass_patches']:.1%} / {d['mass_patches']:.1%}, on CLS/registers {s['mass_prefix']:.1%} / "
                  f"{d['mass_prefix']:.1%}, on itself {s['mass_self']:.1%} / {d['mass_self']:.1%}"),
        evidence=evidence, reason=reason,
        fix="train longer or from the pretrained encoder, then audit again" if random_init else
        "use the deep encoder and check the query's scale; compare heatmaps of static and dynamic reads",
        measurements={"static": s, "dynamic": d, "random_init_encoder": random_init})
