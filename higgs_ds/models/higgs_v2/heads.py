"""The loss heads of HiggsAudioV2ForConditionalGeneration, applied only where a label is.

The class's own forward applies the audio head (codebooks x 1026) at every position, and the text head (128,256
at real size) would go the same way; a voice-cloning sample has a few text labels among hundreds of positions.
Here the decoder runs once, then each head sees just the hidden states of the positions that predict one of its
labels (NativeBatch's targets), in fp32 from there on. A LoRA or a fully trained copy on a head still applies: the
head modules are called as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from higgs_ds.data.collate import IGNORE
from higgs_ds.models.backend import HeadOutputs, base_model
from higgs_ds.models.higgs_v2.inputs import NativeBatch
from higgs_ds.models.sums import TokenSums, audio_cross_entropy


def hidden_states(model, batch: NativeBatch) -> torch.Tensor:
    """The decoder's last hidden states, (B * W, hidden): no head applied."""
    out = base_model(model).model(**batch.model_inputs())
    return out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])


def text_logits(model, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return base_model(model).text_lm_head(hidden.index_select(0, positions)).float()


def audio_logits(model, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(positions, codebooks, codebook_size) fp32 logits."""
    base = base_model(model)
    logits = base.audio_lm_head(hidden.index_select(0, positions)).float()
    return logits.view(len(positions), base.config.num_codebooks, base.config.codebook_size)


def token_sums(model, batch: NativeBatch) -> TokenSums:
    """Summed text and audio cross-entropies of one micro-batch and their label counts."""
    return forward(model, batch).sums


def forward(model, batch: NativeBatch) -> HeadOutputs:
    """The decoder once, the heads where labels are: the loss sums, and the audio logits with their targets."""
    hidden = hidden_states(model, batch)
    text = text_logits(model, hidden, batch.text_positions)
    text_sum = F.cross_entropy(text, batch.text_targets, reduction="sum")
    audio = audio_logits(model, hidden, batch.audio_positions)
    targets = batch.audio_targets
    audio_sum, codebook_sums, codebook_tokens = audio_cross_entropy(audio, targets, IGNORE)
    text_tokens = batch.text_targets.new_tensor(text.shape[0])
    sums = TokenSums(text_sum, audio_sum, codebook_sums, text_tokens, codebook_tokens.sum(), codebook_tokens)
    return HeadOutputs(sums, audio.detach(), targets)
