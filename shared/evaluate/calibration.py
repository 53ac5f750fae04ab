"""Phase 5: confidence calibration and the "no concluyente" threshold.

ECE/MCE over 15 equal-width bins of top-1 confidence; temperature scaling (one
temperature fit on val logits by minimising NLL with LBFGS) applied when ECE is
above the plan's 0.10; the lowest confidence threshold at which the covered
samples reach the target precision (95%) and the coverage there; a reliability
diagram as HTML (inline SVG) and PNG.

Threshold candidates are the distinct top-1 confidences (exact: no grid step can
miss the lowest admissible threshold); the accuracy/coverage curve reported
beside it is sampled on a 0.00, 0.01, ..., 1.00 grid. When no threshold reaches
the target the threshold is 1.0 (every prediction "no concluyente") and
threshold_reached is False, with a message saying so."""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
import torch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64, numerically stable)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ece_mce(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, float, list[dict]]:
    """Expected and maximum calibration error over equal-width confidence bins
    (bin i holds (i/n, (i+1)/n]; confidence 0 goes to the first)."""
    conf = np.asarray(confidences, np.float64)
    corr = np.asarray(correct, np.float64)
    if len(conf) == 0:
        raise ValueError("no samples to calibrate on")
    if conf.shape != corr.shape or conf.ndim != 1:
        raise ValueError(f"confidences {conf.shape} and correct {corr.shape} must be equal-length 1-D arrays")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError(f"confidences must lie in [0, 1]; got [{conf.min():.3g}, {conf.max():.3g}]")
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        m = which == b
        n = int(m.sum())
        acc = float(corr[m].mean()) if n else 0.0
        avg = float(conf[m].mean()) if n else 0.0
        gap = abs(acc - avg)
        if n:
            ece += n / len(conf) * gap
            mce = max(mce, gap)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "accuracy": acc, "confidence": avg})
    return float(ece), float(mce), bins


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / temperature)."""
    return softmax(logits, temperature)


def _check_logits_labels(logits: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"{what} logits must be N x classes, got shape {logits.shape}")
    if labels.shape != (len(logits),):
        raise ValueError(f"{what} labels have shape {labels.shape}, expected ({len(logits)},) to match the logits")
    if labels.size and labels.max() >= logits.shape[1]:
        raise ValueError(f"{what} label {int(labels.max())} is out of range for {logits.shape[1]} classes")
    if not np.isfinite(logits).all():
        raise ValueError(f"{what} logits contain NaN or inf")
    return logits, labels.astype(np.int64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The temperature minimising NLL on (logits, labels), optimised over log T with LBFGS."""
    z = torch.as_tensor(np.asarray(logits, np.float32))
    y = torch.as_tensor(np.asarray(labels, np.int64))
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


OBJECTIVES = ("ece", "nll")


def _confidence_and_nll(
    logits: np.ndarray, labels: np.ndarray, temperature: float, chunk: int = 4096
) -> tuple[np.ndarray, float]:
    """Top-1 confidence per sample and mean NLL at `temperature`, a chunk of rows at a
    time (at the plan's 85k x 8,600 val set a full softmax copy would be gigabytes)."""
    conf = np.empty(len(logits))
    total = 0.0
    for s in range(0, len(logits), chunk):
        z = np.asarray(logits[s : s + chunk], np.float64) / temperature
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        conf[s : s + chunk] = np.exp(m - lse)
        total += float((lse - z[np.arange(len(z)), labels[s : s + chunk]]).sum())
    return conf, total / len(logits)


def fit_temperature_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """The temperature with the lowest ECE on (logits, labels): the plan's 5.2 ("the
    temperature that minimises ECE"). ECE is piecewise constant in T, so it is searched,
    not differentiated: a log grid over [0.05, 20], refined around its best point, plus
    1.0 and the NLL optimum; ties go to the lower NLL. With 1.0 among the candidates the
    ECE chosen is never above the uncalibrated one."""
    labels = np.asarray(labels, np.int64)
    correct = np.asarray(logits).argmax(1) == labels  # top-1 does not depend on T

    def score(t: float) -> tuple[float, float, float]:
        conf, loss = _confidence_and_nll(logits, labels, t)
        return round(ece_mce(conf, correct, n_bins)[0], 12), loss, t

    coarse = np.geomspace(0.05, 20.0, 61)
    scored = [score(float(t)) for t in coarse]
    i = min(range(len(scored)), key=lambda j: scored[j])
    lo, hi = coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)]
    scored += [score(float(t)) for t in np.geomspace(lo, hi, 41)]
    scored += [score(1.0), score(fit_temperature(logits, labels))]
    return float(min(scored)[2])


def threshold_search(confidences: np.ndarray, correct: np.ndarray, target_precision: float = 0.95) -> dict[str, Any]:
    """The lowest top-1 confidence threshold t such that accuracy over the samples
    with confidence >= t is at least target_precision. Candidates are the distinct
    confidences; the curve lists accuracy and coverage at each of 101 grid points."""
    conf = np.asarray(confidences, np.float64)
    corr = np.asarray(correct, bool)
    if conf.shape != corr.shape or conf.ndim != 1 or len(conf) == 0:
        raise ValueError(
            f"threshold_search needs two equal-length, non-empty 1-D arrays; got confidences "
            f"{conf.shape} and correct {corr.shape}"
        )
    order = np.argsort(-conf, kind="stable")
    c_sorted, ok_sorted = conf[order], corr[order]
    cum_ok = np.cumsum(ok_sorted)
    n = len(conf)
    best = None
    # Walking from the most confident sample down, threshold = c_sorted[i] covers
    # every sample with conf >= c_sorted[i] (ties included).
    for i in range(n):
        if i + 1 < n and c_sorted[i + 1] == c_sorted[i]:
            continue
        covered = i + 1
        if cum_ok[i] / covered >= target_precision:
            best = (float(c_sorted[i]), covered / n, float(cum_ok[i] / covered))
    curve = []
    for t in (i / 100 for i in range(101)):  # exact grid values (linspace gives 0.7000000000000001)
        m = conf >= t
        curve.append(
            {"threshold": t, "coverage": float(m.mean()), "accuracy": float(corr[m].mean()) if m.any() else None}
        )
    if best is None:
        return {
            "threshold_reached": False,
            "threshold": 1.0,
            "coverage": 0.0,
            "precision_at_threshold": None,
            "target_precision": target_precision,
            "curve": curve,
            "message": f"no confidence threshold reaches {target_precision:.0%} precision on this set",
        }
    return {
        "threshold_reached": True,
        "threshold": best[0],
        "coverage": best[1],
        "precision_at_threshold": best[2],
        "target_precision": target_precision,
        "curve": curve,
        "message": f"threshold {best[0]:.3f}: {best[2]:.1%} precision on {best[1]:.1%} of samples",
    }


def calibrate(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    ece_threshold: float = 0.10,
    target_precision: float = 0.95,
    n_bins: int = 15,
    objective: str = "ece",
) -> dict[str, Any]:
    """The calibration.json content: temperature (1.0 unless ECE > ece_threshold; then
    the one minimising `objective` on val: "ece" as the plan says, or "nll", the usual
    temperature scaling), ECE/MCE before/after on val (and test), the threshold and its
    coverage."""
    if objective not in OBJECTIVES:
        raise ValueError(f"calibration.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    val_logits, val_labels = _check_logits_labels(val_logits, val_labels, "val")
    known = val_labels >= 0  # -1: a class the student does not have
    if not known.any():
        raise ValueError("val has no sample with a label among the model's classes: nothing to calibrate on")
    vl, vy = val_logits[known], val_labels[known]
    p0 = softmax(vl)
    ece0, mce0, bins0 = ece_mce(p0.max(1), p0.argmax(1) == vy, n_bins)
    applied = ece0 > ece_threshold
    t = (fit_temperature_ece(vl, vy, n_bins) if objective == "ece" else fit_temperature(vl, vy)) if applied else 1.0
    p1 = softmax(vl, t)
    ece1, mce1, bins1 = ece_mce(p1.max(1), p1.argmax(1) == vy, n_bins)
    thr = threshold_search(p1.max(1), p1.argmax(1) == vy, target_precision)
    out: dict[str, Any] = {
        "temperature": t,
        "applied": bool(applied),
        "ece_threshold": ece_threshold,
        "objective": objective,
        "val_samples": int(len(vy)),
        "val_top1": float((p0.argmax(1) == vy).mean()),
        "ece_before": ece0,
        "ece_after": ece1,
        "mce_before": mce0,
        "mce_after": mce1,
        "nll_before": nll(vl, vy),
        "nll_after": nll(vl, vy, t),
        "threshold": thr["threshold"],
        "threshold_reached": thr["threshold_reached"],
        "coverage": thr["coverage"],
        "precision_at_threshold": thr["precision_at_threshold"],
        "target_precision": target_precision,
        "threshold_message": thr["message"],
        "curve": thr["curve"],
        "bins_before": bins0,
        "bins_after": bins1,
        "n_bins": n_bins,
    }
    if test_logits is not None and test_labels is not None:
        test_logits, test_labels = _check_logits_labels(test_logits, test_labels, "test")
    if test_logits is not None and test_labels is not None and (test_labels >= 0).any():
        k = test_labels >= 0
        tl, ty = test_logits[k], test_labels[k]
        for name, temp in (("before", 1.0), ("after", t)):
            p = softmax(tl, temp)
            e, m, _ = ece_mce(p.max(1), p.argmax(1) == ty, n_bins)
            out[f"test_ece_{name}"], out[f"test_mce_{name}"] = e, m
        p = softmax(tl, t)
        cov = p.max(1) >= thr["threshold"]
        out["test_top1"] = float((p.argmax(1) == ty).mean())
        out["test_coverage"] = float(cov.mean())
        out["test_precision_at_threshold"] = float((p.argmax(1) == ty)[cov].mean()) if cov.any() else None
    return out


def reliability_diagram_svg(bins: list[dict], title: str, size: int = 260) -> str:
    pad, w = 30, size
    bar = (w - 2 * pad) / len(bins)
    parts = [
        f'<svg width="{w}" height="{w}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{pad}" y1="{w - pad}" x2="{w - pad}" y2="{pad}" stroke="#999" stroke-dasharray="4"/>',
    ]
    for i, b in enumerate(bins):
        h = (w - 2 * pad) * b["accuracy"]
        x = pad + i * bar
        if b["count"]:
            parts.append(
                f'<rect x="{x:.1f}" y="{w - pad - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                f'fill="#3a7d44"><title>{b["lo"]:.2f}-{b["hi"]:.2f}: acc {b["accuracy"]:.2f}, '
                f"conf {b['confidence']:.2f}, n={b['count']}</title></rect>"
            )
    parts.append(f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{w - 2 * pad}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{w / 2}" y="{w - 8}" text-anchor="middle" font-size="11">confidence</text></svg>')
    return "".join(parts)


def reliability_diagram_html(
    bins: list[dict],
    title: str = "Reliability diagram",
    bins_after: list[dict] | None = None,
    temperature: float | None = None,
) -> str:
    """A self-contained HTML page: the reliability diagram (inline SVG, bars = accuracy
    per confidence bin, dashed = perfect calibration) and the per-bin table; with
    bins_after, a second diagram after temperature scaling."""
    ece, mce = _ece_mce_of_bins(bins)
    svgs = reliability_diagram_svg(
        bins, f"before (ECE {ece:.3f}, MCE {mce:.3f})" if bins_after else f"ECE {ece:.3f}, MCE {mce:.3f}"
    )
    if bins_after is not None:
        ea, ma = _ece_mce_of_bins(bins_after)
        t = "" if temperature is None else f"T={temperature:.2f}, "
        svgs += reliability_diagram_svg(bins_after, f"after ({t}ECE {ea:.3f}, MCE {ma:.3f})")
    rows = "".join(
        f"<tr><td>{b['lo']:.2f}-{b['hi']:.2f}</td><td>{b['count']}</td><td>{b['confidence']:.3f}</td>"
        f"<td>{b['accuracy']:.3f}</td></tr>"
        for b in bins
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'><h2>{html.escape(title)}</h2>{svgs}"
        f"<table><tr><th>bin</th><th>n</th><th>confidence</th><th>accuracy</th></tr>{rows}</table>"
        f"</body></html>"
    )


def _ece_mce_of_bins(bins: list[dict]) -> tuple[float, float]:
    n = sum(b["count"] for b in bins)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in bins if b["count"]]
    return (sum(c * g for c, g in gaps) / n if n else 0.0), max((g for _, g in gaps), default=0.0)


def report_html(cal: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{k}</td><td>{cal[k]}</td></tr>"
        for k in (
            "temperature",
            "applied",
            "ece_before",
            "ece_after",
            "mce_before",
            "mce_after",
            "threshold",
            "threshold_reached",
            "coverage",
            "precision_at_threshold",
            "threshold_message",
        )
        if k in cal
    )
    curve = "".join(
        f"<tr><td>{c['threshold']:.2f}</td><td>{c['coverage']:.3f}</td><td>"
        f"{'' if c['accuracy'] is None else format(c['accuracy'], '.3f')}</td></tr>"
        for c in cal["curve"][::5]
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Calibration</title></head>"
        f"<body style='font-family:sans-serif'><h2>Calibration (phase 5)</h2><table>{rows}</table>"
        f"{reliability_diagram_svg(cal['bins_before'], 'before')}"
        f"{reliability_diagram_svg(cal['bins_after'], 'after (T=' + format(cal['temperature'], '.2f') + ')')}"
        f"<h3>Accuracy / coverage by threshold</h3><table><tr><th>threshold</th><th>coverage</th>"
        f"<th>accuracy</th></tr>{curve}</table></body></html>"
    )


def reliability_diagram_png(bins_before: list[dict], bins_after: list[dict] | None = None) -> bytes:
    """The reliability diagram(s) as PNG bytes (Pillow): one panel, or before | after."""
    from PIL import Image, ImageDraw

    w, pad = 260, 20
    panels = [bins_before] if bins_after is None else [bins_before, bins_after]
    img = Image.new("RGB", (len(panels) * w, w), "white")
    d = ImageDraw.Draw(img)
    for panel, bins in enumerate(panels):
        ox = panel * w
        d.rectangle([ox + pad, pad, ox + w - pad, w - pad], outline="black")
        d.line([ox + pad, w - pad, ox + w - pad, pad], fill=(150, 150, 150))
        bar = (w - 2 * pad) / len(bins)
        for i, b in enumerate(bins):
            if b["count"]:
                h = (w - 2 * pad) * b["accuracy"]
                d.rectangle(
                    [ox + pad + i * bar, w - pad - h, ox + pad + (i + 1) * bar - 1, w - pad], fill=(58, 125, 68)
                )
        if len(panels) == 2:
            d.text((ox + pad, 4), "before" if panel == 0 else "after", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def run_calibrate(
    checkpoint_path: str,
    val_records: list[dict],
    test_records: list[dict],
    cache_dir: str,
    out_checkpoint: str,
    out_json: str,
    ece_threshold: float = 0.10,
    target_precision: float = 0.95,
    objective: str = "ece",
) -> dict[str, Any]:
    """The calibrate step: student logits on val/test, calibration, and the calibrated
    checkpoint (same weights, with `temperature` and `threshold` recorded in it)."""
    from shared.evaluate.evaluation import evaluate_checkpoint
    from shared.io.atomic import write_json
    from shared.io.checkpoint import build_model, load_checkpoint, save_checkpoint

    val_m, val_logits, val_labels, _ = evaluate_checkpoint(checkpoint_path, val_records, cache_dir)
    test_m, test_logits, test_labels, _ = evaluate_checkpoint(checkpoint_path, test_records, cache_dir)
    cal = calibrate(
        val_logits, val_labels, test_logits, test_labels, ece_threshold, target_precision, objective=objective
    )
    cal["val_top5"], cal["test_top5"] = val_m["top5_accuracy"], test_m["top5_accuracy"]
    ckpt = load_checkpoint(checkpoint_path)
    extra = {k: v for k, v in ckpt.items() if k not in ("state_dict", "format_version")}
    extra.update({"temperature": cal["temperature"], "threshold": cal["threshold"]})
    save_checkpoint(out_checkpoint, build_model(ckpt), **extra)
    write_json(out_json, cal)
    return cal


def gate_table(
    cal: dict[str, Any], min_val_top1: float, max_ece: float, min_coverage: float, min_precision: float
) -> list[dict[str, Any]]:
    """The plan's phase 4/5 criteria on val (where temperature and threshold were fitted) and on
    the held-out test set, with the plan's own inequalities (ECE < 0.10 is strict), at the bounds
    given; the rows are shared/evaluate/plan_criteria.py's (a criterion not measured fails)."""
    from shared.evaluate.plan_criteria import criteria_rows

    rows = criteria_rows(cal, min_val_top1, max_ece, min_coverage, min_precision)
    return [{**{k: v for k, v in r.items() if k != "met"}, "passed": r["met"] is True} for r in rows]


def export_gate(
    cal: dict[str, Any], min_val_top1: float, max_ece: float, min_coverage: float = 0.80, min_precision: float = 0.95
) -> tuple[bool, str, list[dict[str, Any]]]:
    """Bless the student for export only when every gate passes on val and on test;
    returns (blessed, reason naming each failed gate, the gate table)."""
    table = gate_table(cal, min_val_top1, max_ece, min_coverage, min_precision)
    failed = [g for g in table if not g["passed"]]

    def show(g: dict) -> str:
        v = "missing" if g["value"] is None else f"{g['value']:.3f}"
        return f"{g['name']} {v} (needs {g['op']} {g['bound']})"

    if failed:
        return False, "not blessed: " + "; ".join(show(g) for g in failed), table
    return True, "blessed: " + ", ".join(show(g) for g in table), table
