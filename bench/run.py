"""`make bench`: every CPU benchmark, each section's table printed as it finishes, with its time. Figures are ratios
against baselines measured in the same run."""

from __future__ import annotations

import os
import platform
import sys
import time

from bench import corpora, flops, loader, memory, shards, synth, train
from bench.common import PRECISION, WORK, bf16_matrix_units, table


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # a piped `make bench | tee` shows each section as it lands
    WORK.mkdir(parents=True, exist_ok=True)
    native = bf16_matrix_units()
    print(f"higgs-ds benchmarks on {platform.machine()}, {os.cpu_count()} cores, bf16 matrix units: "
          f"{'yes' if native else 'no (torch would emulate bf16)'}; training and listening runs in {PRECISION}")
    t0 = time.time()
    for title, section in (("FLOPs of a training step", flops.main),
                           ("peak memory of a real-size step, traced", memory.main), ("corpus import", corpora.main),
                           ("shard build", shards.main), ("loader", loader.main), ("training", train.main),
                           ("synthesis and listening", synth.main)):
        start = time.time()
        rows = section()
        table(f"{title} ({time.time() - start:.0f} s)", rows)
    print(f"\nall sections: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
