"""Study operations through the real stack: Kafka events to the embedder, gRPC to the
indexer, classifier, trainer and evaluator services, every byte in MinIO.

Start the services first (``clipaudit stack up`` then ``clipaudit serve all``); a
service that is not reachable is one clear ``Unavailable`` line.
"""

from __future__ import annotations

import io
import json
import time

import grpc
import pandas as pd

from clipaudit.config import SERVICE_PORTS, StackSettings
from clipaudit.errors import ClipauditError, FailedPrecondition, InvalidInput, NotFound, Unavailable
from clipaudit.store import open_store

_CODES = {grpc.StatusCode.INVALID_ARGUMENT: InvalidInput, grpc.StatusCode.NOT_FOUND: NotFound,
          grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition, grpc.StatusCode.UNAVAILABLE: Unavailable}


def _call(what: str, fn, *args, **kwargs):
    """A gRPC call with its status turned back into our exception tree."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        cls = _CODES.get(e.code(), ClipauditError)
        raise cls(f"{what}: {e.code().name}: {e.details()}") from e


class DistributedOps:
    def __init__(self, stack: StackSettings, *, host: str = "127.0.0.1", ports: dict | None = None,
                 timeout_s: float = 3600.0):
        from clipaudit.bus.kafka import KafkaBus
        from clipaudit.classifier.v1 import classifier_pb2_grpc
        from clipaudit.evaluator.v1 import evaluator_pb2_grpc
        from clipaudit.indexer.v1 import indexer_pb2_grpc
        from clipaudit.trainer.v1 import trainer_pb2_grpc

        self.stack = stack
        self.timeout_s = timeout_s
        ports = ports or {n: p[0] for n, p in SERVICE_PORTS.items()}
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channels = {n: grpc.insecure_channel(f"{host}:{p}", options=opts) for n, p in ports.items()}
        for n, ch in self.channels.items():
            try:
                grpc.channel_ready_future(ch).result(timeout=20)
            except grpc.FutureTimeoutError as e:
                raise Unavailable(f"the {n} service at {host}:{ports[n]} is not reachable; run `clipaudit serve all`") from e
        self.indexer = indexer_pb2_grpc.IndexerStub(self.channels["indexer"])
        self.classifier = classifier_pb2_grpc.ClassifierStub(self.channels["classifier"])
        self.trainer = trainer_pb2_grpc.TrainerStub(self.channels["trainer"])
        self.evaluator = evaluator_pb2_grpc.EvaluatorStub(self.channels["evaluator"])
        self.bus = KafkaBus(stack.kafka_bootstrap)

    @classmethod
    def from_stack(cls) -> "DistributedOps":
        return cls(StackSettings())

    def output_prefix(self, out_dir: str) -> str:
        name = str(out_dir).rstrip("/").rsplit("/", 1)[-1] or "study"
        return f"s3://{self.stack.s3_bucket}/studies/{name}"

    # -- embedder, through Kafka: one ShardCreated per shard, wait for every part
    def embed(self, data: str, model: str, out: str) -> dict:
        from clipaudit.bus import TOPIC_SHARDS
        from clipaudit.common.v1 import common_pb2
        from clipaudit.events.v1 import events_pb2

        store = open_store(data, settings=self.stack)
        shards = [k for k in store.list() if k.endswith(".tar")]
        if not shards:
            raise NotFound(f"no .tar shards under {data}")
        t0 = time.perf_counter()
        for key in shards:
            part = key.rsplit("/", 1)[-1].removesuffix(".tar")
            self.bus.publish(TOPIC_SHARDS, part, events_pb2.ShardCreated(
                dataset=data.rstrip("/").rsplit("/", 1)[-1], shard_id=part,
                shard=common_pb2.ObjectRef(uri=store.uri(key)), output_prefix=out, model=model))
        self.bus.flush()
        out_store = open_store(out, settings=self.stack)
        parts = [k.rsplit("/", 1)[-1].removesuffix(".tar") for k in shards]
        deadline = time.monotonic() + self.timeout_s
        while True:
            done = [p for p in parts if out_store.exists(f"done/{p}.json")]
            if len(done) == len(parts):
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"embedder did not finish {len(parts) - len(done)} of {len(parts)} shards of {data}")
            time.sleep(0.5)
        rows = sum(json.loads(out_store.get_bytes(f"done/{p}.json")).get("rows", 0) for p in parts)
        return {"images": rows, "parts": len(parts), "seconds": time.perf_counter() - t0, "out": out}

    # -- indexer
    def similarity(self, query: str, reference: str, out: str, k: int = 1) -> str:
        from clipaudit.common.v1 import common_pb2
        from clipaudit.indexer.v1 import indexer_pb2

        rows = []
        req = indexer_pb2.NearestSimilarityRequest(query=common_pb2.EmbeddingSetRef(uri=query),
                                                   reference=common_pb2.EmbeddingSetRef(uri=reference), k=k)
        for r in _call("NearestSimilarity", self.indexer.NearestSimilarity, req, timeout=self.timeout_s):
            keys, sims = list(r.neighbours.keys), list(r.neighbours.similarities)
            row = {"key": r.query_key, "sim": sims[0], "ref_key": keys[0]}
            if k > 1:
                row.update(sims=sims, ref_keys=keys)
            rows.append(row)
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        parent, _, base = out.rpartition("/")
        open_store(parent, settings=self.stack).put_bytes(base, buf.getvalue())
        return out

    def prune(self, rule: str, train: str, out: str, **p) -> list[str]:
        from clipaudit.common.v1 import common_pb2
        from clipaudit.indexer.v1 import indexer_pb2

        ref = common_pb2.EmbeddingSetRef
        rules = {"near": indexer_pb2.PRUNE_RULE_NEAR, "far": indexer_pb2.PRUNE_RULE_FAR,
                 "random": indexer_pb2.PRUNE_RULE_RANDOM, "matched": indexer_pb2.PRUNE_RULE_MATCHED}
        req = indexer_pb2.PruneRequest(rule=rules[rule], train=ref(uri=train), keep=p.get("keep", 0),
                                       seed=p.get("seed", 0), out=out)
        if rule in ("near", "far"):
            req.tests.append(ref(uri=p["test"]))
        if rule == "matched":
            req.tests.extend(ref(uri=t) for t in p["tests"])
            req.reference.CopyFrom(ref(uri=p["reference"]))
        resp = _call("Prune", self.indexer.Prune, req, timeout=self.timeout_s)
        return [m.uri for m in resp.manifests]

    # -- classifier
    def train_domain_classifier(self, embeddings: str, out: str, **p) -> dict:
        from clipaudit.classifier.v1 import classifier_pb2
        from clipaudit.common.v1 import common_pb2

        resp = _call("Train", self.classifier.Train, classifier_pb2.TrainRequest(
            embeddings=common_pb2.EmbeddingSetRef(uri=embeddings), label_column=p.get("label_column", ""),
            classes=p.get("classes", []), out=out, seed=p.get("seed", 0),
            default_precision=p.get("default_precision", 0.0), strict_precision=p.get("strict_precision", 0.0)),
            timeout=self.timeout_s)
        metrics = json.loads(resp.metrics_json or "{}")
        return {**metrics, "model": resp.model.uri, "classifier_id": resp.classifier_id,
                "bootstrapped": resp.bootstrapped, "warnings": list(resp.warnings)}

    def domain_report(self, embeddings: str, model: str, nominal: str | None = None) -> dict:
        from clipaudit.classifier.v1 import classifier_pb2
        from clipaudit.common.v1 import common_pb2

        resp = _call("Report", self.classifier.Report, classifier_pb2.ReportRequest(
            embeddings=common_pb2.EmbeddingSetRef(uri=embeddings), model=model, nominal=nominal or ""),
            timeout=self.timeout_s)
        return json.loads(resp.report_json)

    def domain_filter(self, embeddings: str, model: str, keep: str, threshold: str, out: str) -> str:
        from clipaudit.classifier.v1 import classifier_pb2
        from clipaudit.common.v1 import common_pb2

        resp = _call("Filter", self.classifier.Filter, classifier_pb2.FilterRequest(
            embeddings=common_pb2.EmbeddingSetRef(uri=embeddings), model=model, keep=keep, threshold=threshold,
            out=out), timeout=self.timeout_s)
        return resp.manifest.uri

    # -- trainer: submit, watch to the end
    def train(self, spec: dict, job_id: str, out: str) -> dict:
        from clipaudit.trainer.v1 import trainer_pb2

        spec = dict(spec, out=out)
        _call("SubmitJob", self.trainer.SubmitJob, trainer_pb2.SubmitJobRequest(spec_json=json.dumps(spec),
                                                                                job_id=job_id), timeout=60)
        losses = []
        for p in _call("WatchJob", self.trainer.WatchJob, trainer_pb2.GetJobRequest(job_id=job_id),
                       timeout=self.timeout_s):
            if p.loss:
                losses.append(p.loss)
        job = _call("GetJob", self.trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id), timeout=60)
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(f"training job {job_id} ended {trainer_pb2.JobState.Name(job.state)}: {job.error}")
        return {"job_id": job_id, "out": out, "checkpoint": job.checkpoint.uri, "step": job.step,
                "total_steps": job.total_steps, "model_id": job.model_id, "arch": job.model_id.split("@")[0],
                "resolved_counts": dict(job.resolved_counts), "missing": job.missing_keys,
                "samples_per_s": job.samples_per_s, "loss_first": losses[0] if losses else None,
                "loss_last": job.loss}

    # -- evaluator
    def evaluate(self, checkpoint: str, test_sets: list[str], spec: dict, out: str) -> dict:
        from clipaudit.evaluator.v1 import evaluator_pb2

        last = None
        for msg in _call("Evaluate", self.evaluator.Evaluate, evaluator_pb2.EvaluateRequest(
                checkpoint=checkpoint, test_sets=test_sets, spec_json=json.dumps(spec), out=out),
                timeout=self.timeout_s):
            last = msg
        if last is None or not last.report.uri:
            raise FailedPrecondition(f"evaluation of {checkpoint} returned no report")
        return {"report": last.report.uri, "html": last.html_uri, "summary": json.loads(last.top1_json or "{}")}
