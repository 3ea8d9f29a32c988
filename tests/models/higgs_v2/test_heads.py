"""The heads run only where labels are: a training step's forward and backward (and evaluation, which calls the same
heads) never builds text logits or audio logits for every position of the batch. The class's own forward does, which
shows the probe sees them."""

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from higgs_ds.config import LoraConfig


class LargestLogits(TorchDispatchMode):
    """The most rows any tensor the ops produce has with a last dimension of the text head's width (or the audio
    head's, also split as (codebooks, codebook_size)), counting every leading dimension as rows; the heads' weights
    and their transposes (hidden_size rows) are not logits and are left out."""

    def __init__(self, text_width: int, codebooks: int, codebook_size: int, hidden_size: int):
        super().__init__()
        self.text_width, self.audio, self.hidden = text_width, (codebooks, codebook_size), hidden_size
        self.rows = {"text": 0, "audio": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] != self.hidden:
                shape = tuple(t.shape)
                if shape[-1] == self.text_width:
                    self.rows["text"] = max(self.rows["text"], t.numel() // shape[-1])
                if shape[-1] == self.audio[0] * self.audio[1] or shape[-2:] == self.audio:
                    self.rows["audio"] = max(self.rows["audio"], t.numel() // (self.audio[0] * self.audio[1]))
        return out


def test_a_step_never_builds_logits_for_every_position(native_model):
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.models.higgs_v2.backend import BACKEND

    _, model, reader = native_model
    cfg = model.config
    text_width = model.text_lm_head.out_features
    assert text_width not in (cfg.hidden_size, cfg.intermediate_size)  # the probe tells the head's rows apart
    torch.manual_seed(0)
    lora = apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0, modules_to_save=["audio_lm_head"]),
                      BACKEND.lora_presets)
    batch = reader.collate(np.array([0, 4, 8]))  # references, padding: three samples of different lengths
    positions = batch.input_ids.numel()
    labelled_text, labelled_audio = len(batch.text_positions), len(batch.audio_positions)
    assert int(batch.attention_mask.sum()) < positions and labelled_text < positions // 10

    probe = LargestLogits(text_width, cfg.num_codebooks, cfg.codebook_size, cfg.hidden_size)
    with probe:
        out = BACKEND.heads(lora, batch)
        (out.sums.text_sum + out.sums.audio_sum).backward()
    assert probe.rows == {"text": labelled_text, "audio": labelled_audio}, (probe.rows, positions)
    assert labelled_audio < positions

    full = LargestLogits(text_width, cfg.num_codebooks, cfg.codebook_size, cfg.hidden_size)
    with full, torch.no_grad():
        lora.get_base_model()(**batch.model_inputs())
    assert full.rows["audio"] >= positions  # the class's own forward: the audio head at every position
