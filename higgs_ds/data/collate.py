"""Samples -> model batches (boson_multimodal's HiggsAudioBatchInput).

Two collators produce the same batches from the same samples:
- `BatchCollator` (default): whole-batch numpy, about 40 array operations per batch whatever its size;
- `BosonCollator`: boson_multimodal's HiggsAudioSampleCollator, the reference. It runs ~20 torch operations per
  audio clip (the delay pattern alone builds four masks per clip), which made it 60% of the loader's time.
Training checks them against each other on the first samples of its data (`check_collator`); tests on many.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

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


def make_collator(config, kind: str = "fast"):
    """The collator for this model config: "fast" (BatchCollator) or "boson" (HiggsAudioSampleCollator)."""
    settings = CollatorSettings.from_config(config)
    if kind == "fast":
        return BatchCollator(settings)
    if kind == "boson":
        return BosonCollator(settings)
    raise ValueError(f"data.collator: {kind!r} is not one of 'fast', 'boson'")


class BosonCollator:
    """boson_multimodal's HiggsAudioSampleCollator on our samples (fresh ChatMLDatasetSamples every call: it masks
    labels in place)."""

    def __init__(self, settings: CollatorSettings):
        from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator

        s = self.settings = settings
        self.collator = HiggsAudioSampleCollator(
            whisper_processor=None, audio_in_token_id=s.audio_in_token_id, audio_out_token_id=s.audio_out_token_id,
            pad_token_id=s.pad_token_id, audio_stream_bos_id=s.audio_stream_bos_id,
            audio_stream_eos_id=s.audio_stream_eos_id, round_to=s.round_to, pad_left=False,
            encode_whisper_embed=False, return_audio_in_tokens=s.return_audio_in_tokens,
            audio_num_codebooks=s.num_codebooks, use_delay_pattern=s.use_delay_pattern,
            disable_audio_codes_transform=False, mask_audio_out_token_label=True)

    def __call__(self, samples: list[Sample]):
        from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

        batch = []
        for s in samples:
            starts = np.concatenate([[0], np.cumsum(s.frames)[:-1]]).astype(np.int64)
            batch.append(ChatMLDatasetSample(
                input_ids=torch.tensor(s.input_ids, dtype=torch.long),
                label_ids=torch.tensor(s.label_ids, dtype=torch.long),
                audio_ids_concat=torch.from_numpy(s.codes.astype(np.int64)), audio_ids_start=torch.from_numpy(starts),
                audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
                audio_sample_rate=torch.zeros(0), audio_speaker_indices=torch.zeros(0, dtype=torch.long)))
        return self.collator(batch)


class BatchCollator:
    """The batches of HiggsAudioSampleCollator (as configured by BosonCollator), built for the whole batch at once.

    Each audio clip becomes a segment [bos, codes, eos] that, with the delay pattern, has codebook k shifted right
    by k (bos before, eos after): row k at local position u holds bos for u <= k, the codes for k < u <= k + T,
    and eos after. Labels are the same with -100 for bos and for the delay padding after eos, and all -100 for a
    segment whose <|AUDIO_OUT|> token is not trained. group_loc is one entry per sample, as boson's collator has it.
    """

    def __init__(self, settings: CollatorSettings):
        self.settings = settings

    def __call__(self, samples: list[Sample]):
        from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioBatchInput

        s = self.settings
        lengths = np.array([len(x.input_ids) for x in samples])
        width = int(-(-lengths.max() // s.round_to) * s.round_to)
        ids = np.concatenate([x.input_ids for x in samples], dtype=np.int64)
        labels = np.concatenate([x.label_ids for x in samples], dtype=np.int64)  # a copy: masked below

        is_in, is_out = ids == s.audio_in_token_id, ids == s.audio_out_token_id
        clip_out = is_out[is_in | is_out]  # per clip of the batch, in order: audio out (True) or in (False)
        trained = labels[is_out] >= 0  # per audio-out clip
        labels[is_out] = IGNORE

        filled = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(samples), width), s.pad_token_id, np.int64)
        input_ids[filled] = ids
        label_ids = np.full((len(samples), width), IGNORE, np.int64)
        label_ids[filled] = labels

        frames = np.concatenate([x.frames for x in samples]).astype(np.int64)
        if len(frames) != len(clip_out):
            raise ValueError(f"batch has {len(clip_out)} audio tokens but {len(frames)} audio clips")
        codes = np.concatenate([x.codes[:s.num_codebooks] for x in samples], axis=1)
        clip_start = np.cumsum(frames) - frames

        out = self._segments(codes, clip_start[clip_out], frames[clip_out], trained)
        if s.return_audio_in_tokens:
            audio_in, audio_in_start, _ = self._segments(codes, clip_start[~clip_out], frames[~clip_out], None)
        else:
            audio_in = audio_in_start = None
        audio_out, audio_out_start, label_audio = out
        any_out = bool(clip_out.any())
        return HiggsAudioBatchInput(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(filled.astype(np.int64)),
            audio_features=None, audio_feature_attention_mask=None,
            audio_out_ids=audio_out, audio_out_ids_start=audio_out_start,
            audio_out_ids_start_group_loc=torch.arange(len(samples)) if any_out else None,
            audio_in_ids=audio_in, audio_in_ids_start=audio_in_start,
            label_ids=torch.from_numpy(label_ids), label_audio_ids=label_audio,
            reward=torch.zeros(0, dtype=torch.float32))

    def _segments(self, codes: np.ndarray, start: np.ndarray, frames: np.ndarray, trained: np.ndarray | None):
        """(segments, segment starts, labels or None) of the clips codes[:, start:start + frames], as tensors."""
        if len(frames) == 0:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return empty, torch.zeros(0, dtype=torch.long), empty
        ids, seg_start, labels = delayed_segments(codes, start, frames, trained, self.settings)
        return (torch.from_numpy(ids), torch.from_numpy(seg_start),
                None if labels is None else torch.from_numpy(labels))


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


def batch_differences(a, b) -> list[str]:
    """Fields of two batches (dataclasses: NativeBatch, HiggsAudioBatchInput) that differ (type, dtype, shape or
    values); [] when identical."""
    diffs = []
    for name in (f.name for f in dataclasses.fields(a)):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            if x is not y:
                diffs.append(f"{name}: {type(x).__name__} vs {type(y).__name__}")
        elif x.dtype != y.dtype or x.shape != y.shape:
            diffs.append(f"{name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        elif not torch.equal(x, y):
            diffs.append(f"{name}: values differ")
    return diffs


def check_collator(collator, samples: list[Sample], where: str) -> None:
    """Stop if `collator` builds other batches than boson_multimodal's collator from `samples`."""
    if not isinstance(collator, BatchCollator) or not samples:
        return
    diffs = batch_differences(collator(samples), BosonCollator(collator.settings)(samples))
    if diffs:
        raise RuntimeError(f"the batch collator and boson_multimodal's HiggsAudioSampleCollator build different "
                           f"batches from the first samples of {where} ({'; '.join(diffs)}); the installed "
                           f"boson_multimodal may have changed: train with data.collator=boson")
