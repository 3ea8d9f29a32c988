"""Hearing what a model says: prompts (prompts), generation (synthesis), speaker similarity, WER/CER and DNSMOS
(scoring), the listening evaluation during training (listen_eval) and RUN/report.html (report). Imports nothing from
training."""
