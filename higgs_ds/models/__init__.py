"""Model families, one folder each: how a family's model loads and takes LoRA, how a sample becomes its inputs
and labels, and which heads give the loss. Imports from checkpoints and data; nothing from listening or training."""
