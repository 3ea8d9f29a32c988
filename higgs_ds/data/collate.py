"""What every model family's collator builds on: a training sample as the loader hands it over, the settings its
audio tokens were laid out under, and the delay pattern's audio stream segments (models/<family>/inputs.py turns
these into the model's own batches)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # label of positions that are not trained


@dataclass
class Sample:
    """One training sample: ChatML token ids with their labels, and the codes of its audio clips (in the order of
    their <|AUDIO|> / <|AUDIO_OUT|> tokens), concatenated along time."""
    input_ids: np.ndarray  # int64 (L,)
    label_ids: np.ndarray  # int64 (L,)
    codes: np.ndarray  # int (codebooks, sum of frames)
    frames: np.ndarray  # int64 (clips,): frames of each clip


@dataclass(frozen=True)
class CollatorSettings:
    audio_in_token_id: int
    audio_out_token_id: int
    pad_token_id: int
    audio_stream_bos_id: int
    audio_stream_eos_id: int
    num_codebooks: int
    use_delay_pattern: bool
    return_audio_in_tokens: bool
    round_to: int = 8

    @property
    def clip_overhead(self) -> int:
        """Sequence positions an audio clip takes beyond its frames: stream bos + eos, and the delay pattern's
        extra steps (one per codebook after the first)."""
        return 2 + (self.num_codebooks - 1 if self.use_delay_pattern else 0)

    @classmethod
    def from_config(cls, config) -> "CollatorSettings":
        if config.encode_whisper_embed and not config.skip_audio_tower:
            raise ValueError("this model encodes reference audio with Whisper features; higgs-ds shards hold audio "
                             "codes only (Higgs-Audio v2 uses encode_audio_in_tokens)")
        return cls(audio_in_token_id=config.audio_in_token_idx, audio_out_token_id=config.audio_out_token_idx,
                   pad_token_id=config.pad_token_id, audio_stream_bos_id=config.audio_stream_bos_id,
                   audio_stream_eos_id=config.audio_stream_eos_id, num_codebooks=config.audio_num_codebooks,
                   use_delay_pattern=config.use_delay_pattern, return_audio_in_tokens=config.encode_audio_in_tokens)


def delayed_segments(codes: np.ndarray, start: np.ndarray, frames: np.ndarray, trained: np.ndarray | None,
                     s: CollatorSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The clips codes[:, start:start + frames] as audio stream segments laid end to end: (ids (codebooks, total),
    segment starts, labels or None). A segment is [bos, codes, eos] with codebook k shifted right by k under the
    delay pattern; its labels are the codes and one eos per codebook, -100 elsewhere and all -100 for a clip that
    is not `trained`."""
    delay = np.arange(len(codes))[:, None] if s.use_delay_pattern else np.zeros((len(codes), 1), np.int64)
    seg_len = frames + 2 + int(delay[-1, 0])  # bos, codes, eos, then the delay of the last codebook
    seg_start = np.cumsum(seg_len) - seg_len
    total = int(seg_len.sum())
    local = np.arange(total) - np.repeat(seg_start, seg_len)  # position inside its segment
    n_codes = int(frames.sum())
    first_code = np.cumsum(frames) - frames  # of each clip in the gathered codes
    t = np.arange(n_codes) - np.repeat(first_code, frames)  # frame of each gathered code within its clip
    src = np.repeat(start, frames) + t
    dst = np.repeat(seg_start, frames) + 1 + t  # column of each code before the delay shift
    gathered = codes[:, src].astype(np.int64)
    rows, cols = np.arange(len(codes))[:, None], dst[None, :] + delay

    ids = np.full((len(codes), total), s.audio_stream_eos_id, np.int64)
    ids[local[None, :] <= delay] = s.audio_stream_bos_id
    ids[rows, cols] = gathered
    labels = None
    if trained is not None:
        labels = np.full((len(codes), total), IGNORE, np.int64)
        labels[rows, cols] = gathered
        labels[rows, (seg_start + 1 + frames)[None, :] + delay] = s.audio_stream_eos_id
        labels[:, ~np.repeat(trained, seg_len)] = IGNORE
    return ids, seg_start.astype(np.int64), labels
