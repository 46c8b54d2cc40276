"""The training use case on the tiny synthetic collection and the tiny CLIP (CPU, random init)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound, ResourceExhausted
from clipaudit.manifests import write_manifest
from clipaudit.store import LocalStore
from services.trainer.checkpoints import CheckpointStore
from services.trainer.handler import StepProgress, StopTraining, train
from services.trainer.spec import JobSpec


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def train_samples(synth) -> list[dict]:
    from clipaudit.synth import Collection

    return [s["json"] for s in Collection.load(synth).iter_samples("train")]


@pytest.fixture(scope="module")
def manifests(synth, train_samples, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("manifests")
    natural = [s["key"] for s in train_samples if s["domain_group"] == "natural"]
    rendition = [s["key"] for s in train_samples if s["domain_group"] == "rendition"]
    out = {}
    for name, keys in {"natural": natural, "rendition": rendition, "empty": [],
                       "unknown": [f"nope-{i}" for i in range(20)],
                       "partly": natural[:50] + [f"nope-{i}" for i in range(10)]}.items():
        write_manifest(d / name, keys, rule="test")
        out[name] = str(d / name)
    return out


def spec(synth, out, **kw) -> JobSpec:
    base = dict(data=[str(synth)], batch_size=16, out=str(out), warmup_steps=5, lr=1e-3, log_every=5)
    base.update(kw)
    return JobSpec(**base)


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss(synth, tmp_path):
    r = train(spec(synth, tmp_path / "run", samples=200 * 16), job_id="loss")
    assert r.step == r.total_steps == 200
    first, last = np.mean(r.losses[:20]), np.mean(r.losses[-20:])
    # ln(16) = 2.77 is chance for a batch of 16; the model must learn well below it
    assert first > 2.0 and last < 0.6 * first, (first, last)
    assert r.data_source == "memory" and r.found == 300 and r.missing == 0


def _crash_at(step: int):
    def cb(p: StepProgress) -> None:
        if p.step == step:
            raise StopTraining(f"simulated kill at step {step}")
    return cb


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_kill_and_resume_equals_the_uninterrupted_run(synth, tmp_path, cache):
    # threads pinned: the two runs must not pick different thread counts (summation order) on a busy machine
    kw = dict(samples=10 * 8, batch_size=8, checkpoint_every=3, cache=cache, shuffle_buffer=50, seed=3, threads=2)
    straight = train(spec(synth, tmp_path / "straight", **kw), job_id="straight")
    out = tmp_path / "killed"
    with pytest.raises(StopTraining):
        train(spec(synth, out, **kw), job_id="killed", on_progress=_crash_at(8))  # last checkpoint: step 6
    assert CheckpointStore(LocalStore(out)).latest()["step"] == 6
    resumed = train(spec(synth, out, **kw), job_id="killed", resume=True)
    assert resumed.resumed_from == 6 and resumed.step == 10
    assert len(resumed.losses) == 10
    assert resumed.losses == straight.losses          # bit-identical on CPU
    a = torch.load(straight.checkpoint.uri, weights_only=True)
    b = torch.load(resumed.checkpoint.uri, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["cpu_threads"] == b["cpu_threads"] == 2


def test_a_resumed_run_keeps_the_thread_count_of_its_checkpoint(synth, tmp_path):
    kw = dict(samples=4 * 8, batch_size=8, checkpoint_every=2)
    out = tmp_path / "run"
    before = torch.get_num_threads()
    with pytest.raises(StopTraining):
        train(spec(synth, out, threads=1, **kw), job_id="t", on_progress=_crash_at(3))
    done = train(spec(synth, out, threads=2, **kw), job_id="t", resume=True)
    assert done.resumed_from == 2 and done.step == 4
    assert torch.load(done.checkpoint.uri, weights_only=True)["cpu_threads"] == 1
    assert torch.get_num_threads() == before      # the caller's thread count is given back


def test_existing_run_needs_resume_and_a_finished_run_is_not_retrained(synth, tmp_path):
    s = spec(synth, tmp_path / "run", samples=3 * 16)
    first = train(s, job_id="j")
    with pytest.raises(FailedPrecondition, match="pass --resume"):
        train(s, job_id="j", resume=False)
    again = train(s, job_id="j", resume=True)
    assert again.checkpoint.uri == first.checkpoint.uri and again.losses == first.losses


def test_checkpoint_holds_the_contract_and_loads_in_the_evaluator(synth, tmp_path, manifests):
    r = train(spec(synth, tmp_path / "run", manifest=manifests["natural"], samples=2 * 16), job_id="c")
    ck = torch.load(r.checkpoint.uri, weights_only=True)   # tensors and primitives only
    assert ck["arch"] == "clipaudit-tiny" and ck["step"] == 2 and ck["final"] is True
    assert ck["resolved_counts"] == {"natural": r.found}
    assert json.loads(ck["spec"])["manifest"] == manifests["natural"]
    assert isinstance(ck["rng"]["torch"], torch.Tensor)
    from clipaudit.models import load_clip

    loaded = load_clip(f"clipaudit-tiny@{r.checkpoint.uri}")
    assert torch.equal(loaded.model.state_dict()["text_projection"], ck["model"]["text_projection"])


def test_mixture_counts_are_exact_and_saved(synth, tmp_path, manifests):
    s = spec(synth, tmp_path / "mix", samples=16, mixture=[{"manifest": manifests["natural"], "count": 100},
                                                          {"manifest": manifests["rendition"], "count": 20}])
    r = train(s, job_id="mix")
    assert r.resolved_counts == {"natural": 100, "rendition": 20} and r.found == 120 and r.missing == 0
    ratio = spec(synth, tmp_path / "ratio", samples=16, total=80,
                 mixture=[{"manifest": manifests["natural"], "weight": 3},
                          {"manifest": manifests["rendition"], "weight": 1}])
    r = train(ratio, job_id="ratio")
    assert r.resolved_counts == {"natural": 60, "rendition": 20}
    ck = torch.load(r.checkpoint.uri, weights_only=True)
    assert ck["resolved_counts"] == {"natural": 60, "rendition": 20}
    too_many = spec(synth, tmp_path / "bad", samples=16, mixture=[{"manifest": manifests["rendition"], "count": 10_000}])
    with pytest.raises(InvalidInput, match="asks for 10000 samples"):
        train(too_many, job_id="bad")


def test_missing_keys_are_counted_and_all_missing_is_refused(synth, tmp_path, manifests):
    r = train(spec(synth, tmp_path / "partly", manifest=manifests["partly"], samples=16), job_id="p")
    assert (r.requested, r.found, r.missing) == (60, 50, 10)
    with pytest.raises(InvalidInput, match="none of the 20 manifest keys are in the data"):
        train(spec(synth, tmp_path / "unknown", manifest=manifests["unknown"], samples=16), job_id="u")
    with pytest.raises(InvalidInput, match="subset is empty"):
        train(spec(synth, tmp_path / "empty", manifest=manifests["empty"], samples=16), job_id="e")
    with pytest.raises(NotFound):
        train(spec(synth, tmp_path / "nomanifest", manifest=str(tmp_path / "nope"), samples=16), job_id="n")


def test_batch_larger_than_the_subset_is_refused(synth, tmp_path, manifests):
    with pytest.raises(InvalidInput, match="larger than the subset"):
        train(spec(synth, tmp_path / "big", batch_size=512, samples=512), job_id="b")


def test_model_config_that_does_not_parse_is_refused(synth, tmp_path):
    bad = tmp_path / "broken-tiny.json"
    bad.write_text('{"embed_dim": 64, "vision_cfg": ')
    with pytest.raises(InvalidInput, match="does not parse"):
        train(spec(synth, tmp_path / "run", model=str(bad), samples=16), job_id="m")


def test_resume_from_another_architecture_is_refused(synth, tmp_path):
    out = tmp_path / "run"
    train(spec(synth, out, samples=16, checkpoint_every=1), job_id="a")
    cfg = json.loads((Path(__file__).parents[2] / "clipaudit/model_configs/clipaudit-tiny.json").read_text())
    cfg["embed_dim"] = 32
    other = tmp_path / "other-tiny.json"
    other.write_text(json.dumps(cfg))
    with pytest.raises(FailedPrecondition, match="clipaudit-tiny"):
        train(spec(synth, out, model=str(other), samples=32), job_id="a", resume=True)


class FullDiskStore(LocalStore):
    """A real LocalStore whose checkpoint writes run out of disk after ``ok`` successes
    (half the bytes are written, then ENOSPC, like a full disk)."""

    def __init__(self, root, ok: int):
        super().__init__(root)
        self.ok = ok

    def put_file(self, key, path):
        if not key.endswith(".pt") or self.ok > 0:
            self.ok -= key.endswith(".pt")
            return super().put_file(key, path)

        def half_then_full(f):
            data = Path(path).read_bytes()
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        self._atomic_write(key, half_then_full)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(synth, tmp_path):
    out = tmp_path / "run"
    store = FullDiskStore(out, ok=1)
    s = spec(synth, out, samples=6 * 16, checkpoint_every=2)
    with pytest.raises(ResourceExhausted, match="disk full"):
        train(s, job_id="full", open_store=lambda loc: store)
    ckpts = CheckpointStore(LocalStore(out))
    assert ckpts.latest()["step"] == 2
    assert ckpts.load_latest()["step"] == 2           # intact and readable (weights_only)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.pt"]  # no temp left
    resumed = train(s, job_id="full", resume=True)   # and the run can go on from it
    assert resumed.resumed_from == 2 and resumed.step == 6


def test_supervised_mode_trains_a_timm_classifier(synth, tmp_path):
    s = spec(synth, tmp_path / "sup", mode="supervised", model="test_resnet", image_size=32, samples=40 * 16,
             lr=3e-3, weight_decay=0.0)
    r = train(s, job_id="sup")
    ck = torch.load(r.checkpoint.uri, weights_only=True)
    assert ck["mode"] == "supervised" and ck["arch"] == "test_resnet"
    assert len(ck["classes"]) >= 2 and ck["classes"] == sorted(set(ck["classes"]), key=ck["classes"].index)
    assert np.mean(r.losses[-8:]) < np.mean(r.losses[:8])


def test_cli_trains_and_refuses_an_existing_run(synth, tmp_path, capsys):
    from clipaudit.cli import main

    argv = ["train", "--data", str(synth), "--samples", "32", "--batch-size", "16", "--out", str(tmp_path / "cli"),
            "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and Path(summary["checkpoint"]).is_file()
    assert main(argv) == FailedPrecondition.exit_code
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_torchrun(synth, tmp_path):
    """torchrun + gloo: each rank takes half of every global batch; rank 0 writes the checkpoint."""
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "clipaudit.cli", "train", "--data", str(synth), "--samples", "192", "--batch-size", "16",
           "--out", str(out), "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr[-2000:]
    ck = CheckpointStore(LocalStore(out)).load_latest()
    assert ck["world_size"] == 2 and ck["step"] == 192 // (16 * 2) and ck["final"]
