"""Run by tests/test_distill_runs.py under ``accelerate launch``: one tiny DistillSpec run into OUT."""

import sys

from specadapt.distill.train import DistillSettings, run_distill

SETTINGS = dict(method="distillspec", max_steps=2, batch_size=4, micro_batch_size=2, precision="fp32", progress=False,
                device="cpu", logging_steps=1, cache_top_k=8, save_steps=100)

if __name__ == "__main__":
    target, data, out = sys.argv[1:4]
    run_distill(target, "shallow:1", data, out, DistillSettings(**SETTINGS), log=lambda m: None)
