"""Section 2, two-pass wiring: pass 1 static, pass 2 shifted and fed by pass 1, no prediction that sees its
target, each frame encoded once, each pass scored from its own states, caption tokens causal
(SPEC.md "Two-pass training"). The measurements are ``fovea.audit.probes.wiring``'s."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fovea.audit import probes
from fovea.audit.findings import Check, fmt, verdict

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence

ONE_PASS = "not applicable: the encoder `{}` reads no query (`uses_query = False`): one pass, its coarse is its fine"
LEAK_TITLE = "No prediction sees its own target frame"


def check_wiring(ev: Evidence) -> list[Check]:
    """Pass 1 static, pass 2 shifted and fed by pass 1, no target leak, each frame encoded once."""
    # The wiring is a property of the code, not of the data: the first probe clip shows it, at half the cost.
    model, frames, latents = ev.model, ev.frames[:1], ev.latents[:1]
    targets = {k: v[:1] for k, v in (ev.targets or {}).items()}
    tol = ev.spec.wiring.tolerance
    batch = f"Probe batch: the first of {ev.batch_origin}."
    checks: list[Check] = []
    if not ev.batch_is_real:
        checks.append(verdict(
            "wiring.probe_batch", "Probes ran on noise frames", "warn",
            expected="probes read real clips of the run's data source", observed=ev.batch_origin,
            reason="wiring probes hold on any frames, but attention and correlation measured on noise say less "
                   "about the run's data",
            fix="audit where the run's data source is readable"))
    if model.single_pass:   # a query-free encoder: no pass 2 to wire, no query to shift
        return checks + single_pass_wiring(ev, model, frames, latents, targets, tol, batch)
    checks += query_checks(model, frames, latents, targets, tol, batch)
    if "next_latent" in model.objectives:
        checks.append(target_leak_check(model, frames, latents, targets, tol, batch))
    else:
        checks.append(verdict(
            "wiring.no_target_leak", LEAK_TITLE, "info",
            expected="the prediction for frame t depends on frames < t only (SPEC: both passes)",
            observed=f"not measured: the run does not train next_latent ({', '.join(model.objectives)})"))
    checks.append(encode_once_check(model, frames, latents, targets))
    checks.append(pass_independence_check(model, frames, latents, targets, tol, batch))
    if "caption" in model.objectives:
        checks.append(caption_causality_check(model, ev, tol))
    return checks


def query_checks(model, frames, latents, targets, tol: float, batch: str) -> list[Check]:
    """``wiring.pass1_static``, ``wiring.pass2_shift``, ``wiring.pass2_follows_pass1``: the queries each pass reads."""
    B, T = frames.shape[:2]
    wiring = probes.query_wiring(model, frames, latents, targets)
    q_scale = max(model.q_static.abs().max().item(), model.q_init.abs().max().item(), 1e-12)
    calls = int(wiring["attend_calls"])
    call_problem = "" if calls == 2 else f"encoder.attend ran {calls} times in one forward, not 2 (pass 1, pass 2)"
    static = verdict(
        "wiring.pass1_static", "Pass 1 reads every frame with the same static query",
        calls == 2 and wiring["pass1_static"] <= tol * q_scale,
        expected="z°_t = attend(q_static, frame_t) for every t (SPEC.md \"Two-pass training\")",
        observed=call_problem or f"max |query − q_static| over the {B * T} pass-1 reads = {fmt(wiring['pass1_static'])}",
        evidence=f"The queries of every encoder.attend call recorded during one forward. {batch}",
        reason="pass 1 must plan from one fixed view of every frame; otherwise the coarse baseline that loss_fine "
               "is measured against is not the spec's",
        fix="feed q_static (expanded over B·T) to the first attend call", measurements=wiring)
    shift = verdict(
        "wiring.pass2_shift", "Pass 2 reads frame t with the query made after frame t−1",
        calls == 2 and wiring["pass2_shift"] <= tol * q_scale,
        expected="pass-2 queries = [q_init, q_1 … q_{T−1}], q_t = query_head(h after z°_t)",
        observed=call_problem or f"max |pass-2 query − shifted pass-1 query| = {fmt(wiring['pass2_shift'])}",
        evidence="query_head's outputs captured by a forward hook and shifted by one frame (q_init first), "
                 "compared with the queries of the second encoder.attend call.",
        reason="SPEC \"Failure modes\": pass 2 not fed by pass 1 (queries not shifted, or static) gives ratio 1.00 "
               "— foveation cannot help",
        fix="shifted = cat([q_init, queries[:, :-1]], dim=1) and read pass 2 with it",
        measurements={"pass2_shift": wiring["pass2_shift"], "query_scale": q_scale})
    return [static, shift, follows_check(model, frames, latents, targets, tol, batch)]


def follows_check(model, frames, latents, targets, tol: float, batch: str) -> Check:
    """``wiring.pass2_follows_pass1``: nudging pass 1's read of frame t moves pass 2's reads of frames > t only."""
    T = frames.shape[1]
    perturb = probes.pass1_perturbation(model, frames, latents, targets=targets)
    t = perturb["t"]
    if perturb["change"] is None:
        ok, observed = False, f"encoder.attend ran {perturb['attend_calls']} times in one forward, not 2"
        reason = "the two-pass structure is not there to probe"
    else:
        change, threshold = perturb["change"], tol * max(perturb["scale"], 1e-12)
        before, after = max(change[: t + 1]), min(change[t + 1:]) if t + 1 < T else math.inf
        ok = before <= threshold and after > threshold
        observed = (f"nudging pass-1 read of frame {t + 1}: pass-2 queries of frames 1…{t + 1} change by ≤ "
                    f"{fmt(before)}, of frames {t + 2}…{T} by ≥ {fmt(after)}")
        reasons = []
        if before > threshold:
            reasons.append(f"a pass-2 read of frame ≤ {t + 1} follows the pass-1 read of frame {t + 1}: frame t is read "
                           f"with a query produced after seeing frame t (queries not shifted)")
        if after <= threshold:
            reasons.append("later pass-2 reads do not follow pass 1 at all: pass 2 is not fed by pass 1 "
                           "(static or constant queries)")
        reason = "; ".join(reasons)
    return verdict(
        "wiring.pass2_follows_pass1", "Pass-2 reads follow pass 1, one frame later", ok,
        expected="perturbing pass-1 output of frame t changes the pass-2 reads of frames > t only",
        observed=observed,
        evidence=f"The pass-1 features of frame {t + 1} shifted by one standard deviation; the queries of the "
                 f"second attend call compared with an unperturbed forward, per frame (threshold "
                 f"{fmt(tol)} × max |query|). {batch}",
        reason=reason + (". SPEC \"Failure modes\": pass 2 not fed by pass 1 gives ratio 1.00" if reason else ""),
        fix="derive the pass-2 queries from the pass-1 hidden states, shifted by one", measurements=perturb)


def target_leak_check(model, frames, latents, targets, tol: float, batch: str) -> Check:
    """``wiring.no_target_leak`` of the two-pass model: neither pass's prediction for frame t sees frame t."""
    leak = probes.target_leak(model, frames, latents, targets)      # T copies of the clip in one forward
    pred_scale = max(*probes.prediction_scale(model, frames, latents, targets).values(), 1e-12)
    leaks = {name: (leak[name], tol * max(pred_scale, leak[f"{name}_response"])) for name in ("pred_coarse", "pred_fine")}
    leaking = [name for name, (value, threshold) in leaks.items() if value > threshold]
    return verdict(
        "wiring.no_target_leak", LEAK_TITLE, not leaking,
        expected="the prediction for frame t depends on frames < t only (SPEC: both passes)",
        observed=(f"replacing frames ≥ t by noise moves the prediction for frame t by ≤ "
                  f"{fmt(leak['pred_coarse'])} (coarse), {fmt(leak['pred_fine'])} (fine); predictions that may "
                  f"see the change move by {fmt(leak['pred_coarse_response'])}, {fmt(leak['pred_fine_response'])}"),
        evidence=f"T copies of the clip in one forward, copy t with frames and latents ≥ t replaced by noise "
                 f"(fovea.audit.probes.target_leak); threshold {fmt(tol)} × prediction scale. {batch}",
        reason=f"{' and '.join(leaking)} moves when its own target frame changes: the wiring is off by one. SPEC "
               "\"Failure modes\": a suspiciously low loss that means nothing",
        fix="predict frame t from the hidden state before z_t (positions [mode, z_1 … z_{T−1}])", measurements=leak)


def encode_once_check(model, frames, latents, targets) -> Check:
    """``wiring.encode_once``: one ``encoder.encode`` call over all B·T frames per forward."""
    sizes = probes.encode_calls(model, frames, latents, targets)
    n = frames.shape[0] * frames.shape[1]
    if model.single_pass:
        expected, fix = "one encoder.encode call over all B·T frames", ""
        reason = "the expensive per-frame encoding runs more than once"
    else:
        expected = f"one encoder.encode call over all B·T = {n} frames; both passes reuse it"
        reason = ("the expensive per-frame encoding runs more than once: slower, and pass 1 and pass 2 may not read "
                  "the same features")
        fix = "encode once and attend twice against the same cache"
    return verdict("wiring.encode_once", "Each frame is encoded once per step", sizes == [n], otherwise="warn",
                   expected=expected, observed=f"encode calls per forward, frames each: {sizes}", reason=reason, fix=fix,
                   measurements={"sizes" if model.single_pass else "encode_call_sizes": sizes})


def single_pass_wiring(ev: Evidence, model, frames, latents, targets, tol: float, batch: str) -> list[Check]:
    """The wiring of a query-free model: no leak, each frame encoded once; the two-pass checks say why not."""
    name = ev.config.model.encoder.name
    checks = [verdict(key, title, "info", expected="two passes (SPEC \"Two-pass training\")",
                      observed=ONE_PASS.format(name))
              for key, title in (("wiring.pass1_static", "Pass 1 reads every frame with the same static query"),
                                 ("wiring.pass2_shift", "Pass 2 reads frame t with the query made after frame t−1"),
                                 ("wiring.pass2_follows_pass1", "Pass-2 reads follow pass 1, one frame later"),
                                 ("wiring.pass_independence", "Each pass predicts from its own states"))]
    if "next_latent" in model.objectives:
        leak = probes.target_leak(model, frames, latents, targets)
        scale = max(probes.prediction_scale(model, frames, latents, targets)["pred_fine"], 1e-12)
        leaking = leak["pred_fine"] > tol * max(scale, leak["pred_fine_response"])
        checks.append(verdict(
            "wiring.no_target_leak", LEAK_TITLE, not leaking,
            expected="the prediction for frame t depends on frames < t only (all K tokens of frame t come after it)",
            observed=f"replacing frames ≥ t by noise moves the prediction for frame t by ≤ {fmt(leak['pred_fine'])}; "
                     f"predictions that may see the change move by {fmt(leak['pred_fine_response'])}",
            evidence=f"fovea.audit.probes.target_leak; threshold {fmt(tol)} × prediction scale. {batch}",
            reason="the prediction for frame t moves when frame t changes: the wiring is off by one",
            measurements=leak))
    checks.append(encode_once_check(model, frames, latents, targets))
    return checks


def pass_independence_check(model, frames, latents, targets, tol: float, batch: str) -> Check:
    """Each objective's coarse loss comes from pass 1 alone, its fine loss from pass 2's reads."""
    found = probes.pass_independence(model, frames, latents, targets)
    objectives = list(model.objectives)
    leaking = [n for n in objectives if found[f"{n}_coarse"] > tol * max(found[f"{n}_scale"], 1e-12)]
    deaf = [n for n in objectives if found[f"{n}_fine"] <= tol * max(found[f"{n}_scale"], 1e-12)]
    problems = [f"{', '.join(leaking)}_coarse moves when pass 2's reads change: the coarse prediction reads pass 2"
                ] if leaking else []
    problems += [f"{', '.join(deaf)}_fine does not depend on pass 2's reads: the fine prediction ignores pass 2"
                 ] if deaf else []
    if found["attend_calls"] != 2:
        problems.append(f"encoder.attend ran {found['attend_calls']} times in one forward, not 2")
    return verdict(
        "wiring.pass_independence", "Each pass predicts from its own states", not problems,
        expected="replacing pass 2's reads leaves every objective's coarse loss unchanged and moves its fine loss "
                 "(SPEC: coarse from pass 1, fine from pass 2)",
        observed="; ".join(f"{n}: coarse moves by {fmt(found[f'{n}_coarse'])}, fine by {fmt(found[f'{n}_fine'])}"
                           for n in objectives),
        evidence=f"The second encoder.attend call's output replaced by seeded noise of the same scale "
                 f"(fovea.audit.probes.pass_independence); threshold {fmt(tol)} × the loss per clip. {batch}",
        reason="; ".join(problems) + ": improvement = (coarse − fine) / coarse then measures nothing",
        fix="score pass 1 from the pass-1 hidden states and pass 2 from the pass-2 ones", measurements=found)


def caption_causality_check(model, ev: Evidence, tol: float) -> Check:
    """A caption token is predicted from the frames and the tokens before it, and from its own clip only."""
    found = probes.caption_causality(model, ev.frames, ev.latents, ev.targets)
    bad = []
    for mode in ("coarse", "fine"):
        threshold = tol * max(found[f"{mode}_scale"], 1e-12)
        if found[f"{mode}_before"] > threshold:
            bad.append(f"{mode}: the prediction of caption token ≤ {found['position'] + 1} moves when token "
                       f"{found['position'] + 1} changes (it sees its target)")
        if found[f"{mode}_other_clips"] > threshold:
            bad.append(f"{mode}: another clip's caption logits move (clips of a batch see each other)")
        if found[f"{mode}_after"] <= threshold:
            bad.append(f"{mode}: later caption tokens ignore the earlier ones")
    return verdict(
        "wiring.no_caption_leak", "Caption tokens see only what comes before them, in their own clip", not bad,
        expected="changing caption token j of clip 0 moves the logits of its later tokens only, and of no other clip",
        observed="; ".join(f"{mode}: positions ≤ j move by {fmt(found[f'{mode}_before'])}, later ones by "
                           f"{fmt(found[f'{mode}_after'])}, other clips by {fmt(found[f'{mode}_other_clips'])}"
                           for mode in ("coarse", "fine")),
        evidence=f"Caption token {found['position'] + 1} of {found['caption_tokens']} of the first probe clip "
                 f"replaced (fovea.audit.probes.caption_causality); threshold {fmt(tol)} × logit scale. "
                 f"Probe batch: {ev.batch_origin}.",
        reason="; ".join(bad),
        fix="append the caption after the frames and keep the LLM's causal mask; never mix clips along the batch "
            "dimension",
        measurements=found)
