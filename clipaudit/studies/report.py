"""The study report: one self-contained HTML page (plots as embedded PNGs) beside
report.json. Every number and every "reproduced" verdict comes from report.json."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

PALETTE = {"near": "#d62728", "far": "#1f77b4", "random": "#7f7f7f", "near-stratified": "#ff9896",
           "far-stratified": "#aec7e8", "CLIP": "#1f77b4", "supervised": "#ff7f0e"}


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _fig().close(fig)
    return f'<img class="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------- study 1

def plot_similarity_histograms(s1: dict) -> str:
    plt = _fig()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, key, title in ((axes[0], "test_to_train", "sim(t, Train)"), (axes[1], "test_to_reference", "sim(t, Reference)")):
        for name, h in s1["histograms"][key].items():
            edges = np.asarray(h["edges"])
            ax.step(edges[:-1], h["counts"], where="post", label=f"{name} (median {h['median']:.2f})")
        ax.set_title(title)
        ax.set_xlabel("nearest-neighbour cosine similarity")
        ax.set_ylabel("test images")
        ax.legend(fontsize=7)
    return _png(fig)


def plot_accuracy_vs_similarity(s1: dict) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, bins in (s1["accuracy_by_similarity"]["per_test"] or {}).items():
        pts = [(_centre(b), _acc(b)) for b in (bins or []) if _acc(b) is not None and b.get("n", 0) > 0]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=3, lw=1, label=name)
    pooled = [(_centre(b), _acc(b)) for b in s1["accuracy_by_similarity"]["pooled"] or [] if _acc(b) is not None]
    if pooled:
        x, y = zip(*pooled)
        ax.plot(x, y, color="k", lw=2.5, label="all test sets")
    ax.set_xlabel("sim(t, Train) bin")
    ax.set_ylabel("zero-shot top-1")
    ax.set_title("Accuracy rises with train–test similarity?")
    ax.legend(fontsize=7)
    return _png(fig)


def _centre(b):
    if "center" in b:
        return b["center"]
    lo, hi = b.get("lo", b.get("low")), b.get("hi", b.get("high"))
    return (lo + hi) / 2 if lo is not None and hi is not None else b.get("mean_similarity")


def _acc(b):
    return b.get("accuracy", b.get("top1", b.get("acc")))


def plot_pruning(s1: dict) -> str:
    plt = _fig()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, title in ((axes[0], "ood", "OOD test sets"), (axes[1], "id", "ID test sets")):
        by_rule: dict[str, list] = {}
        for r in s1["pruning_sweep"]:
            if r.get(key) is not None:
                by_rule.setdefault(r["rule"], []).append((r["keep_fraction"], r[key]))
        for rule, pts in by_rule.items():
            x, y = zip(*sorted(pts))
            ax.plot(x, y, marker="o", label=rule, color=PALETTE.get(rule), ls="--" if "strat" in rule else "-")
        if s1["full"].get(key) is not None:
            ax.axhline(s1["full"][key], color="k", lw=1, ls=":", label="full pool")
        comb = next((m for m in s1["matched"]["subsets"] if m["name"] == "combined" and m.get(key) is not None), None)
        if comb:
            ax.plot([comb["kept"] / max(1, comb["kept"] + comb["removed"])], [comb[key]], "k*", ms=12,
                    label="similarity-matched")
        ax.set_xlabel("fraction of the training pool kept")
        ax.set_ylabel("top-1")
        ax.set_title(title)
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    return _png(fig)


def gallery_html(s1: dict) -> str:
    rows = []
    for g in s1.get("gallery", []):
        cells = [f'<figure><img src="data:image/jpeg;base64,{g["image"]}"><figcaption><b>{_e(g["test_set"])}</b>'
                 f'<br>{_e(g["caption"])}<br>NN sim {g["sim"]:.3f}</figcaption></figure>']
        for n in g["neighbours"]:
            cells.append(f'<figure><img src="data:image/jpeg;base64,{n["image"]}"><figcaption>{n["sim"]:.3f}'
                         f'<br>{_e(n["caption"])}</figcaption></figure>')
        rows.append(f'<div class="gallery-row"><span class="side">{_e(g["side"])}</span>{"".join(cells)}</div>')
    return "".join(rows)


# ---------------------------------------------------------------------- study 2

def plot_contamination(s2: dict) -> str:
    plt = _fig()
    rows = [r for r in s2["contamination"] if r.get("estimated_share") is not None]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["true_share"] * 100 for r in rows], 0.4, label="planted (ground truth)", color="#bbbbbb")
    est = [r["estimated_share"] * 100 for r in rows]
    lo = [max(0, e - (r["ci"][0] * 100 if r.get("ci") else e)) for e, r in zip(est, rows)]
    hi = [max(0, (r["ci"][1] * 100 if r.get("ci") else e) - e) for e, r in zip(est, rows)]
    ax.bar(x + 0.2, est, 0.4, yerr=[lo, hi], capsize=3, label="classifier estimate (95% CI)", color="#2ca02c")
    ax.set_xticks(x, [r["set"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("% of the opposite domain")
    ax.set_title("Domain contamination (strict threshold)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_domain_bars(s2: dict) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    models = ["full", "natural-only"]
    cols = [("standard", "natural"), ("standard", "rendition"), ("clean", "natural"), ("clean", "rendition")]
    x = np.arange(len(cols))
    for i, m in enumerate(models):
        a = s2["accuracy"][m]
        vals = [(a[v][g]["acc"] or 0) * 100 for v, g in cols]
        ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=m)
    ax.set_xticks(x, [f"{g}\n({v})" for v, g in cols], fontsize=8)
    ax.set_ylabel("top-1 %")
    ax.set_title("Natural-only vs full training")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_mixing(s2: dict) -> str:
    plt = _fig()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, rows, xkey, title, xlabel in (
            (axes[0], s2["sweep_a"], "rendition_share", "Sweep A: fixed total", "rendition share"),
            (axes[1], s2["sweep_b"], "added", "Sweep B: natural + k renditions", "renditions added (k)")):
        x = [r[xkey] for r in rows]
        for g, c in (("rendition", "#d62728"), ("natural", "#1f77b4")):
            ax.plot(x, [(r["accuracy"]["standard"][g]["acc"] or 0) * 100 for r in rows], marker="o", color=c, label=g)
        if any(len(r.get("rendition_by_seed") or []) > 1 for r in rows):   # domains.training_seeds: each seed's run
            for r in rows:
                ys = [v * 100 for v in r["rendition_by_seed"] if v is not None]
                ax.scatter([r[xkey]] * len(ys), ys, color="black", s=12, zorder=3)
            title += " (dots: rendition, each training seed)"
        if xkey == "added" and len(x) > 1 and min(x) >= 0:
            ax.set_xscale("symlog", linthresh=max(1, sorted(set(x))[1] if len(set(x)) > 1 else 1))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 %")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------- study 3

def plot_dg_cg(s3: dict) -> str:
    plt = _fig()
    per_dom = [r for r in s3.get("cg_per_domain") or [] if r["heldout_classes"]["acc"] is not None]
    fig, axes = plt.subplots(1, 3 if per_dom else 2, figsize=(16 if per_dom else 11, 3.4))
    a = s3["accuracy"]
    names = [n for n in ["natural-only", "leave-out-domain", "cg-low", "cg-high", "seen-in-domain"] if n in a]
    vals = [(a[n]["D_heldout_classes"]["acc"] or 0) * 100 for n in names]
    axes[0].bar(names, vals, color=["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"][:len(names)])
    axes[0].set_ylabel("top-1 %")
    axes[0].set_title(f"{s3['test_domain']} images of held-out classes")
    reps = s3.get("replicates") or {}
    if len(s3.get("training_seeds") or []) > 1:   # every training seed's run as a dot over the first seed's bar
        for i, n in enumerate(names):
            ys = [v * 100 for v in reps.get(n, []) if v is not None]
            axes[0].scatter([i] * len(ys), ys, color="black", s=14, zorder=3)
        axes[0].set_title(f"{s3['test_domain']} images of held-out classes (dots: each training seed)")
    axes[0].tick_params(axis="x", labelsize=8)
    plt.setp(axes[0].get_xticklabels(), rotation=20, ha="right")
    rows = s3["contribution"]
    axes[1].plot(range(1, len(rows) + 1), [(r["accuracy"]["D_heldout_classes"]["acc"] or 0) * 100 for r in rows],
                 marker="o")
    axes[1].set_xticks(range(1, len(rows) + 1), ["+" + r["domains"][-1] for r in rows], fontsize=8)
    axes[1].set_title("Domains added one by one")
    axes[1].set_ylabel("top-1 % (held-out classes)")
    if per_dom:   # each domain's own CG high run vs natural-only, on that domain's held-out classes
        x = np.arange(len(per_dom))
        for off, key, lab, col in ((-0.2, "natural_only_heldout_classes", "natural-only", "#7f7f7f"),
                                   (0.2, "heldout_classes", "CG high (C removed from this domain)", "#2ca02c")):
            axes[2].bar(x + off, [(r[key]["acc"] or 0) * 100 for r in per_dom], width=0.4, label=lab, color=col)
        axes[2].set_xticks(x, [r["domain"] for r in per_dom], fontsize=8)
        axes[2].set_title("Held-out classes, per domain")
        axes[2].legend(fontsize=7)
    return _png(fig)


def plot_cka(s3: dict) -> str:
    """Left: domain x domain mean linear CKA (over layers); middle: the same for neuron
    sharing; right: linear CKA per layer for every pair."""
    from clipaudit.studies.dg_cg import mean_over_layers

    plt = _fig()
    mech = s3.get("mechanistic") or {}
    pairs = [p for p in mech.get("pairs") or [] if p.get("layers")]
    if not pairs:
        return "<p>No mechanistic similarity computed.</p>"
    doms = list(mech["domains"])
    layers = [l["layer"] for l in pairs[0]["layers"]]

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.9 + 0.45 * max(len(doms), len(pairs)) + 1.2))
    if s3.get("mechanistic_test_sets"):
        fig.suptitle(f"class means of {', '.join(s3['mechanistic_test_sets'])}", fontsize=9)
    for ax, key, title in ((axes[0], "cka_linear", "linear CKA (mean over layers)"),
                           (axes[1], "neuron_sharing", "neuron sharing (Jaccard, mean over layers)")):
        m = np.eye(len(doms))
        for p in pairs:
            i, j = doms.index(p["domains"][0]), doms.index(p["domains"][1])
            v = mean_over_layers(p, key)
            m[i, j] = m[j, i] = np.nan if v is None else v
        _heatmap(ax, m, doms, doms, title)
    def at(pair, layer):
        v = next((l["cka_linear"] for l in pair["layers"] if l["layer"] == layer), None)
        return np.nan if v is None else v   # 0.0 is a value, not a missing one

    per_layer = np.array([[at(p, L) for L in layers] for p in pairs], dtype=float)
    _heatmap(axes[2], per_layer, [" vs ".join(p["domains"]) for p in pairs],
             [str(L).replace("visual.", "") for L in layers], "linear CKA per layer")
    fig.tight_layout()
    return _png(fig)


def _heatmap(ax, m: np.ndarray, rows: list[str], cols: list[str], title: str) -> None:
    ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if m[i, j] < 0.6 else "k")
    ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------------- study 4

def plot_backgrounds(s4: dict) -> str:
    """Two figures: the effective-robustness scatter, and one bar per checkpoint (as tall as
    the run has checkpoints: the demo has about 45, whose labels must stay readable)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for fam in ("CLIP", "supervised"):
        pts = [(r["common"]["acc"], r["counter"]["acc"], r["model"]) for r in s4["rows"] if r["family"] == fam
               and r["common"]["acc"] is not None]
        if not pts:
            continue
        x, y, names = zip(*pts)
        ax.scatter(np.array(x) * 100, np.array(y) * 100, label=fam, color=PALETTE[fam], s=18)
        f = s4["fits"].get(fam, {})
        if "slope" in f:
            xs = np.linspace(min(x), max(x), 10)
            ax.plot(xs * 100, (f["slope"] * xs + f["intercept"]) * 100, color=PALETTE[fam], lw=1)
    lim = [0, 100]
    ax.plot(lim, lim, "k:", lw=0.8, label="no drop")
    ax.set_xlabel("common-background accuracy %")
    ax.set_ylabel("counter-background accuracy %")
    ax.set_title("Effective robustness")
    ax.legend(fontsize=8)
    scatter = _png(fig)
    rows = sorted(s4["rows"], key=lambda r: (r["family"], r["model"]), reverse=True)   # top to bottom
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.2 * len(rows)))
    ax.barh([r["model"] for r in rows], [r["drop_points"] or 0 for r in rows],
            color=[PALETTE[r["family"]] for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("drop = common − counter (points)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Background reliance, per checkpoint")
    fig.tight_layout()
    return scatter + _png(fig)


# ---------------------------------------------------------------------- page

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;background:#fff}
h1{margin-bottom:0} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4} .yes{background:#d9f2d9} .no{background:#f9d6d5} .na{background:#eee}
.plot{max-width:100%;margin:6px 0} .gallery-row{display:flex;align-items:flex-start;gap:6px;margin:6px 0}
.gallery-row img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccc}
figure{margin:0;width:92px;font-size:10px} .side{writing-mode:vertical-rl;font-size:11px;color:#666}
.muted{color:#777;font-size:12px} code{background:#f4f4f4;padding:1px 3px}
"""


def _verdict(reproduced: bool | None) -> tuple[str, str]:
    """(CSS class, word) of a finding's verdict."""
    if reproduced is True:
        return "yes", "reproduced"
    return ("no", "NOT reproduced") if reproduced is False else ("na", "undetermined")


def _findings_table(findings: list[dict]) -> str:
    rows = []
    for f in findings:
        cls, word = _verdict(f["reproduced"])
        rows.append(f'<tr class="{cls}"><td>{_e(f["study"])}</td><td>{_e(f["claim"])}</td><td><b>{word}</b></td>'
                    f'<td>{_e(f["detail"])}</td></tr>')
    return ("<table><tr><th>study</th><th>finding (direction)</th><th>verdict</th><th>measured</th></tr>"
            + "".join(rows) + "</table>")


def _lineage_table(report: dict) -> str:
    rows = []
    seen = set()

    def walk(o):
        if isinstance(o, dict):
            if "keys_sha256" in o and "rule" in o and o.get("uri") not in seen:
                seen.add(o.get("uri"))
                rows.append(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(report["studies"])
    body = "".join(f"<tr><td>{_e(str(r.get('uri', '')).rsplit('/', 1)[-1])}</td><td>{_e(r['rule'])}</td>"
                   f"<td>{_e(r.get('parameters', {}))}</td><td>{r.get('count')}</td>"
                   f"<td><code>{_e(r['keys_sha256'][:12])}</code></td><td>{_e(str(r.get('parent') or ''))[-60:]}</td></tr>"
                   for r in rows)
    return ("<table><tr><th>subset</th><th>rule</th><th>parameters</th><th>size</th><th>keys sha256</th>"
            "<th>parent</th></tr>" + body + "</table>")


def _models_table(report: dict) -> str:
    rows = "".join(
        f"<tr><td>{_e(n)}</td><td>{_e(m.get('mode'))}</td><td>{_e(m.get('resolved_counts'))}</td>"
        f"<td>{m.get('step')}</td><td>{_fmt(m.get('loss_first'))} → {_fmt(m.get('loss_last'))}</td>"
        f"<td>{_fmt(m.get('samples_per_s'), 0)}</td></tr>" for n, m in report["models"].items())
    return ("<table><tr><th>model</th><th>mode</th><th>subset counts</th><th>steps</th><th>loss</th>"
            "<th>samples/s</th></tr>" + rows + "</table>")


def _fmt(x, d=3):
    return "n/a" if x is None else f"{x:.{d}f}"


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.1f}"


def _per_domain(by_domain: dict | None) -> str:
    if not by_domain:
        return "n/a (no domain labels)"
    return ", ".join(f"{d} {r} ({r / n:.0%})" for d, (r, n) in by_domain.items() if n)


def _thresholds_table(thresholds: dict) -> str:
    """The domain classifier's operating points: per threshold and class, the score cut-off
    chosen for the target precision and what it achieved on held-out labels."""
    rows = []
    for level, t in thresholds.items():
        for cls, c in (t.get("per_class") or {}).items():
            rows.append(f"<tr><td>{_e(level)}</td><td>{_e(cls)}</td><td>{_fmt(c.get('target_precision'), 2)}</td>"
                        f"<td>{_fmt(c.get('threshold'))}</td><td>{_fmt(c.get('precision'))}</td>"
                        f"<td>{_fmt(c.get('recall'))}</td><td>{_e(c.get('predicted_positive'))} / "
                        f"{_e(c.get('positives'))}</td><td>{'yes' if c.get('reachable') else 'no'}</td></tr>")
    return ("<table><tr><th>threshold</th><th>class</th><th>target precision</th><th>score cut-off</th>"
            "<th>precision</th><th>recall</th><th>predicted / labelled</th><th>target reachable</th></tr>"
            + "".join(rows) + "</table>") if rows else ""


def _per_class_html(s3: dict) -> str:
    """Study 3 per held-out class: every mixture's accuracy on the test domain's images of the
    class and each verdict's difference, so a reader sees which classes carry a verdict."""
    from clipaudit.studies.dg_cg import COMPARISONS, effect_key

    pc = s3.get("per_class")
    if not pc:
        return ""
    verdict_of = {effect_key(a, b): v for v, (a, b) in COMPARISONS.items()}
    mixes = list(pc["accuracy"])
    effects = list(pc["effects"])
    head = "".join(f"<th>{_e(m)}</th>" for m in mixes) + "".join(
        f"<th>{_e(verdict_of.get(k, k))}: {_e(k.replace(' - ', ' − '))} (pts)</th>" for k in effects)
    rows = "".join(
        f"<tr><td>{_e(c)}</td>" + "".join(f"<td>{_pct(pc['accuracy'][m][c])}</td>" for m in mixes)
        + "".join(f"<td>{_signed(pc['effects'][k][c])}</td>" for k in effects) + "</tr>"
        for c in pc["classes"])
    return ("<h3>Per held-out class</h3><p class='muted'>Accuracy on the test domain's images of each held-out "
            "class (mean over training seeds) and each verdict's difference per class. Each class has a fraction "
            "of the verdict's images, so its difference is much noisier; a verdict that one or two classes carry "
            "can change with the training seed. A class that the seen-in-domain model, which saw it drawn in the "
            "test domain, still misses carries little signal about generalisation.</p>"
            f"<table><tr><th>class</th>{head}</tr>{rows}</table>")


def _noise_html(noise: dict | None) -> str:
    """The full model against its reruns with other training seeds: how far one run's
    numbers move when only the seed changes."""
    if not noise:
        return ""
    runs = noise["runs"]
    head = "".join(f"<th>{_e(n)} (seed {s})</th>" for n, s in zip(runs, noise["seeds"]))
    diffs = "".join(f"<th>{_e(n)} − {_e(runs[0])} (95% CI over images)</th>" for n in runs[1:])
    rows = []
    for r in noise["rows"]:
        cells = "".join(f"<td>{_pct(a['acc'])}</td>" for a in r["acc"].values())
        dcells = "".join(f"<td>{d['diff_points']:+.1f} ({d['ci'][0]:+.1f}..{d['ci'][1]:+.1f})</td>"
                         for d in r["vs_first"].values())
        rows.append(f"<tr class=\"{'no' if r['beyond_image_ci'] else ''}\"><td>{_e(r['test'])}</td>{cells}{dcells}"
                    f"<td>{r['range_points']:.1f}</td></tr>")
    return ("<h3>Training noise</h3>"
            f"<p>{_e(noise['summary'])}. An effect smaller than this spread can change sign with the training seed "
            "even where its interval over images excludes zero; rows in red: a rerun differs by more than its "
            "interval over images allows.</p>"
            f"<table><tr><th>test set</th>{head}{diffs}<th>spread (points)</th></tr>{''.join(rows)}</table>")


def _section(title: str, body: list[str]) -> str:
    return f"<h2>{_e(title)}</h2>" + "".join(body)


def render_html(report: dict) -> str:
    s = report["studies"]
    parts = [f"<h1>clipaudit study report: {_e(report['name'])}</h1>",
             f"<p class='muted'>collection {_e(report['collection']['location'])} (preset "
             f"{_e(report['collection']['preset'])}, seed {report['collection']['seed']}); study seed {report['seed']}; "
             f"total {report['timings']['total_s']} s. Verdicts are computed from the data in report.json.</p>",
             "<h2>Findings</h2>", _findings_table(report["findings"]),
             "<p class='muted'>Intervals are 95% bootstrap/Wilson intervals over test images for this run's "
             "seed; they do not include training noise (measured below where <code>training.noise_runs</code> "
             "is set). <code>clipaudit demo --seeds 3</code> repeats the run and counts in how many seeds each "
             "direction holds.</p>", _noise_html(report.get("training_noise"))]
    if "similarity" in s:
        s1 = s["similarity"]
        parts.append(_section("Study 1 — train–test similarity", [
            plot_similarity_histograms(s1), plot_accuracy_vs_similarity(s1), plot_pruning(s1),
            "<h3>Similarity-matched pruning</h3><table><tr><th>subset</th><th>kept</th><th>removed</th>"
            "<th>removed per domain (share of the domain in the pool)</th></tr>" +
            "".join(f"<tr><td>{_e(m['name'])}</td><td>{m['kept']}</td><td>{m['removed']}</td>"
                    f"<td>{_e(_per_domain(m.get('removed_by_domain')))}</td></tr>"
                    for m in s1["matched"]["subsets"]) + "</table>",
            "<h3>Nearest-neighbour gallery</h3><p class='muted'>Test images with the lowest and highest "
            "sim(t, Train), each beside its top-5 training neighbours (similarity, caption).</p>", gallery_html(s1)]))
    if "domains" in s:
        s2 = s["domains"]
        clf = s2["classifier"]
        parts.append(_section("Study 2 — domain contamination", [
            f"<p>Classifier <code>{_e(clf.get('classifier_id', ''))}</code>, labels from "
            f"{_e(clf.get('labels_source'))}.</p>" + _thresholds_table(clf.get("thresholds") or {}),
            plot_contamination(s2), plot_domain_bars(s2), plot_mixing(s2)]))
    if "dg_cg" in s:
        s3 = s["dg_cg"]
        parts.append(_section("Study 3 — domain vs compositional generalisation", [
            f"<p>Test domain <b>{_e(s3['test_domain'])}</b>, held-out classes {_e(', '.join(s3['held_out_classes']))}; "
            + (f"a second class fold holds out {_e(', '.join(s3['class_folds'][1]))}, and the DG/CG verdicts and "
               "the per-domain CG bars pool both folds' images (the other plots show the first fold); "
               if len(s3.get("class_folds") or []) > 1 else "")
            + f"every mixture has {s3['size']} images; renditions in each: "
            + _e(", ".join(f"{k} {v}" for k, v in (s3.get("renditions_per_mixture") or {}).items())) + "; "
            + (f"every mixture trained once per training seed ({_e(', '.join(map(str, s3['training_seeds'])))}), "
               "verdicts over seeds.</p>" if len(s3.get("training_seeds") or []) > 1 else
               "one training run per mixture: a verdict's interval covers test images, not retraining.</p>"),
            plot_dg_cg(s3), _per_class_html(s3), plot_cka(s3)]))
    if "backgrounds" in s:
        s4 = s["backgrounds"]
        share, pool = s4.get("supervised_common_share"), s4.get("pool_common_share")
        parts.append(_section("Study 4 — spurious backgrounds", [
            f"<p>The ImageNet-style classifiers train on natural images of which {_pct(share)} sit on their "
            f"class's common background (curated, like ImageNet); the CLIP pool has {_pct(pool)}.</p>",
            plot_backgrounds(s4),
            "<table><tr><th>model</th><th>family</th><th>common</th><th>counter</th><th>drop (pts)</th></tr>" +
            "".join(f"<tr><td>{_e(r['model'])}</td><td>{r['family']}</td><td>{_pct(r['common']['acc'])}</td>"
                    f"<td>{_pct(r['counter']['acc'])}</td><td>{_fmt(r['drop_points'], 1)}</td></tr>" for r in s4["rows"])
            + "</table>"]))
    parts.append(_section("Models", [_models_table(report)]))
    parts.append(_section("Lineage of every subset", [_lineage_table(report)]))
    t = report["timings"]
    parts.append(_section("Timings", ["<table>" + "".join(f"<tr><td>{_e(k)}</td><td>{v:.1f} s</td></tr>"
                                                          for k, v in t["per_study_s"].items()) + "</table>"]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>clipaudit — {_e(report['name'])}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def render_seeds_html(summary: dict) -> str:
    """The page of ``clipaudit demo --seeds N``: every finding, in how many seeds its
    direction held, each seed's verdict and measurement, and the mean with a t-interval
    over seeds (the interval that includes training noise)."""
    seeds = summary["seeds"]
    head = "".join(f"<th>seed {s}</th>" for s in seeds)
    rows = []
    for f in summary["findings"]:
        k, n = f["reproduced_in"], f["seeds"]
        cls = "yes" if k == n else "no" if k == 0 else "na"
        cells = []
        for ps in f.get("per_seed", []):
            word = _verdict(ps["reproduced"])[1]
            cells.append(f'<td><b>{word}</b><br><span class="muted">{_e(ps["detail"])}</span></td>')
        mean = "–" if f["mean"] is None else (
            f"{f['mean']:+.2f}" + ("" if f["ci"][0] is None else f" ({f['ci'][0]:+.2f}..{f['ci'][1]:+.2f})"))
        rows.append(f'<tr class="{cls}"><td>{_e(f["study"])}</td><td>{_e(f["claim"])}</td>'
                    f"<td><b>{k}/{n}</b></td>{''.join(cells)}<td>{mean}</td></tr>")
    links = " · ".join(f'<a href="seed-{s}/report.html">seed {s}</a>' for s in seeds)
    walls = ", ".join(f"{w:.0f} s" for w in summary.get("wall_time_s", []))
    body = (f"<h1>clipaudit demo over {len(seeds)} seeds</h1>"
            f"<p class='muted'>Each seed regenerates the collection and retrains every model. Per-seed reports: "
            f"{links}. Wall time per seed in this invocation (a resumed run counts only the steps it redid): "
            f"{walls}. A verdict is computed from its seed's data (95% interval "
            f"over test images); the last column is the mean value over seeds with a 95% t-interval, which "
            f"includes training noise.</p>"
            f"<table><tr><th>study</th><th>finding (direction)</th><th>seeds</th>{head}"
            f"<th>mean over seeds (95% t-interval)</th></tr>{''.join(rows)}</table>")
    if summary.get("training_noise"):   # what retraining alone moves, per seed (training.noise_runs)
        body += ("<h3>Training noise</h3><p class='muted'>The full model rerun with another training seed, "
                 "same data: an effect smaller than these spreads can flip with the training seed alone.</p><ul>"
                 + "".join(f"<li>seed {n['seed']}: {_e(n['summary'])}</li>" for n in summary["training_noise"])
                 + "</ul>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>clipaudit — {len(seeds)} seeds</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")
