"""`make bench`: every CPU benchmark, one table. Figures are ratios against baselines measured in the same run."""

from __future__ import annotations

import platform
import time

from bench import corpora, loader, shards, synth, train
from bench.common import WORK


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sections = [("corpus import", corpora.main()), ("shard build", shards.main()), ("loader", loader.main()),
                ("training", train.main()), ("synthesis and listening", synth.main())]
    import os

    print(f"\nhiggs-ds benchmarks on {platform.machine()}, {os.cpu_count()} cores, {time.time() - t0:.0f} s")
    for title, rows in sections:
        print(f"\n== {title}")
        w = max(len(r[0]) for r in rows)
        for name, value, note in rows:
            print(f"  {name:<{w}}  {value:>14}  {note}")


if __name__ == "__main__":
    main()
