"""The train loop and what it needs: the loop (loop), the run directory it owns (run_dir), pre-flight checks of the
model against the data (preflight), losses (loss), per-step statistics (stats), evaluations and the best checkpoint
(evaluation, best), metrics and logs (metrics). `higgs_ds/train.py` is its command line."""
