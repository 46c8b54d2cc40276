"""Self-contained HTML pages for evaluation reports and comparisons.

Plots are drawn with matplotlib (Agg backend) and embedded as base64 PNG, so a
report is one file that opens anywhere (checked in a real headless Chromium by
``tests/unit/test_evaluator_report_browser.py``).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w=6.0, h=3.6):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2430;background:#fff;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ccd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
td,th{border:1px solid #ccd;padding:3px 8px;text-align:right} th{background:#eef1f6} td:first-child{text-align:left}
.meta{color:#556;font-size:13px} img{max-width:100%;border:1px solid #eee;margin:4px}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def plot_test_set_bars(report: dict) -> str:
    fig, ax = _figure()
    names = [s["name"] for s in report["test_sets"]]
    top1 = [100 * (s["overall"]["top1"] or 0) for s in report["test_sets"]]
    ax.bar(names, top1, color="#4c72b0")
    ax.set_ylabel("zero-shot top-1 (%)" if report["model"]["kind"] == "clip" else "top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per test set")
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def plot_breakdown(report: dict, column: str) -> str | None:
    entries: dict[str, list[float]] = {}
    for s in report["test_sets"]:
        for value, acc in (s["breakdowns"].get(column) or {}).items():
            if acc["n"]:
                entries.setdefault(value, [0, 0])
                entries[value][0] += acc["top1"] * acc["n"]
                entries[value][1] += acc["n"]
    if not entries:
        return None
    fig, ax = _figure()
    keys = list(entries)
    ax.bar(keys, [100 * c / n for c, n in entries.values()], color="#55a868")
    for i, k in enumerate(keys):
        ax.text(i, 1, f"n={entries[k][1]}", ha="center", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Accuracy per {column}")
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def plot_similarity(bins: list[dict], title: str) -> str | None:
    pts = [(0.5 * (b["lo"] + b["hi"]), 100 * b["top1"], b["n"]) for b in bins if b["n"]]
    if not pts:
        return None
    fig, ax = _figure()
    x, y, n = zip(*pts)
    ax.plot(x, y, "o-", color="#c44e52")
    for xi, yi, ni in pts:
        ax.annotate(f"n={ni}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(0, 5), ha="center")
    ax.set_xlabel("nearest-neighbour similarity to the training set")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    return _png(fig)


def plot_groups(groups: dict) -> str:
    fig, ax = _figure(4.5, 3.4)
    names = ["common", "counter"]
    vals = [100 * (groups[g]["top1"] or 0) for g in names]
    ax.bar(names, vals, color=["#4c72b0", "#dd8452"])
    for i, g in enumerate(names):
        ax.text(i, 1, f"n={groups[g]['n']}", ha="center", fontsize=8)
    d = groups.get("drop_points")
    ax.set_title(f"Common vs counter (drop {'n/a' if d is None else f'{d:.1f}'} points)")
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    return _png(fig)


def plot_mechanistic(pair: dict) -> str | None:
    """One pair of domains: CKA (linear, RBF) and neuron sharing per layer."""
    layers = pair.get("layers") or []
    if not layers:
        return None
    cols = ["cka_linear", "cka_rbf", "neuron_sharing"]
    m = np.array([[np.nan if l[c] is None else l[c] for c in cols] for l in layers], dtype=float)
    fig, ax = _figure(5.5, 0.6 + 0.45 * len(layers))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), ["CKA linear", "CKA RBF", "neuron sharing"])
    ax.set_yticks(range(len(layers)), [l["layer"] for l in layers])
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, "n/a" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                    color="w" if np.nan_to_num(m[i, j]) < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(f"{pair['domains'][0]} vs {pair['domains'][1]} per layer")
    return _png(fig)


def render_report_html(report: dict) -> str:
    m = report["model"]
    parts = [f"<p class='meta'>model <b>{html.escape(m['label'])}</b> ({html.escape(m['kind'])}, "
             f"{html.escape(m['arch'])}, family {html.escape(m['family'])}) &middot; checkpoint "
             f"{html.escape(m['checkpoint'])} &middot; {report['n']} images &middot; {report['created']}</p>"]
    rows = [[s["name"], s["overall"]["n"], _pct(s["overall"]["top1"]), _pct(s["overall"]["top5"]),
             _pct(s["overall"]["mean_per_class_recall"]), len(s["classes"]), s["n_templates"], s["skipped"]]
            for s in report["test_sets"]]
    parts.append("<h2>Accuracy</h2>" + _table(["test set", "n", "top-1 %", "top-5 %", "mean per-class recall %",
                                               "classes", "templates", "skipped"], rows))
    parts.append(plot_test_set_bars(report))
    for col in ("domain", "group", "background"):
        img = plot_breakdown(report, col)
        if img:
            parts.append(img)
    for s in report["test_sets"]:
        extra = []
        for name, sub in s["label_subsets"].items():
            extra.append([f"subset {name} ({len(sub['class_names'])} classes)", sub["n"], _pct(sub["top1"])])
        for o in s["one_vs_k"]:
            extra.append([f"1-vs-{o['k']}", o["n"], _pct(o["top1"])])
        for col, values in s["breakdowns"].items():
            for v, acc in values.items():
                extra.append([f"{col} = {v}", acc["n"], _pct(acc["top1"])])
        if extra:
            parts.append(f"<h2>{html.escape(s['name'])}: breakdowns</h2>" + _table(["selection", "n", "top-1 %"], extra))
    g = report.get("groups")
    if g:
        parts.append("<h2>Group robustness</h2>" + _table(
            ["group", "n", "top-1 %"], [["common", g["common"]["n"], _pct(g["common"]["top1"])],
                                        ["counter", g["counter"]["n"], _pct(g["counter"]["top1"])],
                                        ["drop (points)", "", "n/a" if g["drop_points"] is None else f"{g['drop_points']:.1f}"]]))
        parts.append(plot_groups(g))
    if report.get("similarity_bins"):
        parts.append("<h2>Accuracy vs similarity</h2>" + _table(
            ["similarity bin", "n", "top-1 %"],
            [[f"[{b['lo']:.3f}, {b['hi']:.3f})", b["n"], _pct(b["top1"])] for b in report["similarity_bins"]]))
        img = plot_similarity(report["similarity_bins"], "Accuracy vs train-test similarity")
        if img:
            parts.append(img)
    mech = report.get("mechanistic")
    for pair in (mech or {}).get("pairs", []):
        parts.append(f"<h2>Mechanistic similarity: {html.escape(pair['domains'][0])} vs "
                     f"{html.escape(pair['domains'][1])}</h2><p class='meta'>{len(pair['classes'])} shared classes; "
                     f"neuron sharing: {html.escape(mech['neuron_sharing_rule'])}"
                     f"{'; ' + html.escape(pair['undefined']) if pair.get('undefined') else ''}</p>")
        if pair["layers"]:
            parts.append(_table(["layer", "units", "CKA linear", "CKA RBF", "neuron sharing"],
                                [[l["layer"], l["units"], _f(l["cka_linear"]), _f(l["cka_rbf"]), _f(l["neuron_sharing"])]
                                 for l in pair["layers"]]))
            parts.append(plot_mechanistic(pair))
    return _page(f"Evaluation report: {m['label']}", "\n".join(parts))


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def plot_effective_robustness(er: dict) -> str | None:
    if not er or not er["models"]:
        return None
    fig, ax = _figure(5.5, 4.5)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for i, (fam, fit) in enumerate(er["families"].items()):
        pts = [r for r in er["models"] if r["family"] == fam]
        c = colours[i % len(colours)]
        ax.scatter([100 * p["common"] for p in pts], [100 * p["counter"] for p in pts], color=c,
                   label=f"{fam} (n={fit['n_models']})")
        if fit["defined"]:
            xs = np.linspace(0.01, 0.99, 99)
            if er["space"] == "logit":
                z = fit["slope"] * np.log(xs / (1 - xs)) + fit["intercept"]
                ys = 1 / (1 + np.exp(-z))
            else:
                ys = fit["slope"] * xs + fit["intercept"]
            ax.plot(100 * xs, 100 * ys, color=c, lw=1)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8, label="y = x")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("common top-1 (%)")
    ax.set_ylabel("counter top-1 (%)")
    ax.set_title(f"Effective robustness (fit in {er['space']} space)")
    ax.legend(fontsize=8)
    return _png(fig)


def render_comparison_html(comparison: dict, reports: list[dict]) -> str:
    rows = [[r["model"], r["family"], r["test_set"], r["n"], _pct(r["top1"]), _pct(r["top5"]), _pct(r["common"]),
             _pct(r["counter"]), "n/a" if r["drop_points"] is None else f"{r['drop_points']:.1f}"]
            for r in comparison["rows"]]
    parts = ["<h2>Models side by side</h2>",
             _table(["model", "family", "test set", "n", "top-1 %", "top-5 %", "common %", "counter %", "drop (points)"], rows)]
    fig, ax = _figure(7, 3.8)
    sets = sorted({r["test_set"] for r in comparison["rows"] if r["top1"] is not None})
    models = list(dict.fromkeys(r["model"] for r in comparison["rows"]))
    w = 0.8 / max(1, len(models))
    for i, mname in enumerate(models):
        vals = {r["test_set"]: r["top1"] for r in comparison["rows"] if r["model"] == mname and r["top1"] is not None}
        ax.bar(np.arange(len(sets)) + i * w, [100 * vals.get(s, 0) for s in sets], w, label=mname[:30])
    ax.set_xticks(np.arange(len(sets)) + 0.4 - w / 2, sets, rotation=30)
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    parts.append(_png(fig))
    er = comparison.get("effective_robustness")
    if er:
        parts.append("<h2>Effective robustness</h2>" + _table(
            ["model", "family", "common %", "counter %", "residual (points)"],
            [[r["model"], r["family"], _pct(r["common"]), _pct(r["counter"]),
              "undefined" if r["residual_points"] is None else f"{r['residual_points']:.1f}"] for r in er["models"]]))
        img = plot_effective_robustness(er)
        if img:
            parts.append(img)
    return _page(f"Comparison of {len(reports)} report(s)", "\n".join(parts))
