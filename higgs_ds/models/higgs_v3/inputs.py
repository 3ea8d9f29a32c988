"""Higgs TTS 3 samples -> model inputs and audio targets: its prompt (not ChatML), the delay pattern, the labels.

A stored v3 sample's token ids are the prompt (data/prompt_formats.py) with one CLIP marker (the placeholder id, -100)
where each audio clip goes, in the order of its clips' codes:

    <|tts|> [<|ref_text|> REF_TEXT] <|ref_audio|> CLIP <|text|> TEXT <|audio|> CLIP

A reference clip becomes its T + 7 delayed rows, each position taking the fused embedding of its row (the
placeholder id stays in `input_ids`). The target clip (the one after <|audio|>) is fed as its first T + 6 delayed
rows: row 0 is predicted from the <|audio|> position, row t + 1 from row t's, and the last row is never fed back.
Labels: every real code and every EOC cell (codebook 0's EOC is the stop signal); never the BOC cells a delay
forces. Text has no labels: the text head is not used for speech, and its table is the prompt's embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from higgs_ds.data.collate import IGNORE, Sample
from higgs_ds.models.higgs_v3.model import AudioConfig

def delay(codes: np.ndarray, boc: int, eoc: int) -> np.ndarray:
    """(T, N) codes -> (T + N - 1, N) rows: codebook c holds BOC in rows < c, its codes in rows c .. c + T - 1,
    EOC after."""
    t, n = codes.shape
    rows = np.full((t + n - 1, n), eoc, dtype=np.int64)
    for c in range(n):
        rows[:c, c] = boc
        rows[c:c + t, c] = codes[:, c]
    return rows


def undelay(rows: np.ndarray) -> np.ndarray:
    """(L, N) delayed rows -> (L - N + 1, N) codes."""
    n = rows.shape[1]
    t = rows.shape[0] - n + 1
    return np.stack([rows[c:c + t, c] for c in range(n)], axis=1)


@dataclass
class V3Batch:
    input_ids: torch.Tensor  # (B, W) long: text ids, the placeholder at audio positions, pad after the end
    attention_mask: torch.Tensor  # (B, W) long
    position_ids: torch.Tensor  # (B, W) long
    audio_input_positions: torch.Tensor  # (Ni,) long: flat b * W + p of every audio position of the prompt
    audio_input_rows: torch.Tensor  # (Ni, N) long: the delayed row each of them embeds
    audio_positions: torch.Tensor  # (Na,) long: flat positions that predict a row of the target
    audio_targets: torch.Tensor  # (Na, N) long: that row, -100 at the BOC cells
    audio_frames: int = 0  # frames of every clip in the batch (what the step's audio seconds count)

    def to(self, device) -> "V3Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return V3Batch(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                          for k, v in moved.items()})

    @property
    def audio_label_count(self) -> int:
        return int(np.count_nonzero(self.audio_targets.numpy() != IGNORE))


class V3Collator:
    """Samples (stored prompts with CLIP markers and their clips' codes) -> V3Batch. AUDIO_ID is the tokenizer's
    <|audio|>: the clip after it is the target."""

    def __init__(self, audio: AudioConfig, audio_id: int, pad_id: int, round_to: int = 8):
        self.audio, self.audio_id, self.pad_id, self.round_to = audio, audio_id, pad_id, round_to

    def layout(self, sample: Sample, prompt_only: bool = False) -> tuple[np.ndarray, list[tuple[int, np.ndarray]],
                                                                          int | None, np.ndarray | None]:
        """(the sample's expanded token ids, [(position, delayed rows)] of its audio inputs, the position that
        predicts the target's row 0, the target's delayed rows). PROMPT_ONLY: a prompt to generate from, ending at
        <|audio|>, without a target (None, None)."""
        a = self.audio
        markers = np.flatnonzero(sample.input_ids == a.placeholder)
        if len(markers) != len(sample.frames):
            raise ValueError(f"sample has {len(markers)} audio markers but {len(sample.frames)} clips")
        starts = np.cumsum(sample.frames) - sample.frames
        ids, inputs, cursor, target = [], [], 0, None
        for marker, start, frames in zip(markers, starts, sample.frames):
            ids.extend(sample.input_ids[cursor:marker].tolist())
            rows = delay(sample.codes[:a.num_codebooks, start:start + frames].T.astype(np.int64), a.boc, a.eoc)
            if marker > 0 and sample.input_ids[marker - 1] == self.audio_id:
                if target is not None:
                    raise ValueError("sample has two target clips (after <|audio|>)")
                target = (len(ids) - 1, rows)
                rows = rows[:-1]  # the last row is predicted, never fed
            inputs.append((len(ids), rows))
            ids.extend([a.placeholder] * len(rows))
            cursor = marker + 1
        ids.extend(sample.input_ids[cursor:].tolist())
        if prompt_only:
            if target is not None or not ids or ids[-1] != self.audio_id:
                raise ValueError("a prompt to generate from ends at <|audio|>, with no target clip")
            return np.array(ids, np.int64), inputs, None, None
        if target is None:
            raise ValueError("sample has no target clip (a CLIP marker after <|audio|>)")
        return np.array(ids, np.int64), inputs, target[0], target[1]

    def prompt_tensors(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A prompt to generate from (PROMPT_ONLY layout) as (input_ids (1, P), audio positions, their rows)."""
        ids, inputs, _, _ = self.layout(sample, prompt_only=True)
        n = self.audio.num_codebooks
        positions = np.concatenate([p + np.arange(len(r)) for p, r in inputs]) if inputs else np.zeros(0, np.int64)
        rows = np.concatenate([r for _, r in inputs]) if inputs else np.zeros((0, n), np.int64)
        return torch.from_numpy(ids)[None], torch.from_numpy(positions), torch.from_numpy(rows)

    def __call__(self, samples: list[Sample]) -> V3Batch:
        laid = [self.layout(s) for s in samples]
        longest = max(len(ids) for ids, *_ in laid)
        width = int(-(-longest // self.round_to) * self.round_to)
        batch = len(samples)
        input_ids = np.full((batch, width), self.pad_id, np.int64)
        attention_mask = np.zeros((batch, width), np.int64)
        in_pos, in_rows, out_pos, out_rows = [], [], [], []
        for b, (ids, inputs, predict_from, target) in enumerate(laid):
            input_ids[b, :len(ids)] = ids
            attention_mask[b, :len(ids)] = 1
            for position, rows in inputs:
                in_pos.append(b * width + position + np.arange(len(rows)))
                in_rows.append(rows)
            out_pos.append(b * width + predict_from + np.arange(len(target)))
            out_rows.append(target)
        targets = np.concatenate(out_rows)
        # BOC cells: codebook c's rows before c in each clip
        forced = np.concatenate([np.arange(len(t))[:, None] < np.arange(self.audio.num_codebooks)[None, :]
                                 for t in out_rows])
        targets[forced] = IGNORE
        n = self.audio.num_codebooks
        return V3Batch(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
            position_ids=torch.arange(width).expand(batch, width).clone(),
            audio_input_positions=torch.from_numpy(np.concatenate(in_pos) if in_pos else np.zeros(0, np.int64)),
            audio_input_rows=torch.from_numpy(np.concatenate(in_rows) if in_rows else np.zeros((0, n), np.int64)),
            audio_positions=torch.from_numpy(np.concatenate(out_pos)),
            audio_targets=torch.from_numpy(targets), audio_frames=int(sum(s.frames.sum() for s in samples)))


def voice_cloning_batch(collator: V3Collator, ids: dict[str, int], vocab: int, seq_len: int, samples: int,
                        seed: int = 0) -> V3Batch:
    """SAMPLES cloning samples of about SEQ_LEN positions each in a real batch's proportions (~15% text split
    between the reference transcript and the target's, a reference and a target clip of equal length; random ids
    and codes), collated. IDS: the v3 prompt's special tokens' ids. They size a step for the memory model and
    benchmarks."""
    from higgs_ds.data.prompt_formats import prompt_ids

    n = collator.audio.num_codebooks
    text = max(8, int(seq_len * 0.15))
    frames = max(2, (seq_len - text - 5 - 2 * (n - 1) + 1) // 2)  # 5 special tokens; a clip adds n - 1 or n - 2 rows
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        words = rng.integers(0, min(vocab, 100_000), text).tolist()
        prompt = prompt_ids(ids, words[text // 2:], words[:text // 2])
        out.append(Sample(np.array(prompt, np.int64), np.full(len(prompt), IGNORE),
                          rng.integers(0, 1024, (n, 2 * frames)), np.array([frames, frames])))
    return collator(out)
