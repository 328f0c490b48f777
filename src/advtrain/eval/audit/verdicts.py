"""The verdict of each audited failure mode, by explicit rules on the measured numbers and their 95% intervals,
and the plain-language paragraph that says what was measured, the verdict and how sure it is.

A verdict is decided only when the whole interval lies on one side of its threshold; otherwise it is
"inconclusive" and the paragraph says that a larger budget would settle it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Robust accuracy whose 95% upper bound is below 5%: the attacks break (nearly) every image; 5% is half the
# chance level of a 10-class problem, so nothing above guessing survives.
NO_ROBUSTNESS_CEILING = 0.05
# Gradient masking: any diagnose check that warns, except one alone: each threshold already has slack for sampling
# noise (advtrain.eval.diagnose.attack_checks, gradient_checks), and one symptom means the white-box accuracy
# may overstate the robustness.
# The restarts check alone only makes the verdict inconclusive: its 0.05 threshold is set for PGD-50 with 10
# restarts on 500 images, and at an audit budget's fewer restarts and images an unmasked but non-concave loss
# (PGD-AT small CNNs on digits, depending on the seed) gains up to 8 points from a few restarts.
INCONCLUSIVE_ALONE = ("restarts",)
# Saliency: a mean global Gini above 0.5 means half of the attribution mass sits on far fewer pixels than an even
# spread would put it on (an exponential spread of |∇| already has Gini 0.5); IGD reports adversarially
# trained models above this and argues their few salient pixels are the ones noise can exploit.
GINI_UNEQUAL = 0.5
# Vulnerability: the Gini of max(AV, 0) of an exponential spread is 0.5; above it, a minority of images carries
# most of the vulnerability (ISEAT's premise that training sacrifices some examples).
AV_GINI_UNEVEN = 0.5
# Invariance: a mean cosine of 0.8 between clean and adversarial penultimate features keeps most of the
# representation's direction; AR-AT's regulariser pushes it towards 1, standard training leaves it far lower.
INVARIANT_COSINE = 0.8

FAILURE_MODES = ("robustness", "masking", "saliency", "vulnerability", "invariance")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _interval(ci: Any, percent: bool = True) -> str:
    low, high = ci
    if low is None or high is None or low != low or high != high:
        return "no interval"
    return f"95% CI {_pct(low)}–{_pct(high)}" if percent else f"95% CI {low:.3f}–{high:.3f}"


def _side(ci: Any, threshold: float) -> str:
    """"above" / "below" when the whole interval lies on that side of `threshold`, else "straddles"."""
    low, high = ci
    if low is not None and low > threshold:
        return "above"
    if high is not None and high < threshold:
        return "below"
    return "straddles"


def _verdict(mode: str, verdict: str, flagged: bool, paragraph: str) -> dict[str, Any]:
    return {"mode": mode, "verdict": verdict, "flagged": flagged, "paragraph": paragraph}


def robustness_verdict(r: Mapping[str, Any], budget: Mapping[str, Any]) -> dict[str, Any]:
    clean, robust = r["clean"], r["robust"]
    side = _side(robust["ci95"], NO_ROBUSTNESS_CEILING)
    verdict = {"below": "no robustness", "above": "some robustness", "straddles": "inconclusive"}[side]
    pgd, aa = r["attacks"][1], r["attacks"][2]
    text = (f"On {r['n']} test images the model is {_pct(clean['accuracy'])} accurate ({_interval(clean['ci95'])}). "
            f"Under {r['norm']} attacks of radius ε = {r['eps']:.4g}, PGD-{pgd['steps']} leaves "
            f"{_pct(pgd['accuracy'])} correct; AutoAttack ({aa['version']}) then attacked the {aa['attacked']} "
            f"images PGD did not break, and {_pct(robust['accuracy'])} of all images survive both "
            f"({_interval(robust['ci95'])}). Verdict: {verdict}")
    text += {"below": f": the upper bound is below {_pct(NO_ROBUSTNESS_CEILING)}, so the model has no meaningful "
                      "robustness at this radius.",
             "above": f": even the lower bound is above {_pct(NO_ROBUSTNESS_CEILING)}. Attacks only bound robust "
                      f"accuracy from above (here the {budget['autoattack']} AutoAttack); read it with the masking "
                      "check.",
             "straddles": f": the interval contains {_pct(NO_ROBUSTNESS_CEILING)}; the standard budget's larger "
                          "sample would settle it."}[side]
    return _verdict("robustness", verdict, side == "below", text)


def masking_verdict(m: Mapping[str, Any]) -> dict[str, Any]:
    if not m.get("available"):
        return _verdict("masking", "not available", False, f"Gradient masking was not checked: {m['reason']}.")
    checks = m["checks"]
    measured = [c for c in checks.values() if c["verdict"] in ("PASS", "WARN")]
    warned = [c for c in measured if c["verdict"] == "WARN"]
    flagged = any(c["name"] not in INCONCLUSIVE_ALONE for c in warned)
    gap = checks["fgsm_pgd_gap"]["details"]
    text = (f"Eight diagnostics of gradient masking ran on {m['n']} images at ε = {m['eps']:.4g}: whether one FGSM "
            f"step is far weaker than PGD (FGSM {_pct(gap.get('fgsm_accuracy'))}, "
            f"{_interval(gap.get('fgsm_accuracy_ci95', (None, None)))}; PGD-20 {_pct(gap.get('pgd_accuracy'))}, "
            f"{_interval(gap.get('pgd_accuracy_ci95', (None, None)))}), whether more steps, restarts or a larger ε "
            "still lower the accuracy as they must, whether the loss rises along the gradient and whether gradients "
            f"vanish. {len(warned)} of the {len(measured)} checks with a threshold warned")
    found = "; ".join(f"{c['name']} ({c['rule']}, measured {_num(c['value'])})" for c in warned)
    if flagged:
        verdict = "gradient masking"
        text += (f": {found}. Verdict: gradient masking. The accuracies above are not to be trusted as robustness; "
                 "the attacks fail because the gradients mislead them.")
    elif warned:
        verdict = "inconclusive"
        text += (f": {found}. Verdict: inconclusive: more random restarts breaking more images alone can also be a "
                 "non-concave loss at this budget; the standard budget (PGD-50, 10 restarts) would settle it.")
    else:
        verdict = "no masking detected"
        text += (". Verdict: no sign of gradient masking. Each threshold leaves room for sampling noise at this "
                 "n; a check can only show a symptom, never prove its absence.")
    return _verdict("masking", verdict, flagged, text)


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def saliency_verdict(s: Mapping[str, Any]) -> dict[str, Any]:
    g = s["gini"]["global"]
    side = _side(g["ci95"], GINI_UNEQUAL)
    verdict = {"above": "unequal saliency", "below": "spread saliency", "straddles": "inconclusive"}[side]
    model_noise = (s.get("inductive_noise") or {}).get("model") or {}
    model_random = (s.get("random_noise") or {}).get("model") or {}
    noise = ""
    for mode, sweep in model_noise.items():
        rho = max(sweep, key=float)
        random_error = (model_random.get(mode) or {}).get(rho)
        noise = (f" Perturbing the {100 * float(rho):g}% most salient pixels ({mode} noise) breaks "
                 f"{_pct(sweep[rho])} of the {s['n_common_correct']} correctly classified images, against "
                 f"{_pct(random_error)} for the same share of random pixels.")
        break
    text = (f"The saliency |∇ₓ z_y| of {s['n']} images has a mean global Gini of {g['mean']:.3f} "
            f"({_interval(g['ci95'], percent=False)}, bootstrap); regional (IGD blocks) "
            f"{s['gini']['regional_igd']['mean']:.3f}.{noise} Verdict: {verdict}")
    text += {"above": f": the whole interval is above {GINI_UNEQUAL}, so a few pixels carry most of the model's "
                      "attribution (IGD's failure mode); the noise comparison says whether perturbing exactly those "
                      "pixels breaks it more often than perturbing random ones.",
             "below": f": the whole interval is below {GINI_UNEQUAL}; the evidence is spread over many pixels.",
             "straddles": f": the interval contains {GINI_UNEQUAL}; more images would settle it."}[side]
    return _verdict("saliency", verdict, side == "above", text)


def vulnerability_verdict(v: Mapping[str, Any]) -> dict[str, Any]:
    st = v["stats"]
    side = _side(st["gini_ci95"], AV_GINI_UNEVEN)
    verdict = {"above": "uneven vulnerability", "below": "even vulnerability", "straddles": "inconclusive"}[side]
    text = (f"The adversarial vulnerability CE(x') − CE(x) of {v['n']} images under PGD-{v['steps']} at ε = "
            f"{v['eps']:.4g} has mean {st['mean']:.3g} and median {st['q50']:.3g}; its Gini is {st['gini']:.3f} "
            f"({_interval(st['gini_ci95'], percent=False)}, bootstrap) and the 10% most vulnerable images hold "
            f"{_pct(st['top10_share'])} of it ({_interval(st['top10_share_ci95'])}). Verdict: {verdict}")
    text += {"above": f": the Gini interval is above {AV_GINI_UNEVEN} (an exponential spread), so a minority of "
                      "images carries most of the vulnerability and an average hides them.",
             "below": f": the Gini interval is below {AV_GINI_UNEVEN}; the images are similarly vulnerable.",
             "straddles": f": the interval contains {AV_GINI_UNEVEN}; more images would settle it."}[side]
    return _verdict("vulnerability", verdict, side == "above", text)


def invariance_verdict(inv: Mapping[str, Any], r: Mapping[str, Any]) -> dict[str, Any]:
    clean, robust = r["clean"], r["robust"]
    tradeoff = (f" The trade-off: clean {_pct(clean['accuracy'])} ({_interval(clean['ci95'])}) against robust "
                f"{_pct(robust['accuracy'])} ({_interval(robust['ci95'])}), a sum of "
                f"{_pct((clean['accuracy'] or 0) + (robust['accuracy'] or 0))}.")
    if not inv.get("available"):
        return _verdict("invariance", "not available", False,
                        f"Representation invariance is not available: {inv['reason']}.{tradeoff}")
    s = inv["summary"]
    side = _side(inv["mean_ci95"], INVARIANT_COSINE)
    verdict = {"above": "invariant", "below": "not invariant", "straddles": "inconclusive"}[side]
    text = (f"The cosine between the penultimate features of {inv['n']} clean images and of their PGD-"
            f"{inv['steps']} adversarial copies (ε = {inv['eps']:.4g}) averages {s['mean']:.3f} "
            f"({_interval(inv['mean_ci95'], percent=False)}, bootstrap; minimum {s['min']:.3f}).{tradeoff} "
            f"Verdict: {verdict}")
    text += {"above": f": the interval is above {INVARIANT_COSINE}; attacks barely move the representation.",
             "below": f": the interval is below {INVARIANT_COSINE}; attacks change what the model represents, "
                      "not only its decision.",
             "straddles": f": the interval contains {INVARIANT_COSINE}; more images would settle it."}[side]
    return _verdict("invariance", verdict, side == "below", text)


def verdicts(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The verdict of each of `FAILURE_MODES` from an audit's sections."""
    r = result["robustness"]
    return {
        "robustness": robustness_verdict(r, result["budget"]),
        "masking": masking_verdict(result["masking"]),
        "saliency": saliency_verdict(result["saliency"]),
        "vulnerability": vulnerability_verdict(result["vulnerability"]),
        "invariance": invariance_verdict(result["invariance"], r),
    }
