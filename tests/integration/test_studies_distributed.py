"""A study in distributed mode on the real stack: the collection and every output in
MinIO, shards embedded by the embedder service through Kafka, similarity/pruning by the
indexer, training by the trainer and evaluation by the evaluator over gRPC — and the
same numbers as the embedded run with the same seed."""

from __future__ import annotations

import signal
import uuid

import pytest

from clipaudit.config import SERVICES
from clipaudit.serve import spawn
from clipaudit.studies.config import load_config
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

CONFIG = {
    "studies": ["similarity"], "data.synth.preset": "tiny", "seed": 3, "data.synth.seed": 3,
    "training.samples": 256, "training.batch_size": 32, "training.warmup_steps": 2, "training.device": "cpu",
    "training.threads": 1,   # both modes on one intra-op thread: the same float rounding, the same models
    "similarity.keep_fractions": [0.8, 0.6, 0.4], "similarity.stratified": False, "similarity.gallery": 1,
    "similarity_model.samples": 512,
}


@pytest.fixture(scope="module")
def services(stack, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    procs, ports = [], {}
    try:
        for name in SERVICES:
            prefix = f"CLIPAUDIT_{name.upper()}_"
            env = {prefix + "GRPC_PORT": str(free_port()), prefix + "METRICS_PORT": str(free_port()),
                   prefix + "CONSUMER_GROUP": f"{name}-{uuid.uuid4().hex[:6]}"}
            proc, p = spawn(name, env=env, log_path=logs / f"{name}.log", timeout_s=180)
            procs.append(proc)
            ports[name] = p["grpc"]
        yield ports
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except Exception:  # noqa: BLE001
                p.kill()


def test_similarity_study_distributed_equals_embedded(stack, services, tmp_path):
    from clipaudit.studies.distributed import DistributedOps
    from clipaudit.studies.runner import run_study

    cfg = load_config("demo", **CONFIG)
    ops = DistributedOps(stack, ports=services, timeout_s=900)
    out = f"s3://{stack.s3_bucket}/studies/test-{uuid.uuid4().hex[:8]}"
    dist = run_study(cfg, tmp_path / "distributed", ops=ops, out=out)
    assert dist["collection"]["location"].startswith("s3://")
    assert all(m["checkpoint"].startswith("s3://") for m in dist["models"].values())
    emb = run_study(cfg, tmp_path / "embedded")

    def accs(report):
        return {r["rule"] + str(r["keep_fraction"]): r["accuracy"] for r in report["studies"]["similarity"]["pruning_sweep"]}

    # same data, same subsets, same seeds: the same manifests, accuracies and findings
    assert [r["keep"] for r in dist["studies"]["similarity"]["pruning_sweep"]] == \
           [r["keep"] for r in emb["studies"]["similarity"]["pruning_sweep"]]
    a, b = accs(dist), accs(emb)
    assert a.keys() == b.keys()
    for k in a:
        for t, v in a[k].items():
            if v is not None:
                assert v == pytest.approx(b[k][t], abs=0.03), (k, t)
    for fa, fb in zip(dist["findings"], emb["findings"]):
        assert fa["claim"] == fb["claim"]
        if isinstance(fa["value"], float):
            assert fa["value"] == pytest.approx(fb["value"], rel=0.05, abs=1.0), fa["claim"]
