"""Study 3 — domain vs compositional generalisation.
(Kempf, Schrodi, Argus, Brox, ICML 2025.)

For a test domain D and held-out classes C, four training mixtures of equal size:
natural-only; leave-out-domain (real + the other rendition domains); CG low-diversity
(real + D without C); CG high-diversity (real + every rendition domain, C removed from
D only). Accuracy on D's images of C; per-domain contribution when domains are added
one by one; CKA and neuron sharing between domains per layer.

Rendition domains enter a mixture whole and natural images fill it to the common size
(``size``; default every natural image of the pool), as in the paper: CG high holds all of
CG low's renditions plus every other domain, so the two differ only in the added domains.

A fifth mixture, *seen in D* (real + D with every class, same size as CG low), is the
like-for-like reference for "unseen classes are harder": the same test images (D's
images of C), one model that saw C drawn in D and one that did not. Comparing C with
the other classes inside one model would mix class difficulty into the answer.

``training_seeds`` trains the five mixtures once per seed: retraining one mixture on the
same data with another seed moves its held-out accuracy by as much as the effects (on the
demo's budget), so with several seeds each verdict rests on the mean effect and a
t-interval over seeds rather than on one run's interval over test images.

``class_folds: 2`` runs the study a second time with the other classes held out (natural-only
and leave-out-domain do not depend on the held-out classes, so both folds share them) and pools
the two folds' images in every DG/CG verdict and in the per-domain CG high accuracies: each class
is held out once, so a verdict no longer rests on the few per-class outcomes of one fold, which
move with the training seed. The table, the contribution curve and the CKA are the first fold's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipaudit.errors import InvalidInput
from clipaudit.studies.context import (StudyContext, accuracy, direction, finding, format_effect,
                                      independent_difference, jackknife_interval, over_replicates,
                                      paired_difference)


# the DG/CG verdicts: the two mixtures each compares (first minus second) on D's images of the held-out classes
COMPARISONS = {"DG": ("leave-out-domain", "natural-only"), "CG": ("cg-high", "cg-low"),
               "CG weaker than DG": ("leave-out-domain", "cg-low"),
               "unseen classes harder": ("seen-in-domain", "cg-low")}


def effect_key(a: str, b: str) -> str:
    """The key of a comparison's per-class differences in ``per_class["effects"]``."""
    return f"{a} - {b}"


def run(ctx: StudyContext, base: dict) -> dict:
    cfg, d = ctx.cfg.dg_cg, ctx.cfg.data
    coll = ctx.coll
    D = cfg.test_domain
    C = list(cfg.held_out_classes or coll.held_out_classes)
    renditions = [s for s in coll.rendition_styles]
    meta = ctx.metadata(d.train)
    test_D = f"test_{D}"
    others = [r for r in renditions if r != D]
    folds = class_folds(C, list(coll.classes), cfg.class_folds)
    tags = ["" if f == 0 else f"-f{f}" for f in range(len(folds))]   # the first fold keeps the plain names

    def keys(mask) -> list[str]:
        return meta.loc[mask, "key"].astype(str).tolist()

    def renditions_without(classes, dom: str):   # CG high's renditions: every domain, ``classes`` removed from ``dom`` only
        return meta["domain"].isin(renditions) & ~((meta["domain"] == dom) & meta["class"].isin(classes))

    real = keys(meta["domain"] == "natural")
    other_r = keys(meta["domain"].isin(others))
    N = cfg.size or len(real)
    m_real = ctx.manifest("s3-real", real, rule="domain-split", parameters={"domain": "natural"})
    m_others = ctx.manifest("s3-other-renditions", other_r, rule="domain-split", parameters={"domains": others})
    d_all = keys(meta["domain"] == D)
    m_d_all = ctx.manifest("s3-d-all", d_all, rule="domain-split", parameters={"domain": D})

    def with_real(manifest: str, size: int, name: str, count: int | None = None) -> list[dict]:
        """A rendition component of ``size`` keys in full (or ``count`` of them), natural images filling
        the mixture to N: every mixture has the same size and differs from natural-only only in what
        replaces real images."""
        return [{"manifest": m_real, "count": N - (size if count is None else count), "name": "real"},
                {"manifest": manifest, "count": count, "name": name}]

    # CG high-diversity per domain (STUDIES.md: "Quickdraw fails on unseen classes"): for each listed
    # domain, every rendition domain with the held-out classes removed from that domain only
    cg_doms = list(dict.fromkeys(cfg.cg_domains if cfg.cg_domains is not None
                                 else [D] + (["quickdraw"] if "quickdraw" in renditions else [])))
    evaluated = set(d.id_tests) | set(d.ood_tests)
    doms = list(dict.fromkeys(cfg.mechanistic_domains))   # the mechanistic probe's domains and images
    default_sets = [_test_set_of(dom) for dom in doms]
    probe_sets = list(cfg.mechanistic_test_sets or default_sets)
    missing = [t for t in probe_sets if t not in coll.splits]
    if missing:
        raise InvalidInput(f"dg_cg.mechanistic_test_sets {missing} are not splits of the collection "
                           f"({', '.join(coll.splits)})")
    found = set().union(*(set(ctx.metadata(t)["domain"].astype(str)) for t in probe_sets))
    absent = [dom for dom in doms if dom not in found]
    if absent:
        raise InvalidInput(f"dg_cg.mechanistic_domains {absent} have no images in {', '.join(probe_sets)}")
    bad = [x for x in cg_doms if x not in renditions or _test_set_of(x) not in evaluated]
    if bad:
        raise InvalidInput(f"dg_cg.cg_domains {bad} need to be rendition domains of the pool "
                           f"({', '.join(renditions)}) with a test set test_<domain> among the test sets")

    def design(Cf: list[str], tag: str) -> dict:
        """One class fold's manifests and mixtures: ``Cf`` held out of the test domain."""
        d_minus_c = keys((meta["domain"] == D) & ~meta["class"].isin(Cf))
        all_r_minus_c = keys(renditions_without(Cf, D))
        n_dc = len(d_minus_c)
        if n_dc == 0 or len(other_r) == 0 or N > len(real) or len(all_r_minus_c) >= N:
            raise InvalidInput(f"dg_cg needs {D} images outside the held-out classes, other rendition domains and a "
                               f"mixture size above the renditions of CG high and within the natural images; the pool "
                               f"has {n_dc}, {len(other_r)} (CG high: {len(all_r_minus_c)} renditions) and {len(real)} "
                               f"natural, the size is {N}")
        own = {"d_minus_c": ctx.manifest(f"s3-d-minus-c{tag}", d_minus_c, rule="domain-split",
                                       parameters={"domain": D, "without_classes": Cf}),
             "all_minus_c": ctx.manifest(f"s3-all-renditions-minus-c{tag}", all_r_minus_c, rule="domain-split",
                                         parameters={"domains": renditions, "without_classes_in": D, "classes": Cf})}
        # the paper's mixtures (STUDIES.md): rendition domains enter whole, the natural part is subsampled
        # to equal size; CG high holds CG low's D-without-C and adds every other domain
        mixes = {
            "natural-only": [{"manifest": m_real, "count": N, "name": "real"}],
            "leave-out-domain": with_real(m_others, len(other_r), "other-renditions"),
            "cg-low": with_real(own["d_minus_c"], n_dc, f"{D}-minus-C"),
            "cg-high": with_real(own["all_minus_c"], len(all_r_minus_c), "renditions-minus-C-in-D"),
            "seen-in-domain": with_real(m_d_all, len(d_all), D, n_dc),   # like CG low, but C drawn in D too
        }
        cg_mixes = {}
        for dom in cg_doms:
            if dom == D:
                continue   # the study's own CG high run
            ks = keys(renditions_without(Cf, dom))
            if len(ks) >= N:
                raise InvalidInput(f"dg_cg.cg_domains: CG high for {dom} holds {len(ks)} renditions, not fewer than "
                                   f"the mixture size {N}")
            man = ctx.manifest(f"s3-all-renditions-minus-c-in-{dom}{tag}", ks, rule="domain-split",
                               parameters={"domains": renditions, "without_classes_in": dom, "classes": Cf})
            cg_mixes[f"s3-cg-high-{dom}{tag}"] = {"mixture": with_real(man, len(ks), f"renditions-minus-C-in-{dom}")}
        return {"manifests": own, "mixes": mixes, "cg_mixes": cg_mixes}

    designs = [design(Cf, tag) for Cf, tag in zip(folds, tags)]
    mixes = designs[0]["mixes"]
    # every subset's lineage: the folds' shared ones, then each fold's own (a second fold's carry -f1)
    manifests = {"real": m_real, "others": m_others, "d_all": m_d_all,
                 **{f"{k}{tag}": u for dz, tag in zip(designs, tags) for k, u in dz["manifests"].items()}}
    # per-domain contribution (the first fold): real + domains added one by one (C removed from D), in full
    contrib_rows, adds = [], []
    added: list[str] = []
    for dom in [D, *others]:
        added.append(dom)
        ks = keys((meta["domain"].isin([a for a in added if a != D])) | ((meta["domain"] == D) & ~meta["class"].isin(C))
                  if D in added else meta["domain"].isin(added))
        man = ctx.manifest(f"s3-add-{'-'.join(added)}", ks, rule="domain-split",
                           parameters={"domains": list(added), "without_classes_in": D, "classes": C})
        name = f"s3-add-{len(added)}"
        adds.append((name, {"mixture": with_real(man, len(ks), "+".join(added))}))
        contrib_rows.append({"name": name, "domains": list(added), "renditions": len(ks)})
    # the five mixtures once per training seed and class fold (the first seed's runs of the first fold keep
    # the plain names, so a config without training_seeds and class_folds is the one-seed, one-fold study);
    # the per-domain contribution is the first seed's, the per-domain CG high runs are the first seed's
    seeds = list(cfg.training_seeds or [ctx.seed])

    def label(name: str, s: int, f: int = 0) -> str:
        return f"s3-{name}{tags[f]}" if s == seeds[0] else f"s3-{name}{tags[f]}-t{s}"

    cg_all = [item for dz in designs for item in dz["cg_mixes"].items()]
    ctx.prefetch([(label(n, s, f), {"mixture": c}, {"seed": s})
                  for s in seeds for f, dz in enumerate(designs) for n, c in dz["mixes"].items()]
                 + [(n, sub, {"seed": seeds[0]}) for n, sub in [*adds, *cg_all]])
    replicate_runs = {s: [{name: ctx.train(label(name, s, f), {"mixture": comps}, seed=s)
                           for name, comps in dz["mixes"].items()} for f, dz in enumerate(designs)]
                      for s in seeds}
    replicate_evals = {s: [{n: ctx.evaluate_standard(label(n, s, f), r) for n, r in rs.items()}
                           for f, rs in enumerate(by_fold)] for s, by_fold in replicate_runs.items()}
    runs, evals = dict(replicate_runs[seeds[0]][0]), dict(replicate_evals[seeds[0]][0])
    for name, sub in [*adds, *cg_all]:
        runs[name] = ctx.train(name, sub, seed=seeds[0])
        evals[name] = ctx.evaluate_standard(name, runs[name])

    def in_dc(p):   # D's images of the held-out classes C: every DG/CG number is measured on them
        return (p["test_set"] == test_D) & p["class"].isin(C)

    def acc_dc(p):
        return accuracy(p, in_dc(p))

    def acc_d_seen(p):
        return accuracy(p, (p["test_set"] == test_D) & ~p["class"].isin(C))

    table = {n: {"D_heldout_classes": acc_dc(p), "D_seen_classes": acc_d_seen(p),
                 "per_test": {t: accuracy(p, p["test_set"] == t) for t in sorted(p["test_set"].unique())}}
             for n, p in evals.items()}
    for row in contrib_rows:
        row["accuracy"] = table[row["name"]]

    def pooled(frames: list[pd.DataFrame], test_set: str) -> pd.DataFrame:
        """Each fold's predictions on ``test_set``'s images of that fold's held-out classes, together."""
        return pd.concat([p[(p["test_set"] == test_set) & p["class"].isin(folds[f])] for f, p in enumerate(frames)],
                         ignore_index=True)

    cg_per_domain = []
    first = replicate_evals[seeds[0]]
    for dom in cg_doms:
        names = ["cg-high" if dom == D else f"s3-cg-high-{dom}{tags[f]}" for f in range(len(folds))]
        high = pooled([first[f][n] if dom == D else evals[n] for f, n in enumerate(names)], _test_set_of(dom))
        nat = pooled([first[f]["natural-only"] for f in range(len(folds))], _test_set_of(dom))
        on_dom = evals[names[0]]["test_set"] == _test_set_of(dom)
        cg_per_domain.append({
            "domain": dom, "run": label("cg-high", seeds[0]) if dom == D else names[0],
            "heldout_classes": accuracy(high),
            "seen_classes": accuracy(evals[names[0]], on_dom & ~evals[names[0]]["class"].isin(C)),
            "natural_only_heldout_classes": accuracy(nat),
            # which held-out classes the domain fails on (a verdict can follow the classes more than the domain)
            "heldout_per_class": accuracy_per_class(high, [c for f in folds for c in f]),
        })

    # mechanistic similarity between every pair of domains, per layer (the CG high-diversity model, which
    # saw every domain); one evaluation encodes the probe's images once. As in the paper's script, also
    # on the held-out classes alone and on the seen classes alone. With ``mechanistic_test_sets`` (the
    # demo: test_domains, backgrounds balanced per class) the default test sets are probed too, for comparison
    mech = mech_test_sets = None
    if len(doms) >= 2:
        subsets = {"held-out": list(C), "seen": [c for c in coll.classes if c not in C]}

        def probe(test_sets: list[str], tag: str) -> dict | None:
            ev = ctx.evaluate("s3-cg-high", runs["cg-high"], test_sets,
                              spec={"mechanistic": {"domains": doms, "column": "domain",
                                                    "class_subsets": {k: v for k, v in subsets.items() if v}}},
                              tag=tag)
            return ctx.report_json(ev).get("mechanistic")

        mech = probe(probe_sets, "-mech")
        if probe_sets != default_sets:
            mech_test_sets = probe(default_sets, "-mech-test-sets")

    findings = []
    # per training seed and mixture: D's images of the held-out classes, every class fold's together
    dc = {s: {n: pooled([by_fold[f][n] for f in range(len(folds))], test_D) for n in mixes}
          for s, by_fold in replicate_evals.items()}

    every_held_out = [c for f in folds for c in f]
    # each held-out class on its own (mean over training seeds): a verdict on a few classes can rest on one or two
    by_seed = {n: [accuracy_per_class(dc[s][n], every_held_out) for s in seeds] for n in mixes}
    per_class = {n: {c: _mean([acc[c] for acc in accs]) for c in every_held_out} for n, accs in by_seed.items()}
    effects = {}

    def diff(verdict: str) -> tuple[dict, str]:
        """A verdict's effect (over training seeds) and the sentence that splits it over the held-out classes."""
        a, b = COMPARISONS[verdict]
        per = effects[effect_key(a, b)] = {c: _points(per_class[a][c], per_class[b][c]) for c in every_held_out}
        return over_replicates([paired_difference(dc[s][a], dc[s][b], seed=ctx.seed) for s in seeds]), \
            _per_class_sentence(per)
    where = f"on {D} images of held-out classes" + (
        f" ({len(folds)} class folds pooled: {' | '.join(', '.join(f) for f in folds)}; each class held out once)"
        if len(folds) > 1 else "")
    dg, dg_classes = diff("DG")
    findings.append(finding("dg_cg", "more domain diversity helps domain generalisation (leave-out-domain vs natural-only)",
                            direction(dg["ci"]), dg["diff_points"],
                            f"{where}: {format_effect(dg)}; {dg_classes}"))
    cg, cg_classes = diff("CG")
    findings.append(finding("dg_cg", "more domain diversity helps compositional generalisation (CG high vs low)",
                            direction(cg["ci"]), cg["diff_points"],
                            f"{where}: {format_effect(cg)}; {cg_classes}"))
    weaker, weaker_classes = diff("CG weaker than DG")
    findings.append(finding("dg_cg", "compositional generalisation is weaker than domain generalisation (leave-out-domain vs CG low)",
                            direction(weaker["ci"]), weaker["diff_points"],
                            f"{where}, a model that never saw {D} minus one that saw {D} "
                            f"without those classes: {format_effect(weaker)} (STUDIES.md: CG can be weaker than DG when "
                            f"training holds a subset of the test domain); {weaker_classes}"))
    seen = table["cg-low"]["D_seen_classes"]["acc"]
    held = table["cg-low"]["D_heldout_classes"]["acc"]
    unseen, unseen_classes = diff("unseen classes harder")
    findings.append(finding("dg_cg", "generalising to unseen classes in a seen domain is harder than to seen classes",
                            direction(unseen["ci"]), unseen["diff_points"],
                            f"{where}: a model that saw them drawn in {D} minus the CG "
                            f"low-diversity model that did not: {format_effect(unseen)} (same images, same mixture size); "
                            f"inside the (first fold's) CG low model, {D} seen classes {_pct(seen)} vs held-out {_pct(held)} "
                            f"(different classes, so class difficulty is mixed in); {unseen_classes}"))
    cka_finding = _quickdraw_cka_finding(mech, mech_test_sets, probe_sets)
    if cka_finding:
        findings.append(cka_finding)
    fails = _quickdraw_fails_finding(cg_per_domain, n_classes=len(coll.classes), folds=len(folds))
    if fails:
        findings.append(fails)
    return {
        "test_domain": D, "held_out_classes": C, "size": N,
        "renditions_per_mixture": {n: N - comps[0]["count"] for n, comps in mixes.items()},
        "mixtures": {n: {"components": comps, "counts": runs[n]["resolved_counts"]}
                     for n, comps in mixes.items()},
        "manifests": {k: ctx.lineage(u) for k, u in manifests.items()},
        "accuracy": table, "contribution": contrib_rows, "mechanistic": mech, "findings": findings,
        # the lowest other domain's mean linear CKA minus quickdraw's, with its jackknife interval over
        # classes: on every class (the verdict's) and on each class subset of ``mechanistic``
        "quickdraw_cka_gap": {"all": quickdraw_cka_gap(mech), **cka_gap_per_class_subset(mech)},
        # the probe's test sets; when they are not each domain's own test_<domain>, the mechanistic section and
        # the gap (all classes) on those default test sets too, reported beside the verdict
        "mechanistic_test_sets": probe_sets,
        "mechanistic_on_default_test_sets": mech_test_sets,
        "quickdraw_cka_gap_on_default_test_sets": None if mech_test_sets is None else quickdraw_cka_gap(mech_test_sets),
        # CG high-diversity per domain (the first training seed): accuracy on that domain's images of the
        # held-out classes (every class fold's), of the first fold's seen classes, and natural-only's on the
        # same held-out images
        "cg_per_domain": cg_per_domain,
        "training_seeds": seeds,
        # the held-out classes of each fold (``class_folds``); the first is ``held_out_classes``
        "class_folds": folds,
        # held-out-class accuracy on D of every mixture, one value per training seed (every fold's images)
        "replicates": {n: [accuracy(dc[s][n])["acc"] for s in seeds] for n in mixes},
        # per held-out class (mean over training seeds): every mixture's accuracy on D's images of the
        # class, and each verdict's difference in points ("a - b", the mixtures it compares)
        "per_class": {"classes": every_held_out, "accuracy": per_class, "effects": effects},
    }


def _quickdraw_fails_finding(rows: list[dict], n_classes: int, folds: int = 1) -> dict | None:
    """Quickdraw's CG high-diversity accuracy on its held-out classes against the lowest
    other domain's (different images: an unpaired interval); None without quickdraw and
    another domain."""
    accs = {r["domain"]: r["heldout_classes"] for r in rows if r["heldout_classes"]["acc"] is not None}
    if "quickdraw" not in accs or len(accs) < 2:
        return None
    nxt = min((dom for dom in accs if dom != "quickdraw"), key=lambda dom: accs[dom]["acc"])
    gap = independent_difference(accs[nxt], accs["quickdraw"])
    by_dom = {r["domain"]: r for r in rows}
    return finding(
        "dg_cg", "quickdraw fails on unseen classes (CG high-diversity per domain)",
        direction(gap["ci"]), gap["diff_points"],
        "each domain's CG high-diversity model (every rendition domain, the held-out classes removed from that "
        "domain only) on that domain's images of the held-out classes: "
        + ", ".join(f"{dom} {_pct(a['acc'])} (natural-only {_pct(by_dom[dom]['natural_only_heldout_classes']['acc'])})"
                    for dom, a in sorted(accs.items(), key=lambda kv: kv[1]["acc"]))
        + f"; chance {_pct(1 / n_classes) if n_classes else 'n/a'}; quickdraw per held-out class: "
        + ", ".join(f"{c} {_pct(a)}" for c, a in sorted((by_dom["quickdraw"].get("heldout_per_class") or {}).items(),
                                                         key=lambda kv: -1 if kv[1] is None else kv[1]))
        + f"; the lowest other domain ({nxt}) minus quickdraw: "
        f"{gap['diff_points']:+.1f} points (95% CI {gap['ci'][0]:+.1f}..{gap['ci'][1]:+.1f}; one training run each"
        + (f" per class fold, {folds} folds pooled" if folds > 1 else "") + ", different images)")


def class_folds(held_out: list[str], classes: list[str], n: int) -> list[list[str]]:
    """The held-out classes of each fold: ``held_out`` alone (``n`` 1), or it and the other classes of
    the collection (``n`` 2), so that every class is held out once."""
    unknown = [c for c in held_out if c not in classes]
    if unknown:
        raise InvalidInput(f"dg_cg.held_out_classes {unknown} are not classes of the collection ({', '.join(classes)})")
    if n == 1:
        return [list(held_out)]
    rest = [c for c in classes if c not in held_out]
    if not rest:
        raise InvalidInput("dg_cg.class_folds 2 needs classes outside the held-out ones for the second fold")
    return [list(held_out), rest]


def _test_set_of(domain: str) -> str:
    return f"test_{domain}"


def mean_over_layers(pair: dict | None, key: str = "cka_linear") -> float | None:
    """Mean of one measure (linear CKA by default) over the layers of one domain pair
    (None when undefined). The verdict and the report's heatmaps both use it."""
    if not pair or not pair.get("layers"):
        return None
    vals = [layer[key] for layer in pair["layers"] if layer.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def mean_cka_per_domain(mech: dict | None) -> dict[str, float]:
    """Each domain's mean over its pairs with the other domains of the pair-wise mean
    linear CKA; {} unless every pair is defined (a missing pair would bias a domain's mean)."""
    pairs = (mech or {}).get("pairs") or []
    values = {tuple(p["domains"]): mean_over_layers(p) for p in pairs}
    if not values or any(v is None for v in values.values()):
        return {}
    return {d: float(np.mean([v for pair, v in values.items() if d in pair])) for d in mech["domains"]}


def quickdraw_cka_gap(mech: dict | None) -> dict | None:
    """How far quickdraw's mean linear CKA (:func:`mean_cka_per_domain`) lies below the lowest
    other domain's, with a jackknife interval over classes: the statistic is recomputed with
    each class left out of every pair (the evaluator's ``cka_linear_leave_one_out``). On ten
    synthetic classes one class moves the gap by up to about 0.1, so a bare "which domain is
    lowest" would call differences of a few hundredths. None without quickdraw or a defined
    mean for every domain; the interval is missing when the pairs do not share one class list."""
    cka = mean_cka_per_domain(mech)
    if not cka or "quickdraw" not in cka or len(cka) < 2:
        return None

    def gap(per_domain: dict[str, float]) -> float:
        return min(v for d, v in per_domain.items() if d != "quickdraw") - per_domain["quickdraw"]

    pairs = mech["pairs"]
    classes = pairs[0].get("classes") or []
    loo = []
    if all(p.get("classes") == classes for p in pairs) and all(
            len(layer.get("cka_linear_leave_one_out") or []) == len(classes)
            and None not in layer["cka_linear_leave_one_out"] for p in pairs for layer in p["layers"]):
        for i in range(len(classes)):
            left = {"domains": mech["domains"], "pairs": [
                {"domains": p["domains"], "layers": [{"cka_linear": layer["cka_linear_leave_one_out"][i]}
                                                     for layer in p["layers"]]} for p in pairs]}
            per = mean_cka_per_domain(left)
            loo.append(gap(per) if per else None)
    full = gap(cka)
    se, ci = jackknife_interval(full, loo)
    others = {d: v for d, v in cka.items() if d != "quickdraw"}
    return {"gap": full, "se": se, "ci": ci, "n_classes": len(classes), "per_domain": cka,
            "next_lowest": min(others, key=others.get), "leave_one_out": loo}


def _quickdraw_cka_finding(mech: dict | None, mech_test_sets: dict | None = None,
                           probe_sets: list[str] | None = None) -> dict | None:
    """The verdict on "quickdraw shows the lowest mechanistic similarity": the gap of
    :func:`quickdraw_cka_gap` and its interval, read like every other effect (above zero:
    reproduced, below: the opposite, across zero: undetermined). ``mech_test_sets``: the
    same probe on the default test sets, whose gap the detail reports beside it."""
    g = quickdraw_cka_gap(mech)
    if g is None:
        return None
    cka = g["per_domain"]
    as_drawn = quickdraw_cka_gap(mech_test_sets)
    with_natural = {next(d for d in p["domains"] if d != "natural"): mean_over_layers(p)
                    for p in mech["pairs"] if "natural" in p["domains"]}
    subsets = []
    for name, gs in cka_gap_per_class_subset(mech).items():
        subsets.append(f"{name} classes alone: " + ("undefined (too few classes)" if gs is None else
                                                    f"{gs['gap']:+.2f} ({_interval(gs)})"))
    return finding(
        "dg_cg", "quickdraw shows the lowest mechanistic similarity to the other domains",
        direction(g["ci"]), g["gap"],
        (f"class means of {', '.join(probe_sets)}: " if probe_sets else "")
        + f"the lowest other domain ({g['next_lowest']}) minus quickdraw: {g['gap']:+.2f} linear CKA ({_interval(g)}); "
        "mean linear CKA over layers and over each domain's pairs with the other domains: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cka.items(), key=lambda kv: kv[1]))
        + ("; with natural images alone: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(with_natural.items(), key=lambda kv: kv[1])
            if v is not None) if with_natural else "")
        + ("; the same gap on the " + "; on the ".join(subsets) + " (reported, not the verdict: a CKA of a "
           "few class means is wide)" if subsets else "")
        + ("" if as_drawn is None else
           f"; on each domain's test set (test_<domain>) instead: {as_drawn['gap']:+.2f} ({_interval(as_drawn)}), "
           f"lowest other domain {as_drawn['next_lowest']}"))


def cka_gap_per_class_subset(mech: dict | None) -> dict[str, dict | None]:
    """:func:`quickdraw_cka_gap` on each of the evaluator's named class subsets (e.g. held-out, seen)."""
    return {name: quickdraw_cka_gap({"domains": mech["domains"], "pairs": sub["pairs"]})
            for name, sub in ((mech or {}).get("class_subsets") or {}).items()}


def _interval(g: dict) -> str:
    return (f"95% jackknife interval over the {g['n_classes']} classes {g['ci'][0]:+.2f}..{g['ci'][1]:+.2f}"
            if g["se"] is not None else "no interval: fewer than 5 classes, or the pairs do not share one class list")


def accuracy_per_class(pred: pd.DataFrame, classes: list[str]) -> dict[str, float | None]:
    """Top-1 accuracy of each class's images in ``pred`` (None for a class without images)."""
    return {c: accuracy(pred, pred["class"] == c)["acc"] for c in classes}


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a - b) * 100


def _per_class_sentence(effect: dict[str, float | None]) -> str:
    """How a verdict's effect splits over the held-out classes: each class's difference
    (largest first; on that class's images alone, so each is far noisier than the verdict)
    and how many classes go each way. A verdict that one or two classes carry moves with
    the training seed."""
    known = {c: v for c, v in effect.items() if v is not None}
    if not known:
        return "per held-out class: n/a"
    up, down = sum(v > 0 for v in known.values()), sum(v < 0 for v in known.values())
    return ("per held-out class " + ", ".join(f"{c} {v:+.1f}" for c, v in sorted(known.items(), key=lambda kv: -kv[1]))
            + f" (higher in {up}, lower in {down} of {len(known)} classes)")


def _pct(x):
    return "n/a" if x is None else f"{x * 100:.1f}%"
