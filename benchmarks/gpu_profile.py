"""Where a GPU training step of Sprout's trainer spends its time (torch.profiler over 3 steady steps).

    python benchmarks/gpu_profile.py MODEL [--batch-size 16] [--steps 14]

The job is train_vs_trl.py's (same synthetic rows, LoRA r=16 on all 7 linears). Prints each step's
wall time, the GPU-busy share of the profiled steps (summed kernel time over their wall time: low
means the GPU waits on the host), and the ops that take the most GPU and CPU time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from train_vs_trl import write_data
    from trainer.config import TrainConfig
    from trainer.train import Hooks, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=14)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sprout-prof-"))
    write_data(work, a.steps * a.batch_size, 8)
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    first, last, stamps = a.steps - 3, a.steps, []

    def on_step(step, record):
        stamps.append((time.perf_counter(), record["step_seconds"], record["tokens_per_s"]))
        if step == first:  # profile the last three steps
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            prof.start()
        if step == last:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            prof.stop()

    cfg = TrainConfig(data=str(work / "train.jsonl"), out=str(work / "out"), model=a.model, max_steps=a.steps,
                      batch_size=a.batch_size, max_length=512, lr=2e-4, schedule="linear", warmup_ratio=0.0,
                      lora_r=16, lora_alpha=32, lora_dropout=0.05, eval_fraction=0.0, eval_every=0, save_every=0,
                      progress=False, seed=0, overwrite=True)
    train(cfg, Hooks(on_step=on_step))
    print("step seconds / tokens per s: " + ", ".join(f"{s:.3f}/{t:.0f}" for _, s, t in stamps))
    events = prof.key_averages()
    wall_us = (stamps[last - 1][0] - stamps[first - 1][0]) * 1e6
    gpu_us = sum(e.self_device_time_total for e in events) or 1
    print(f"profiled steps {first + 1}-{last}: wall {wall_us / 1e3:.0f} ms, summed GPU kernel time "
          f"{gpu_us / 1e3:.0f} ms ({gpu_us / wall_us:.0%} GPU-busy)")
    print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
