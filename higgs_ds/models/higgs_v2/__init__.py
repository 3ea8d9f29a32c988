"""Higgs-Audio v2 on transformers' own class (HiggsAudioV2ForConditionalGeneration, transformers >= 5.3): its inputs
from our samples (inputs), the loss heads applied only where labels are (heads), loading and LoRA (model)."""
