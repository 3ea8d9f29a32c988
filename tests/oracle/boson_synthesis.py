"""Speech from boson_multimodal's HiggsAudioModel through its own generation: the inputs its serve engine builds
(its collator, static KV caches), then HiggsAudioModel.generate, then its decode. boson_v2 registers it for boson's
model_type, so `higgs-ds synthesize` and listening run it when the oracle backend is loaded."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict

import numpy as np

from higgs_ds.listening.prompts import Prompt
from higgs_ds.listening.synthesis import SynthesisConfig, Synthesizer


class BosonSynthesizer(Synthesizer):
    generator = "boson_multimodal"

    def __init__(self, model, tokenizer, audio_tokenizer, kv_cache_lengths=(1024, 4096, 8192)):
        from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
        from transformers.cache_utils import StaticCache

        super().__init__(model, tokenizer, audio_tokenizer)
        config = model.config
        model.set_audio_special_tokens(tokenizer)
        self.context_limit = min(max(kv_cache_lengths), config.text_config.max_position_embeddings)
        cache_config = deepcopy(config.text_config)  # the dual-FFN layers keep their own caches, as in the engine
        cache_config.num_hidden_layers = config.text_config.num_hidden_layers + len(config.audio_dual_ffn_layers or [])
        self.kv_caches = {n: StaticCache(config=cache_config, max_batch_size=1, max_cache_len=n, device=self.device,
                                         dtype=self.dtype)
                          for n in sorted(kv_cache_lengths) if n <= self.context_limit}
        self.collator = HiggsAudioSampleCollator(  # the serve engine's settings
            whisper_processor=None, encode_whisper_embed=config.encode_whisper_embed,
            audio_in_token_id=config.audio_in_token_idx, audio_out_token_id=config.audio_out_token_idx,
            audio_stream_bos_id=config.audio_stream_bos_id, audio_stream_eos_id=config.audio_stream_eos_id,
            pad_token_id=config.pad_token_id, return_audio_in_tokens=False,
            use_delay_pattern=config.use_delay_pattern, audio_num_codebooks=config.audio_num_codebooks, round_to=1)
        self.num_codebooks, self.codebook_size = config.audio_num_codebooks, config.audio_codebook_size

    def inputs(self, prompt: Prompt, cfg: SynthesisConfig) -> dict:
        """What HiggsAudioServeEngine._prepare_inputs builds, with stored reference codes used as they are."""
        from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

        torch = self._torch
        ids, codes = self.prompt_ids_and_codes(prompt, cfg)
        starts = np.cumsum([0] + [c.shape[1] for c in codes])[:-1]
        sample = ChatMLDatasetSample(
            input_ids=torch.LongTensor(ids), label_ids=None, audio_ids_concat=torch.cat(codes, dim=1),
            audio_ids_start=torch.tensor(starts, dtype=torch.long), audio_waveforms_concat=None,
            audio_waveforms_start=None, audio_sample_rate=None, audio_speaker_indices=None)
        batch = asdict(self.collator([sample]))
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _generate(self, inputs: dict, cfg: SynthesisConfig):
        """HiggsAudioModel.generate with the serve engine's arguments, then its decode of every audio segment."""
        from boson_multimodal.model.higgs_audio.utils import revert_delay_pattern

        for cache in self.kv_caches.values():
            cache.reset()
        with self._torch.no_grad():
            text_ids, audio_out = self.model.generate(
                **inputs, max_new_tokens=cfg.max_new_tokens, use_cache=True,
                stop_strings=["<|end_of_text|>", "<|eot_id|>"], tokenizer=self.tokenizer,
                do_sample=cfg.temperature > 0, temperature=cfg.temperature if cfg.temperature > 0 else None,
                top_k=cfg.top_k, top_p=cfg.top_p, past_key_values_buckets=self.kv_caches,
                ras_win_len=cfg.ras_win_len or None, ras_win_max_num_repeat=cfg.ras_win_max_num_repeat,
                seed=cfg.seed)
            waves, segments = [], []
            for out in audio_out:
                codes = revert_delay_pattern(out).clip(0, self.codebook_size - 1)[:, 1:-1]
                if codes.shape[1] > 0:
                    waves.append(self.audio_tokenizer.decode(codes.unsqueeze(0))[0, 0])
                    segments.append(codes.cpu().numpy().astype(np.int16))
        text = self.tokenizer.decode(text_ids[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
        return text, waves, segments

