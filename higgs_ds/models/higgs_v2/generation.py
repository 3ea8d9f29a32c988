"""Speech from HiggsAudioV2ForConditionalGeneration and a voice prompt, through transformers' own generate.

The prompt is the ChatML of a cloning record up to the assistant's <|audio_out_bos|>, its reference clips expanded
as in training (NativeCollator, unpadded); generate then adds one audio frame a step (the class's delay-pattern
logits processor ramps the stream bos in and the eos out) until every codebook has ended. The frames after the
prompt's are the delayed stream [bos, codes, eos]: reverting the delay and keeping the codes before codebook 0's eos
gives the (codebooks, T) codes the audio tokenizer decodes, as boson_multimodal's serve engine does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from higgs_ds.data.collate import IGNORE, CollatorSettings, Sample
from higgs_ds.models.higgs_v2.inputs import NativeBatch, NativeCollator


def prompt_inputs(settings: CollatorSettings, audio_token_id: int, ids: list[int],
                  ref_codes: list[np.ndarray]) -> NativeBatch:
    """The native inputs of one prompt: token IDS (ending with <|audio_out_bos|>) whose audio tokens are the
    reference clips REF_CODES (codebooks, frames each), with no padding."""
    codes = np.concatenate(ref_codes, axis=1) if ref_codes else np.zeros((settings.num_codebooks, 0), np.int64)
    sample = Sample(np.asarray(ids, np.int64), np.full(len(ids), IGNORE, np.int64), codes,
                    np.array([c.shape[1] for c in ref_codes], np.int64))
    return NativeCollator(dataclasses.replace(settings, round_to=1), audio_token_id)([sample])


def revert_delay(stream: np.ndarray) -> np.ndarray:
    """(frames, codebooks) delayed stream -> (codebooks, frames - codebooks + 1): codebook k shifted back by k."""
    frames, num_codebooks = stream.shape
    width = frames - num_codebooks + 1
    return np.stack([stream[k:k + width, k] for k in range(num_codebooks)])


@torch.no_grad()
def generate_stream(model, inputs: NativeBatch, max_new_frames: int, temperature: float = 0.7,
                    top_p: float | None = 0.95, top_k: int | None = None, ras_win_len: int | None = 7,
                    ras_win_max_num_repeat: int = 2) -> np.ndarray:
    """The generated frames (frames, codebooks) after the prompt's: temperature 0 is greedy; RAS (repetition-aware
    sampling) resamples a code repeated ras_win_max_num_repeat times in the last ras_win_len frames."""
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(**inputs.model_inputs(), max_new_tokens=max_new_frames, use_cache=True,
                         ras_win_len=ras_win_len or None, ras_win_max_num_repeat=ras_win_max_num_repeat, **sampling)
    return out[0, inputs.audio_input_ids.shape[1]:].cpu().numpy()  # appended after the prompt's columns


def stream_codes(stream: np.ndarray, codebook_size: int, eos: int) -> np.ndarray:
    """The codes a generated stream [bos, codes, eos] decodes from, (codebooks, T), as boson_multimodal's serve engine
    takes them: the delay reverted and clipped to the codebook, the bos column dropped, and T the codes before
    codebook 0's eos (transformers' delay processor lets codebooks 1-7 draw one code more after it: that column is
    no frame). A stream cut short by the frame budget loses its last column, as boson's decode drops it."""
    if stream.shape[0] <= stream.shape[1]:
        return np.zeros((stream.shape[1], 0), np.int64)
    codes = revert_delay(stream).clip(0, codebook_size - 1)
    ended = np.flatnonzero(stream[:, 0] == eos)
    frames = int(ended[0]) - 1 if len(ended) else codes.shape[1] - 2
    return codes[:, 1:1 + max(0, frames)]
