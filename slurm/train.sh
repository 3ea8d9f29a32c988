#!/usr/bin/env bash
# sbatch slurm/train.sh CONFIG [key=value ...]
# One training process per GPU on every node (srun), master address/port from the allocation. SLURM sends SIGUSR1
# 180 s before the time limit: training saves at the next step boundary on all ranks, exits 3, and this script
# requeues the job, which resumes from that checkpoint. A rank that dies ends every task at once (--kill-on-bad-exit).
# Edit the #SBATCH lines or override them: sbatch --nodes=4 --time=12:00:00 slurm/train.sh CONFIG ...
#SBATCH --job-name=higgs-ds
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch slurm/train.sh CONFIG [key=value ...]" >&2; exit 2; }
CONFIG=$1; shift
PYTHON=${PYTHON:-python}   # a command: .venv/bin/python, or "apptainer exec --nv higgs-ds.sif python"
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export HIGGS_DS_DIST_TIMEOUT=${HIGGS_DS_DIST_TIMEOUT:-300}   # a rank lost without exiting fails the job after this
echo "[train.sh] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: $SLURM_JOB_NUM_NODES nodes x $SLURM_NTASKS_PER_NODE tasks, master $MASTER_ADDR:$MASTER_PORT"
# SRUN_ARGS: extra srun options, e.g. pyxis: SRUN_ARGS="--container-image=higgs-ds.sqsh --container-mounts=$PWD:$PWD"
# rank 0 writes this file once every rank has saved the stop checkpoint: when the first rank to exit (code 3) makes
# srun end the others (--kill-on-bad-exit), srun may report their signal instead of 3
export HIGGS_DS_STOP_FILE="$PWD/.higgs-ds-stopped.$SLURM_JOB_ID"
rm -f "$HIGGS_DS_STOP_FILE"
srun ${SRUN_ARGS:-} --kill-on-bad-exit=1 --cpu-bind=none $PYTHON higgs_ds/train.py --deepspeed "$DS_CONFIG" --config "$CONFIG" "$@"
rc=$?
if [ "$rc" = 3 ] || [ -f "$HIGGS_DS_STOP_FILE" ]; then   # stopped on the time-limit warning or preemption
  rm -f "$HIGGS_DS_STOP_FILE"
  echo "[train.sh] checkpoint saved (srun exit code $rc); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$rc"
