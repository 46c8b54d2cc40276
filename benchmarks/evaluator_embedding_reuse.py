"""Claim: evaluating from an embedding set made by the same checkpoint gives the same
numbers as evaluating from the image shards, without decoding an image — measured as the
wall-time ratio shards / embeddings in one run (this machine is shared: ratios, not times).

Prints one JSON object; never fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--split", default="test_natural")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny preset, one repeat")
    args = ap.parse_args(argv)

    import torch

    from clipaudit.embeddings import EmbeddingSetWriter
    from clipaudit.synth import generate
    from services.evaluator.checkpoints import load_model
    from services.evaluator.encoding import encode_test_set
    from services.evaluator.handler import Evaluator
    from services.evaluator.testsets import open_test_set

    preset = "tiny" if args.quick else args.preset
    repeats = 1 if args.quick else args.repeats
    work = Path(tempfile.mkdtemp(prefix="ev-reuse-"))
    generate(preset, str(work / "synth"), seed=0, progress=False)
    split = str(work / "synth" / args.split)

    model = load_model("clipaudit-tiny", device=args.device)
    enc = encode_test_set(model, open_test_set(split))
    w = EmbeddingSetWriter(work / "emb", model_id=model.model_id, dim=enc.outputs.shape[1], dtype="float32")
    w.write_part("0", enc.outputs, enc.metadata)
    classes = json.loads((work / "synth" / "collection.json").read_text())["classes"]

    def run(location: str, tag: str) -> tuple[float, dict]:
        best, rep = float("inf"), None
        for r in range(repeats):
            t0 = time.perf_counter()
            ref = Evaluator().evaluate({"checkpoint": "clipaudit-tiny", "test_sets": [location],
                                        "out": str(work / f"{tag}{r}"),
                                        "spec": {"classnames": classes, "device": args.device}})
            best = min(best, time.perf_counter() - t0)
            rep = json.loads(Path(ref.uri).read_text())["test_sets"][0]
        return best, rep

    t_shards, r_shards = run(split, "shards")
    t_emb, r_emb = run(str(work / "emb"), "emb")
    print(json.dumps({
        "claim": "embedding-set evaluation equals shard evaluation and skips decoding",
        "preset": preset, "split": args.split, "images": r_shards["n"],
        "same_numbers": r_shards["overall"] == r_emb["overall"]
                        and r_shards["breakdowns"].get("class") == r_emb["breakdowns"].get("class"),
        "top1": r_shards["overall"]["top1"],
        "seconds_from_shards": round(t_shards, 3), "seconds_from_embeddings": round(t_emb, 3),
        "ratio_shards_over_embeddings": round(t_shards / t_emb, 2),
        "note": "both include loading the model and encoding the 80-template text classifier",
        "loadavg": os.getloadavg(), "torch_threads": torch.get_num_threads(), "device": args.device,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
