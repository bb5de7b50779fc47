"""Profile one training step of the quickstart (step 4 of 5, fp32) and print torch.profiler's op table.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python scripts/profile_train_step.py [--precision fp32]

The environment variables restrict torch to AVX2 kernels on a CPU that has more (what a CPU without
native bf16 runs). Figures: docs/training.md, "Where an fp32 step goes".
"""

from __future__ import annotations

import argparse
import tempfile

from torch.profiler import ProfilerActivity, profile

from tunesmith.events import Events
from tunesmith.quickstart import run_quickstart
from tunesmith.train import trainer

PROFILED_STEP = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    plain = trainer.Trainer.train_step

    def train_step(self, step):
        if step != PROFILED_STEP:
            return plain(self, step)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = plain(self, step)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
        return out

    trainer.Trainer.train_step = train_step
    with tempfile.TemporaryDirectory() as out:
        run_quickstart(out, ["train.max_steps=5", f"train.precision={args.precision}", "eval.enabled=false",
                             "output.merge=false"], events=Events())


if __name__ == "__main__":
    main()
