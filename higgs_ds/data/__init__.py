"""The data path, in order: corpora -> utterance manifests (corpora, splits) -> ChatML records (chatml) -> audio codes
(codec) -> WebDataset shards and their index (shards, sample_format, shard_index, shard_check) -> an epoch's batches
(plan) -> collated micro-batches streamed to each rank (collate, loader). Imports nothing from listening or
training."""
