"""Run by tests/test_distill_runs.py under ``accelerate launch``: one tiny DistillSpec run into OUT, optionally
with a time limit in minutes for process 0 and another for the others (their clocks disagree); each process
prints what its summary says of a stop, as JSON."""

import json
import os
import sys

from specadapt.distill.train import DistillSettings, run_distill

SETTINGS = dict(method="distillspec", max_steps=2, batch_size=4, micro_batch_size=2, precision="fp32", progress=False,
                device="cpu", logging_steps=1, cache_top_k=8, save_steps=100)

if __name__ == "__main__":
    target, data, out = sys.argv[1:4]
    limits = [float(x) for x in sys.argv[4:6]]
    time_limit = (limits[0] if os.environ.get("RANK", "0") == "0" else limits[-1]) if limits else None
    summary = run_distill(target, "shallow:1", data, out, DistillSettings(**SETTINGS, time_limit=time_limit),
                          log=lambda m: None)
    # One write of the whole line: the two processes share the pipe, and print() writes the line break apart.
    sys.stdout.write("SUMMARY " + json.dumps({"stopped": summary.get("stopped")}) + "\n")
    sys.stdout.flush()
