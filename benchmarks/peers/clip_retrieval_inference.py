"""`clip-retrieval inference` on a random-init checkpoint, timed — for benchmarks only.

Runs inside the peer virtualenv (benchmarks/peers/clip_retrieval_venv.sh), never in
clipaudit's own:

    ~/.cache/clipaudit/peers/clip-retrieval/bin/python benchmarks/peers/clip_retrieval_inference.py \\
        --model ViT-B-32 --checkpoint /tmp/vitb32-init0.pt --input-dataset '/data/bench-{000000..000001}.tar' \\
        --output-folder /tmp/peer --batch-size 256 --workers 2 --timing-out /tmp/peer-timing.json

It calls clip-retrieval's own entry point (``clip_retrieval.clip_inference.main.main``,
what the ``clip-retrieval inference`` command runs) with
``clip_model="open_clip:<name>/<checkpoint>"``, so clip-retrieval builds the model
with open_clip and loads the weights file itself. Two things are added, nothing in its
pipeline is changed:

* ``--model-config``: a JSON architecture (our clipaudit-tiny) is registered with
  open_clip's ``add_model_config`` first, so clip-retrieval can build it by name
  (``--timm-towers`` loads clipaudit/convnet.py by path for the timm tower it names);
* timing: the whole call (``main_s``); its steady-state loop (``loop_s``), from the
  moment its runner starts iterating the reader (DataLoader workers starting) to the
  return of the last batch's write call — the span ``clipaudit embed`` reports as its
  loop; and what follows the loop (``after_loop_s``: its final flush and the join of
  its stats-logger processes, which are spawned and import all of clip_retrieval).
  The interpreter's start (``started_at``, wall clock) is written too, so the caller
  can split the command's wall time into start-up, loop and tear-down.
"""

from __future__ import annotations

import time

STARTED_AT = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


class TimedWriter:
    """clip-retrieval's writer, unchanged, with the time its last batch was written."""

    def __init__(self, inner, span: dict):
        self.inner, self.span = inner, span

    def __call__(self, batch):
        self.inner(batch)
        self.span["last_batch"] = time.time()
        self.span["batches"] = self.span.get("batches", 0) + 1

    def flush(self):
        return self.inner.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="open_clip architecture name (or the stem of --model-config)")
    ap.add_argument("--checkpoint", required=True, help="a state-dict file both tools load")
    ap.add_argument("--model-config", default=None, help="JSON config registered with open_clip.add_model_config")
    ap.add_argument("--timm-towers", default=None,
                    help="a .py file (clipaudit/convnet.py) whose register() adds image towers to timm")
    ap.add_argument("--input-dataset", required=True, help="brace-expandable list of .tar shards")
    ap.add_argument("--output-folder", required=True)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="clip-retrieval's num_prepro_workers")
    ap.add_argument("--timing-out", required=True, help="JSON file with the timings")
    args = ap.parse_args(argv)

    t_import = time.time()
    import open_clip
    from clip_retrieval.clip_inference import main as cr_main
    from clip_retrieval.clip_inference.runner import Runner

    if args.timm_towers:
        import importlib.util

        spec = importlib.util.spec_from_file_location("clipaudit_towers", args.timm_towers)
        towers = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = towers   # timm's register_model looks its module up by name
        spec.loader.exec_module(towers)
        towers.register()
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    imported_at = time.time()

    span: dict[str, float] = {}
    original_call = Runner.__call__

    def timed_call(self, i):
        build = self.reader_builder

        def reader_builder(sampler):
            reader = build(sampler)
            original_iter = reader.__iter__

            def timed_iter():
                span.setdefault("loop_start", time.time())
                return original_iter()

            reader.__iter__ = timed_iter   # Runner calls reader.__iter__() explicitly
            return reader

        self.reader_builder = reader_builder
        build_writer = self.writer_builder
        self.writer_builder = lambda part: TimedWriter(build_writer(part), span)
        try:
            return original_call(self, i)
        finally:
            span["loop_end"] = time.time()

    Runner.__call__ = timed_call
    t0 = time.time()
    cr_main.main(
        input_dataset=args.input_dataset, output_folder=args.output_folder, input_format="webdataset",
        batch_size=args.batch_size, num_prepro_workers=args.workers, enable_text=False, enable_metadata=False,
        write_batch_size=10 ** 7, clip_model=f"open_clip:{args.model}/{args.checkpoint}", use_jit=False,
    )
    t1 = time.time()
    looped = "loop_start" in span and "last_batch" in span
    out = {"started_at": STARTED_AT, "import_s": imported_at - t_import, "main_s": t1 - t0,
           "loop_s": span["last_batch"] - span["loop_start"] if looped else None,
           "before_loop_s": span["loop_start"] - STARTED_AT if looped else None,
           "after_loop_s": t1 - span["last_batch"] if looped else None, "batches": span.get("batches", 0),
           "ended_at": t1, "pid": os.getpid(), "python": sys.version.split()[0],
           "open_clip": open_clip.__version__}
    with open(args.timing_out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
