#!/usr/bin/env bash
# sbatch --array=0-15 slurm/build_shards.sh --input MANIFEST --out DIR --audio-tokenizer ID [build options ...]
# Each array task builds the disjoint part I/N of one shard set (`higgs-ds shards build --part I/N`); the part that
# finishes last joins the index. A re-run (or requeue) of a task keeps its finished shards. If tasks ended in
# different orders, join explicitly afterwards: higgs-ds shards merge DIR
#SBATCH --job-name=higgs-ds-shards
#SBATCH --array=0-7
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
HIGGS_DS=${HIGGS_DS:-higgs-ds}   # e.g. ".venv/bin/higgs-ds"
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array}"
PART="$SLURM_ARRAY_TASK_ID/${SLURM_ARRAY_TASK_COUNT:-$((SLURM_ARRAY_TASK_MAX + 1))}"
echo "[build_shards.sh] array job $SLURM_ARRAY_JOB_ID part $PART"
exec $HIGGS_DS shards build --part "$PART" --workers "${SLURM_CPUS_PER_TASK:-4}" "$@"
