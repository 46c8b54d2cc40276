"""The evaluator's use cases, called alike by the CLI, gRPC, the Kafka worker and
embedded mode: :meth:`Evaluator.evaluate`, :meth:`Evaluator.compare`,
:meth:`Evaluator.on_checkpoint`. Ports (where reports go, the bus publisher, the
metrics) are injected; the algorithms live in ``logic.py``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clipaudit.errors import ClipauditError, InvalidInput, NotFound
from clipaudit.store import Store, open_store
from services.evaluator import logic

log = logging.getLogger(__name__)

REPORT_SCHEMA = "clipaudit.evaluator.report/v1"
COMPARISON_SCHEMA = "clipaudit.evaluator.comparison/v1"
SIMILARITY_COLUMNS = ("nn_similarity", "sim", "similarity")
DEFAULT_BREAKDOWNS = ["domain", "domain_group", "group", "background", "class"]
ProgressFn = Callable[[str, int, int, str], None]


class MechanisticSpec(BaseModel):
    """Domains to compare: every pair of them (two domains: one pair; study 3 lists five)."""

    model_config = ConfigDict(extra="forbid")
    domains: list[str] = Field(min_length=2)
    column: str = "domain"
    top_fraction: float = Field(0.1, gt=0, le=1)
    # named class lists (e.g. the held-out and the seen classes): every pair again on those classes alone,
    # as the study-3 paper scores its "ood" and "id" classes apart from all of them
    class_subsets: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"domains must be distinct, got {v}")
        return v

    @field_validator("class_subsets")
    @classmethod
    def _named_lists(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, classes in v.items():
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(f"class subset {name!r} must list distinct classes, got {classes}")
        return v


class EvaluationSpec(BaseModel):
    """Options of one evaluation (the JSON in EvaluateRequest.spec_json / CheckpointWritten)."""

    model_config = ConfigDict(extra="forbid")
    templates: str | list[str] | None = None     # built-in name, file path, or the templates themselves
    classnames: list[str] | None = None
    breakdowns: list[str] = Field(default_factory=lambda: list(DEFAULT_BREAKDOWNS))
    label_subsets: dict[str, list[str]] = Field(default_factory=dict)   # name -> candidate class names
    one_vs_k: list[int] = Field(default_factory=list)                     # e.g. [20]: CounterAnimal 1-vs-20
    similarity: str | None = None                 # parquet: key + similarity column (the indexer's output)
    similarity_column: str | None = None          # None: the first of nn_similarity, sim (the indexer's), similarity
    similarity_bins: int | list[float] = 10
    mechanistic: MechanisticSpec | None = None
    family: str | None = None
    label: str | None = None                      # how the model is named in tables
    batch_size: int = Field(256, ge=1, le=4096)
    seed: int = 0
    device: str = "cpu"


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    test_sets: list[str] = Field(min_length=1)
    out: str
    spec: EvaluationSpec = Field(default_factory=EvaluationSpec)


@dataclass
class ReportRef:
    uri: str                 # report.json
    html_uri: str
    sha256: str
    rows: int                # images evaluated
    size_bytes: int
    summary: dict


@dataclass
class _Scored:
    """One test set after scoring; the pooled sections (groups, similarity bins, mechanistic
    similarity, predictions.parquet) read every test set's."""
    src: Any                 # the opened test set (name, location)
    meta: pd.DataFrame
    labels: np.ndarray       # true class index per image
    correct: np.ndarray      # top-1 correct per image
    activations: dict        # layer -> per-image activations (mechanistic runs only)
    classnames: list
    pred: np.ndarray         # top-1 class index per image


def build_request(checkpoint: str, test_sets: list[str], out: str, spec=None) -> EvaluationRequest:
    if not checkpoint:
        raise InvalidInput("evaluation names no checkpoint")
    if not test_sets or not all(test_sets):
        raise InvalidInput("evaluation names no test set")
    if not out:
        raise InvalidInput("evaluation names no output location ('out')")
    return EvaluationRequest(checkpoint=checkpoint, test_sets=list(test_sets), out=out, spec=parse_spec(spec))


def parse_spec(spec: str | dict | None) -> EvaluationSpec:
    if spec is None or spec == "":
        return EvaluationSpec()
    try:
        return EvaluationSpec.model_validate_json(spec) if isinstance(spec, str) else EvaluationSpec.model_validate(spec)
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidInput(f"evaluation spec: {'.'.join(map(str, first['loc']))}: {first['msg']}") from e


def resolve_templates(option, source_text: str | None) -> tuple[str, list[str]]:
    """(description, templates) from the request option, the test set's file, or the OpenAI 80."""
    if option is None:
        if source_text:
            return "zeroshot_classification_templates.txt", logic.parse_templates(source_text, source="test set templates")
        return "openai_imagenet", logic.builtin_templates("openai_imagenet")
    if isinstance(option, list):
        return "request", [logic.normalise_template(t, where="request template") for t in option]
    if Path(option).is_file():
        return option, logic.parse_templates(Path(option).read_text(), source=option)
    return option, logic.builtin_templates(option)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _edges(bins, sim: np.ndarray) -> list[float]:
    if isinstance(bins, list):
        return bins
    if bins < 1:
        raise InvalidInput("similarity_bins must be >= 1")
    finite = sim[np.isfinite(sim)]
    if not len(finite):
        raise InvalidInput("no test image was found in the similarity table")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1e-6
    return np.linspace(lo, hi, bins + 1).tolist()


class Evaluator:
    """``open_out(location) -> Store`` says where reports go (local dir or s3);
    ``publisher`` gets ReportWritten events; ``metrics`` is an EvaluatorMetrics."""

    def __init__(self, *, open_out: Callable[[str], Store] | None = None, open_location: Callable | None = None,
                 publisher=None, metrics=None, reports_prefix: str = "reports", device: str = "cpu",
                 out_store: Store | None = None, reports_topic: str | None = None):
        self.open_out = open_out or (lambda loc: open_store(loc))
        self.open_location = open_location      # settings-aware opener for test sets (None: default)
        self.publisher = publisher
        self.metrics = metrics
        self.reports_prefix = reports_prefix
        self.device = device
        self.out_store = out_store
        self.reports_topic = reports_topic

    # ------------------------------------------------------------------ evaluate

    def evaluate(self, request: EvaluationRequest | dict, *, progress: ProgressFn | None = None,
                 cancelled: Callable[[], bool] | None = None) -> ReportRef:
        """Evaluate one checkpoint on test sets; ``request`` is an EvaluationRequest or a dict
        (checkpoint, test_sets, out, spec as dict or JSON). Bad input raises InvalidInput/NotFound
        before any model work where it can be detected up front, and is counted."""
        t0 = time.perf_counter()
        try:
            if not isinstance(request, EvaluationRequest):
                request = build_request(**request)
            ref = self._evaluate(request, progress or (lambda *a: None), cancelled)
        except ClipauditError as e:
            if self.metrics:
                self.metrics.evaluation_failed(type(e).__name__)
            raise
        if self.metrics:
            self.metrics.evaluation_done(time.perf_counter() - t0, ref.rows)
        return ref

    def _evaluate(self, request: EvaluationRequest, progress: ProgressFn, cancelled) -> ReportRef:
        from services.evaluator.checkpoints import load_model
        from services.evaluator.encoding import encode_prompts, encode_test_set
        from services.evaluator.report import render_report_html
        from services.evaluator.testsets import open_test_set, resolve_labels

        spec = request.spec
        t0 = time.perf_counter()
        sources = [open_test_set(loc) for loc in request.test_sets]     # NotFound before any model work
        templates_of = [resolve_templates(spec.templates, src.templates_text) for src in sources]
        similarity = self._read_similarity(spec) if spec.similarity else None
        progress("load", 0, 1, request.checkpoint)
        model = load_model(request.checkpoint, device=spec.device or self.device, seed=spec.seed,
                           classes=spec.classnames)
        progress("load", 1, 1, model.model_id)
        out = self.open_out(request.out)

        sets, pooled, classifiers = [], [], {}
        for i, src in enumerate(sources):
            enc = encode_test_set(model, src, batch_size=spec.batch_size, hook_layers=spec.mechanistic is not None,
                                  progress=lambda s, d, t, m: progress(s, d, t, f"{m} ({i + 1}/{len(sources)})"),
                                  cancelled=cancelled)
            meta = enc.metadata
            classnames = spec.classnames or src.classnames
            classnames, labels = resolve_labels(meta, classnames, where=src.location)
            if "class" not in meta.columns:      # e.g. CLIP_benchmark's cls-only samples
                meta = meta.assign(**{"class": np.asarray(classnames, dtype=object)[labels]})
            template_source, templates = templates_of[i]
            if model.kind == "clip":
                key = (tuple(classnames), tuple(templates))
                if key not in classifiers:   # test sets sharing class names and templates share the text side
                    progress("text", 0, len(classnames), src.name)
                    text = encode_prompts(model, logic.fill_templates(classnames, templates))
                    classifiers[key] = logic.class_embeddings(text)
                logits = logic.zeroshot_logits(enc.outputs, classifiers[key])
            else:
                index = {c: j for j, c in enumerate(model.classes)}
                missing = [c for c in classnames if c not in index]
                if missing:
                    raise InvalidInput(f"{src.location}: class(es) {missing[:5]} are not among the classifier's "
                                       f"{len(model.classes)} outputs")
                logits = enc.outputs[:, [index[c] for c in classnames]]
                template_source, templates = "n/a (supervised classifier)", []
            section = self._test_set_section(src, spec, classnames, labels, logits, meta, similarity)
            section.update({"skipped": enc.skipped, "templates": template_source, "n_templates": len(templates)})
            sets.append(section)
            correct = logic.topk_correct(logits, labels, 1)
            pooled.append(_Scored(src, meta, labels, correct, enc.activations, classnames, logits.argmax(axis=1)))
            progress("score", i + 1, len(sources), src.name)

        report: dict[str, Any] = {
            "schema": REPORT_SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"checkpoint": request.checkpoint, "model_id": model.model_id, "kind": model.kind,
                      "arch": model.name, "family": spec.family or model.family,
                      "label": spec.label or model.model_id},
            "spec": spec.model_dump(mode="json"),
            "test_sets": sets,
            "groups": self._pooled_groups(pooled),
            "similarity_bins": self._pooled_similarity(pooled, spec, similarity),
            "mechanistic": self._mechanistic(pooled, spec.mechanistic) if spec.mechanistic else None,
        }
        report["seconds"] = round(time.perf_counter() - t0, 3)
        report["n"] = int(sum(s["n"] for s in sets))
        self._write_predictions(out, pooled)
        data = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, default=_jsonable).encode()
        out.put_bytes("report.json", data)
        out.put_bytes("report.html", render_report_html(report).encode())
        progress("report", 1, 1, out.uri("report.json"))
        summary = {s["name"]: s["overall"]["top1"] for s in sets}
        return ReportRef(out.uri("report.json"), out.uri("report.html"), _sha256(data), report["n"], len(data), summary)

    def _read_similarity(self, spec: EvaluationSpec) -> pd.DataFrame:
        loc = spec.similarity
        parent, _, base = loc.rstrip("/").rpartition("/")
        try:
            data = open_store(parent or ".", create=False).get_bytes(base)
        except (FileNotFoundError, NotFound) as e:
            raise NotFound(f"similarity table {loc} does not exist") from e
        try:
            df = pd.read_parquet(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - unreadable parquet is bad input
            raise InvalidInput(f"similarity table {loc} is not a parquet file: {e}") from e
        candidates = [spec.similarity_column] if spec.similarity_column else list(SIMILARITY_COLUMNS)
        column = next((c for c in candidates if c in df.columns), None)
        if "key" not in df.columns or column is None:
            raise InvalidInput(f"similarity table {loc} needs columns 'key' and one of {candidates}, "
                               f"has {list(df.columns)}")
        out = df[["key", column]].drop_duplicates("key").rename(columns={column: "similarity"})
        return out.astype({"key": str})

    def _test_set_section(self, src, spec, classnames, labels, logits, meta, similarity) -> dict:
        section: dict[str, Any] = {"name": src.name, "location": src.location, "classes": classnames,
                                   "n": int(len(labels))}
        section["overall"] = logic.accuracy_summary(logits, labels)
        section["breakdowns"] = {col: logic.breakdown(logits, labels, meta[col].to_numpy())
                                 for col in spec.breakdowns if col in meta.columns}
        subsets = {}
        for name, names in spec.label_subsets.items():
            missing = [c for c in names if c not in classnames]
            if missing:
                raise InvalidInput(f"label subset {name!r}: class(es) {missing[:5]} are not class names of {src.name}")
            ids = [classnames.index(c) for c in names]
            lg, lb, _ = logic.restrict_to_subset(logits, labels, ids)
            subsets[name] = {**logic.accuracy_summary(lg, lb), "class_names": names}
        section["label_subsets"] = subsets
        section["one_vs_k"] = [logic.one_vs_k_accuracy(logits, labels, k, seed=spec.seed) for k in spec.one_vs_k]
        correct = logic.topk_correct(logits, labels, 1)
        section["groups"] = (logic.group_robustness(correct, meta["group"].to_numpy())
                             if "group" in meta.columns else None)
        if similarity is not None:
            sim = meta[["key"]].merge(similarity, on="key", how="left")["similarity"].to_numpy(dtype=np.float64)
            found = int(np.isfinite(sim).sum())
            section["similarity_bins"] = (logic.similarity_binned_accuracy(correct, sim, _edges(spec.similarity_bins, sim))
                                          if found else [])
            section["similarity_found"] = found
        else:
            section["similarity_bins"] = None
        return section

    @staticmethod
    def _pooled_groups(pooled) -> dict | None:
        with_groups = [t for t in pooled if "group" in t.meta.columns]
        if not with_groups:
            return None
        return logic.group_robustness(np.concatenate([t.correct for t in with_groups]),
                                      np.concatenate([t.meta["group"].to_numpy() for t in with_groups]))

    @staticmethod
    def _pooled_similarity(pooled, spec, similarity) -> list | None:
        if similarity is None:
            return None
        keys = pd.concat([t.meta[["key"]] for t in pooled], ignore_index=True)
        sim = keys.merge(similarity, on="key", how="left")["similarity"].to_numpy(dtype=np.float64)
        if not np.isfinite(sim).any():
            return []
        correct = np.concatenate([t.correct for t in pooled])
        return logic.similarity_binned_accuracy(correct, sim, _edges(spec.similarity_bins, sim))

    @staticmethod
    def _mechanistic(pooled, mech: MechanisticSpec) -> dict:
        """CKA and neuron sharing between every pair of ``mech.domains`` over all test sets
        evaluated (the images are encoded once): per pair, rows are the classes both
        domains have (by name), in sorted order; then the same per named class subset."""
        col = mech.column
        metas, names, acts = [], [], {}
        for t in pooled:
            if col not in t.meta.columns:
                raise InvalidInput(f"mechanistic similarity: test set has no {col!r} column")
            metas.append(t.meta[col].astype(str).to_numpy())
            names.append(np.asarray(t.classnames, dtype=object)[t.labels])
            for layer, a in t.activations.items():
                acts.setdefault(layer, []).append(a)
        dom = np.concatenate(metas)
        cls = np.concatenate(names)
        acts = {layer: np.concatenate(parts) for layer, parts in acts.items()}
        for name, classes in mech.class_subsets.items():
            unknown = sorted(set(classes) - set(cls))
            if unknown:
                raise InvalidInput(f"mechanistic class subset {name!r}: {unknown[:5]} not among the test sets' classes")

        def pairs(only: list[str] | None = None) -> list[dict]:
            return [_mechanistic_pair(dom, cls, acts, a, b, mech.top_fraction, only)
                    for i, a in enumerate(mech.domains) for b in mech.domains[i + 1:]]

        return {"column": col, "domains": list(mech.domains),
                "neuron_sharing_rule": f"top {mech.top_fraction:.0%} units by mean activation per domain, Jaccard",
                "pairs": pairs(),
                "class_subsets": {name: {"classes": list(classes), "pairs": pairs(classes)}
                                  for name, classes in mech.class_subsets.items()}}

    @staticmethod
    def _write_predictions(out: Store, pooled) -> None:
        frames = []
        for t in pooled:
            keep = [c for c in ("key", "class", "domain", "group", "background") if c in t.meta.columns]
            f = t.meta[keep].copy()
            f.insert(0, "test_set", t.src.name)
            f["label"] = t.labels
            f["pred"] = t.pred   # top-1 class index (into the test set's class names), for confusion matrices
            f["pred_class"] = np.asarray(t.classnames, dtype=object)[t.pred]
            f["correct"] = t.correct
            frames.append(f)
        buf = io.BytesIO()
        pd.concat(frames, ignore_index=True).astype({"key": str}).to_parquet(buf, index=False)
        out.put_bytes("predictions.parquet", buf.getvalue())

    # ------------------------------------------------------------------ compare

    def compare(self, reports: list[str], out: str, *, space: str = "logit") -> tuple[ReportRef, dict]:
        from services.evaluator.report import render_comparison_html

        if not reports:
            raise InvalidInput("compare needs at least one report")
        loaded = [read_report(r) for r in reports]
        table = comparison_table(loaded)
        models = pd.DataFrame([{"model": r["model"]["label"], "family": r["model"]["family"],
                                "common": (r.get("groups") or {}).get("common", {}).get("top1"),
                                "counter": (r.get("groups") or {}).get("counter", {}).get("top1")}
                               for r in loaded])
        has_groups = models[["common", "counter"]].notna().all(axis=1)
        er = logic.effective_robustness(models[has_groups], space=space) if has_groups.any() else None
        comparison = {"schema": COMPARISON_SCHEMA, "reports": reports, "rows": table,
                      "effective_robustness": er,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        store = self.open_out(out)
        data = json.dumps(comparison, indent=2, sort_keys=True, default=_jsonable).encode()
        store.put_bytes("comparison.json", data)
        store.put_bytes("comparison.html", render_comparison_html(comparison, loaded).encode())
        if self.metrics:
            self.metrics.comparisons.inc()
        return (ReportRef(store.uri("comparison.json"), store.uri("comparison.html"), _sha256(data), len(table),
                          len(data), {}), comparison)

    # ------------------------------------------------------------------ Kafka

    def on_checkpoint(self, event) -> list[ReportRef]:
        """A CheckpointWritten event: run the evaluations it lists (``evaluations_json``:
        a JSON list of {"name", "test_sets", "spec"} or one such object), publish one
        ReportWritten per report. Output keys are deterministic, so a redelivered
        event rewrites the same reports."""
        from clipaudit.bus import TOPIC_REPORTS
        from clipaudit.common.v1 import common_pb2
        from clipaudit.events.v1 import events_pb2

        if not event.evaluations_json.strip():
            log.info("checkpoint %s of job %s: no evaluations requested", event.checkpoint.uri, event.job_id)
            return []
        try:
            items = json.loads(event.evaluations_json)
        except ValueError as e:
            raise InvalidInput(f"evaluations_json of job {event.job_id} does not parse: {e}") from e
        items = items if isinstance(items, list) else [items]
        if not event.checkpoint.uri:
            raise InvalidInput(f"checkpoint event of job {event.job_id} names no checkpoint")
        refs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("test_sets"):
                raise InvalidInput(f"evaluation {i} of job {event.job_id} lists no test_sets")
            name = str(item.get("name") or f"eval{i}")
            out = item.get("out") or self._default_out(event.job_id, event.step, name)
            checkpoint = item.get("checkpoint") or event.checkpoint.uri
            ref = self.evaluate({"checkpoint": checkpoint, "test_sets": list(item["test_sets"]), "out": out,
                                 "spec": item.get("spec") or {}})
            refs.append(ref)
            if self.publisher is not None:
                self.publisher.publish(self.reports_topic or TOPIC_REPORTS, event.job_id, events_pb2.ReportWritten(
                    job_id=event.job_id, report=common_pb2.ObjectRef(uri=ref.uri, sha256=ref.sha256, rows=ref.rows,
                                                                     size_bytes=ref.size_bytes)))
                self.publisher.flush()
        return refs

    def _default_out(self, job_id: str, step: int, name: str) -> str:
        if self.out_store is None:
            raise InvalidInput("evaluation names no 'out' and the service has no report store")
        return self.out_store.uri(f"{self.reports_prefix}/{job_id}/step-{step}/{name}")


def _mechanistic_pair(dom: np.ndarray, cls: np.ndarray, acts: dict[str, np.ndarray], a_dom: str, b_dom: str,
                      top_fraction: float, only: list[str] | None = None) -> dict:
    """One pair of domains: CKA of class-mean activations and neuron sharing, per layer; on the
    classes both domains have (of ``only``, when given: images of other classes are left out)."""
    if only is not None:
        keep = np.isin(cls, only)
        dom, cls, acts = dom[keep], cls[keep], {layer: a[keep] for layer, a in acts.items()}
    shared = sorted(set(cls[dom == a_dom]) & set(cls[dom == b_dom]))
    result = {"domains": [a_dom, b_dom], "classes": shared,
              "n": {a_dom: int((dom == a_dom).sum()), b_dom: int((dom == b_dom).sum())}, "layers": []}
    if len(shared) < 4:
        result["undefined"] = f"needs at least 4 classes present in both domains (unbiased HSIC), found {len(shared)}"
        return result
    ids = {c: i for i, c in enumerate(shared)}
    ma, mb = (dom == a_dom) & np.isin(cls, shared), (dom == b_dom) & np.isin(cls, shared)
    la = np.array([ids[c] for c in cls[ma]])
    lb = np.array([ids[c] for c in cls[mb]])
    for layer, a in acts.items():
        xa = logic.class_means(a[ma], la, range(len(shared)))
        xb = logic.class_means(a[mb], lb, range(len(shared)))
        result["layers"].append({
            "layer": layer, "units": int(a.shape[1]),
            "cka_linear": _finite(logic.cka(xa, xb, kernel="linear")),
            "cka_rbf": _finite(logic.cka(xa, xb, kernel="rbf")),
            "neuron_sharing": _finite(logic.neuron_sharing(a[ma].mean(0), a[mb].mean(0), top_fraction)),
            # linear CKA without each class in turn (``classes`` order): the jackknife over classes that
            # puts an interval on a CKA of a few class means; empty below 5 classes (4 must remain)
            "cka_linear_leave_one_out": [_finite(v) for v in logic.cka_leave_one_out(xa, xb)]
            if len(shared) >= 5 else [],
        })
    return result


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_report(location: str) -> dict:
    parent, _, base = location.rstrip("/").rpartition("/")
    try:
        data = open_store(parent or ".", create=False).get_bytes(base)
    except (FileNotFoundError, NotFound) as e:
        raise NotFound(f"report {location} does not exist") from e
    try:
        rep = json.loads(data)
    except ValueError as e:
        raise InvalidInput(f"report {location} is not JSON: {e}") from e
    if rep.get("schema") != REPORT_SCHEMA:
        raise InvalidInput(f"{location} is not an evaluator report (schema {rep.get('schema')!r})")
    return rep


def comparison_table(reports: list[dict]) -> list[dict]:
    """One row per (model, test set): top-1/top-5, per-class recall, common/counter/drop."""
    rows = []
    for r in reports:
        for s in r["test_sets"]:
            g = s.get("groups") or {}
            rows.append({"model": r["model"]["label"], "family": r["model"]["family"], "kind": r["model"]["kind"],
                         "test_set": s["name"], "n": s["n"], "top1": s["overall"]["top1"], "top5": s["overall"]["top5"],
                         "mean_per_class_recall": s["overall"]["mean_per_class_recall"],
                         "common": (g.get("common") or {}).get("top1"), "counter": (g.get("counter") or {}).get("top1"),
                         "drop_points": g.get("drop_points")})
        pg = r.get("groups")
        if pg:
            rows.append({"model": r["model"]["label"], "family": r["model"]["family"], "kind": r["model"]["kind"],
                         "test_set": "(all groups)", "n": pg["common"]["n"] + pg["counter"]["n"], "top1": None,
                         "top5": None, "mean_per_class_recall": None, "common": pg["common"]["top1"],
                         "counter": pg["counter"]["top1"], "drop_points": pg["drop_points"]})
    return rows
