"""higgs-ds: LoRA fine-tuning of Higgs-Audio v2 on GPU clusters with DeepSpeed over pre-tokenized shards."""

__version__ = "0.1.0"
