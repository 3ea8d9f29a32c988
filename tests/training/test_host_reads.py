"""Host reads in the train step: the step's numbers stay on the device until after the optimizer step, then come
to the host once. On a GPU each read (.item(), .tolist(), float(t), .cpu(), ...) waits for every kernel queued
before it, so the budget is one read per optimizer step whatever the accumulation. Counted on CPU with
torch.Tensor's read methods wrapped; the run is a real 2-rank DeepSpeed run over gloo."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, free_port, read_run, train_overrides

pytestmark = pytest.mark.slow

BUDGET = {"higgs_ds:StepStats.all_reduced": 1}  # ours, per optimizer step: one read, after engine.step()
STEPS, ACCUM = 4, 3


@pytest.fixture(scope="module")
def probed_run(fixtures_dir, shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host-reads")
    run, out = tmp / "run", tmp / "reads"
    port = free_port()
    args = [sys.executable, str(REPO / "tests/training/host_reads_probe.py"), "--deepspeed", "ds_configs/zero2.json",
            *train_overrides(fixtures_dir, shards, run, steps=STEPS, grad_accum=ACCUM, **{"lora.dropout": 0.1})]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "HOST_READS_OUT": str(out),
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-6000:]
    return run, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_one_host_read_per_optimizer_step(probed_run):
    run, ranks = probed_run
    rows, _, _ = read_run(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and all(r["grad_norm"] > 0 for r in rows)
    for rank, result in enumerate(ranks):
        assert len(result["per_step"]) == STEPS
        for step, reads in enumerate(result["per_step"], 1):
            ours = {k: v for k, v in reads.items() if k.startswith("higgs_ds:")}
            libraries = {k: v for k, v in reads.items() if k not in ours}
            assert ours == BUDGET, f"rank {rank} step {step}: ours {ours}, budget {BUDGET} (libraries: {libraries})"
    print(f"host reads a step, rank 0, step 2: {ranks[0]['per_step'][1]}; in libraries, over {STEPS} steps: "
          f"{ranks[0]['library_lines']}")


def test_losses_and_sums_are_bit_identical_to_host_arithmetic(probed_run):
    """Each micro-batch's loss from the device counts equals the loss from the counts read to the host, and the
    step's device sums equal the float64 sums of each value read to the host: today's numbers, unchanged."""
    _, ranks = probed_run
    for rank, result in enumerate(ranks):
        assert result["mismatches"] == [], f"rank {rank}: {result['mismatches'][:3]}"
