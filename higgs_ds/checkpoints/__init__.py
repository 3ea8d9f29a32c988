"""Model weights in and out: hub ids pinned to revisions (hub), the transformers-native layout converted once into a
cache (layouts, native, native_codec), the model with LoRA (model), a run's DeepSpeed checkpoints (saving), and
adapters and merged models for boson_multimodal or transformers (export). Imports nothing from data, listening or
training."""
