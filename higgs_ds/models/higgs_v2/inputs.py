"""Our samples -> the inputs of transformers' HiggsAudioV2 model, and the targets of its loss heads.

The native model takes the sequence already expanded: one placeholder token (`audio_token_id`) a position for every
frame of every audio stream segment, the segments' codes as `audio_input_ids` (batch, frames, codebooks), and no
labels we use (its processor's labels mask every stream eos, so a model trained on them never learns to stop).
Each clip's <|AUDIO|> or <|AUDIO_OUT|> token becomes its segment [bos, codes, eos] under the delay pattern
(`delayed_segments`, the same as boson_multimodal's collator builds). Reference clips go through the audio path
too, untrained. The targets are given where they are: the flat positions whose hidden state predicts a text label
or a row of audio labels at the next position, so the heads run on those rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from higgs_ds.data.collate import IGNORE, CollatorSettings, Sample, delayed_segments


@dataclass
class NativeBatch:
    input_ids: torch.Tensor  # (B, W) long: text ids, `audio_token_id` at every audio frame, pad after the end
    attention_mask: torch.Tensor  # (B, W) long
    position_ids: torch.Tensor  # (B, W) long
    audio_input_ids: torch.Tensor  # (B, F, codebooks) long: each sample's audio frames in order, zero-padded
    audio_input_ids_mask: torch.Tensor  # (B, F) bool
    text_positions: torch.Tensor  # (Nt,) long: flat index b * W + p of the positions that predict a text label
    text_targets: torch.Tensor  # (Nt,) long: the label at p + 1
    audio_positions: torch.Tensor  # (Na,) long: flat positions that predict a row of audio labels
    audio_targets: torch.Tensor  # (Na, codebooks) long: the labels at p + 1, -100 where a codebook is not trained

    MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "audio_input_ids", "audio_input_ids_mask")

    def to(self, device) -> "NativeBatch":
        return NativeBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.MODEL_INPUTS}

    @property
    def text_label_count(self) -> int:
        return int(self.text_targets.numel())

    @property
    def audio_label_count(self) -> int:
        return int(np.count_nonzero(self.audio_targets.numpy() != IGNORE))

    @property
    def audio_frames(self) -> int:
        return int(np.count_nonzero(self.audio_input_ids_mask.numpy()))


class NativeCollator:
    """Samples -> NativeBatch, for the whole batch at once (numpy). `audio_token_id` is the native config's (the
    text tokenizer's <|AUDIO_OUT|>); the samples' <|AUDIO|> and <|AUDIO_OUT|> tokens are the settings'."""

    def __init__(self, settings: CollatorSettings, audio_token_id: int):
        if not settings.use_delay_pattern:
            raise ValueError("the native Higgs-Audio v2 model always uses the delay pattern")
        self.settings, self.audio_token_id = settings, audio_token_id

    def __call__(self, samples: list[Sample]) -> NativeBatch:
        s = self.settings
        lengths = np.array([len(x.input_ids) for x in samples])
        ids = np.concatenate([x.input_ids for x in samples]).astype(np.int64)
        labels = np.concatenate([x.label_ids for x in samples]).astype(np.int64)
        sample_of = np.repeat(np.arange(len(samples)), lengths)
        is_audio = (ids == s.audio_in_token_id) | (ids == s.audio_out_token_id)
        frames = np.concatenate([x.frames for x in samples]).astype(np.int64)
        if len(frames) != int(is_audio.sum()):
            raise ValueError(f"batch has {int(is_audio.sum())} audio tokens but {len(frames)} audio clips")
        codes = np.concatenate([x.codes[:s.num_codebooks] for x in samples], axis=1)
        clip_start = np.cumsum(frames) - frames
        # an audio-out clip trains when its <|AUDIO_OUT|> token has a label; reference clips never do
        trained = (ids[is_audio] == s.audio_out_token_id) & (labels[is_audio] >= 0)
        seg_ids, seg_start, seg_labels = delayed_segments(codes, clip_start, frames, trained, s)
        seg_len = np.diff(np.append(seg_start, seg_ids.shape[1]))

        # every token takes one position, an audio token its whole segment
        span = np.ones(len(ids), np.int64)
        span[is_audio] = seg_len
        token_end = np.cumsum(span)
        sample_first = np.cumsum(lengths) - lengths  # of each sample's first token in `ids`
        offset = token_end[sample_first] - span[sample_first]  # expanded positions before each sample
        pos = token_end - span - offset[sample_of]  # each token's first position within its sample
        expanded = np.bincount(sample_of, weights=span, minlength=len(samples)).astype(np.int64)
        width = int(-(-expanded.max() // s.round_to) * s.round_to)

        batch, n_frames = len(samples), np.bincount(sample_of[is_audio], weights=seg_len,
                                                    minlength=len(samples)).astype(np.int64)
        input_ids = np.full((batch, width), s.pad_token_id, np.int64)
        text_labels = np.full((batch, width), IGNORE, np.int64)
        text = ~is_audio
        input_ids[sample_of[text], pos[text]] = ids[text]
        text_labels[sample_of[text], pos[text]] = labels[text]
        # the audio frames: sample and position of every column of the segments
        col_sample = np.repeat(sample_of[is_audio], seg_len)
        col_pos = np.repeat(pos[is_audio], seg_len) + np.arange(seg_ids.shape[1]) - np.repeat(seg_start, seg_len)
        input_ids[col_sample, col_pos] = self.audio_token_id
        attention_mask = (np.arange(width) < expanded[:, None]).astype(np.int64)

        audio_input_ids = np.zeros((batch, max(1, int(n_frames.max())), s.num_codebooks), np.int64)
        audio_input_ids_mask = np.zeros(audio_input_ids.shape[:2], bool)
        col_frame = np.arange(seg_ids.shape[1]) - np.repeat(np.cumsum(n_frames) - n_frames, n_frames)
        audio_input_ids[col_sample, col_frame] = seg_ids.T
        audio_input_ids_mask[col_sample, col_frame] = True

        # targets: the label at p + 1 is predicted from position p (the shift of the model's causal outputs)
        tb, tp = np.nonzero(text_labels[:, 1:] != IGNORE)
        rows = (seg_labels != IGNORE).any(0)  # segment columns with a label
        text_positions = tb * width + tp
        audio_positions = col_sample[rows] * width + col_pos[rows] - 1  # never a segment's first column (its bos)
        return NativeBatch(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
            position_ids=torch.arange(width).expand(batch, width).clone(),
            audio_input_ids=torch.from_numpy(audio_input_ids),
            audio_input_ids_mask=torch.from_numpy(audio_input_ids_mask),
            text_positions=torch.from_numpy(text_positions), text_targets=torch.from_numpy(text_labels[tb, tp + 1]),
            audio_positions=torch.from_numpy(audio_positions),
            audio_targets=torch.from_numpy(np.ascontiguousarray(seg_labels[:, rows].T)))


def voice_cloning_samples(settings: CollatorSettings, vocab: int, seq_len: int, samples: int,
                          seed: int = 0) -> list[Sample]:
    """SAMPLES voice-cloning samples of about SEQ_LEN positions each in a real batch's proportions: ~15% text (the
    reference transcript untrained, the target's trained), a reference clip (audio in) and a target clip (audio
    out, trained) of equal length; random ids and codes. They size a step for the memory model and benchmarks."""
    s = settings
    text = max(8, int(seq_len * 0.15))
    frames = max(2, (seq_len - text - 2 * s.clip_overhead) // 2)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        ids = rng.integers(0, min(vocab, 100000, s.audio_in_token_id, s.audio_out_token_id), text)
        half = text // 2
        input_ids = np.concatenate([ids[:half], [s.audio_in_token_id], ids[half:-1], [s.audio_out_token_id],
                                    ids[-1:]]).astype(np.int64)
        labels = input_ids.copy()
        labels[: half + 1] = IGNORE
        out.append(Sample(input_ids, labels, rng.integers(0, 1024, (s.num_codebooks, 2 * frames)),
                          np.array([frames, frames])))
    return out


def voice_cloning_batch(collator: NativeCollator, vocab: int, seq_len: int, samples: int, seed: int = 0) -> NativeBatch:
    """voice_cloning_samples, collated."""
    return collator(voice_cloning_samples(collator.settings, vocab, seq_len, samples, seed))
