"""Synthesis through boson_multimodal's own generation code with the tiny fixtures: equal to its serve engine,
seeded, adapters applied in place, and every bad prompt reported by line while the others are still generated."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import BOSON_BACKEND, NATIVE_PY, run_cli
from tests.oracle.boson_synthesis import BosonSynthesizer

pytestmark = pytest.mark.oracle  # boson_multimodal's model: runs in .venv-boson


@pytest.fixture(scope="module")
def synth(fixtures_dir):
    from higgs_ds.data.codec import load_audio_tokenizer
    from higgs_ds.listening.synthesis import ModelSource, load_model_for_generation

    model, tokenizer, _ = load_model_for_generation(
        ModelSource(model=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"),
                    backend=BOSON_BACKEND), "cpu")
    return BosonSynthesizer(model, tokenizer, load_audio_tokenizer(str(fixtures_dir / "audio_tokenizer"), "cpu"))


def cloning_prompt(speech, text="Hello world, this is a test."):
    from higgs_ds.listening.prompts import Prompt, Reference

    ref = json.loads((speech / "utterances.jsonl").read_text().splitlines()[0])
    return Prompt("p0", "test", text, [Reference(ref["text"], str(speech / ref["audio"]))])


def test_generation_equals_boson_serve_engine_and_is_seeded(synth, fixtures_dir, speech):
    """Our inputs + HiggsAudioModel.generate give exactly what HiggsAudioServeEngine.generate gives (sampled, same
    seed); the same seed gives the same audio again, another seed other audio."""
    from boson_multimodal.data_types import AudioContent, ChatMLSample, Message
    from boson_multimodal.serve.serve_engine import HiggsAudioServeEngine

    from higgs_ds.listening.synthesis import SynthesisConfig

    prompt = cloning_prompt(speech)
    cfg = SynthesisConfig(max_new_tokens=40, seed=3)
    ours = synth.generate(prompt, cfg)
    assert ours.frames > 0 and ours.sample_rate == 24000 and len(ours.audio) == ours.frames * 960
    np.testing.assert_array_equal(synth.generate(prompt, cfg).audio, ours.audio)
    other = synth.generate(prompt, SynthesisConfig(max_new_tokens=40, seed=4))
    assert other.audio.shape != ours.audio.shape or not np.array_equal(other.audio, ours.audio)

    engine = HiggsAudioServeEngine(str(fixtures_dir / "model"), str(fixtures_dir / "audio_tokenizer"),
                                   str(fixtures_dir / "tokenizer"), device="cpu", torch_dtype=torch.float32)
    messages = [Message(role=m["role"], content=AudioContent(audio_url=m["content"]["audio_url"])
                        if isinstance(m["content"], dict) else m["content"]) for m in prompt.messages()]
    theirs = engine.generate(ChatMLSample(messages=messages), max_new_tokens=40, seed=3, force_audio_gen=True)
    np.testing.assert_array_equal(theirs.audio, ours.audio)


def test_stored_reference_codes_are_fed_as_they_are(synth, speech):
    """A reference given as codes (as shards store them) generates exactly what its file generates."""
    from higgs_ds.listening.prompts import Reference
    from higgs_ds.listening.synthesis import SynthesisConfig

    prompt = cloning_prompt(speech)
    cfg = SynthesisConfig(max_new_tokens=30, seed=1)
    from_file = synth.generate(prompt, cfg)
    codes = synth.reference_codes(prompt.refs[0], prompt).numpy()
    prompt.refs = [Reference(prompt.refs[0].text, None, codes.astype(np.int16))]
    np.testing.assert_array_equal(synth.generate(prompt, cfg).audio, from_file.audio)


def random_adapter(model_dir, out, seed=0):
    """A peft LoRA adapter with random (non-zero) B, as a trained adapter has."""
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = HiggsAudioModel.from_pretrained(model_dir, torch_dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "audio_lm_head"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def test_an_adapter_changes_the_output_and_a_mismatched_one_is_refused(synth, fixtures_dir, speech, tmp_path):
    from higgs_ds.listening.synthesis import ModelSource, SynthesisConfig, load_model_for_generation

    adapter = random_adapter(fixtures_dir / "model", tmp_path / "adapter")
    source = ModelSource(model=str(fixtures_dir / "model"), adapter=str(adapter),
                         tokenizer=str(fixtures_dir / "tokenizer"), backend=BOSON_BACKEND)
    model, tokenizer, loaded = load_model_for_generation(source, "cpu")
    assert loaded["adapter"] == str(adapter) and any("lora_A" in n for n, _ in model.named_parameters())
    adapted = BosonSynthesizer(model, tokenizer, synth.audio_tokenizer)
    cfg = SynthesisConfig(max_new_tokens=30, temperature=0.0)
    a, b = adapted.generate(cloning_prompt(speech), cfg), synth.generate(cloning_prompt(speech), cfg)
    assert a.audio.shape != b.audio.shape or not np.allclose(a.audio, b.audio)

    other = tmp_path / "wider"  # the same architecture with another hidden size: the adapter's shapes differ
    shutil.copytree(fixtures_dir / "model", other)
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["hidden_size"], config["text_config"]["head_dim"] = 96, 24
    config["audio_ffn_hidden_size"] = 96
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").unlink()
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel

    HiggsAudioModel(HiggsAudioConfig(**config)).save_pretrained(other)
    with pytest.raises(ValueError, match=f"adapter {adapter} .* does not fit the model {other}"):
        load_model_for_generation(ModelSource(model=str(other), adapter=str(adapter),
                                              tokenizer=str(fixtures_dir / "tokenizer"), backend=BOSON_BACKEND), "cpu")


def test_prompt_problems_name_the_prompt(synth, speech, tmp_path):
    from higgs_ds.listening.prompts import Prompt, Reference
    from higgs_ds.listening.synthesis import SynthesisConfig, SynthesisError

    cfg = SynthesisConfig(max_new_tokens=200)
    ref = cloning_prompt(speech).refs[0]
    with pytest.raises(SynthesisError, match="bad: the text to speak is empty"):
        synth.generate(Prompt("x", "bad", "  ", [ref]), cfg)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(SynthesisError, match=f"bad: reference clip: audio file {broken} does not decode"):
        synth.generate(Prompt("x", "bad", "Hello.", [Reference("a", str(broken))]), cfg)
    short = BosonSynthesizer(synth.model, synth.tokenizer, synth.audio_tokenizer, kv_cache_lengths=(256,))
    with pytest.raises(SynthesisError, match=r"bad: the prompt takes \d+ positions \(references 3\.4 s\); with "
                                             r"max_new_tokens 200 that is over the model's context of 256"):
        short.generate(Prompt("x", "bad", "Hello.", [ref]), cfg)


def test_synthesize_cli_single_and_batch(fixtures_dir, speech, tmp_path):
    """One prompt to a wav (+ its JSON), and a prompts file whose bad lines are each reported by line while the
    good ones are still generated; identical wavs under the same seed."""
    wavs = sorted((speech / "wavs").glob("*.wav"))
    utts = [json.loads(x) for x in (speech / "utterances.jsonl").read_text().splitlines()]
    model = ["--model", fixtures_dir / "model", "--text-tokenizer", fixtures_dir / "tokenizer", "--audio-tokenizer",
             fixtures_dir / "audio_tokenizer", "--max-new-tokens", 30, "--quiet"]
    out = tmp_path / "one.wav"
    run_cli("synthesize", *model, "--ref-audio", wavs[0], "--ref-text", utts[0]["text"], "--text", "Hello world.",
            "--out", out, python=NATIVE_PY)
    report = json.loads(out.with_suffix(".json").read_text())
    audio, sr = sf.read(out)
    assert sr == 24000 and len(audio) / sr == pytest.approx(report["rows"][0]["seconds"], abs=1e-3)
    assert report["generated"] == 1 and report["failed"] == 0 and report["real_time_factor"] > 0
    assert report["settings"]["temperature"] == 0.7 and report["settings"]["top_p"] == 0.95
    assert report["settings"]["ras_win_len"] == 7 and report["settings"]["ras_win_max_num_repeat"] == 2

    (tmp_path / "broken.wav").write_bytes(b"not audio")
    lines = [json.dumps({"id": "good1", "ref_audio": str(wavs[0]), "ref_text": utts[0]["text"], "text": "One."}),
             "{not json",
             json.dumps({"ref_audio": str(wavs[1]), "text": "no reference text"}),
             json.dumps({"id": "missing", "ref_audio": "nowhere.wav", "ref_text": "a", "text": "Two."}),
             json.dumps({"id": "broken", "ref_audio": "broken.wav", "ref_text": "a", "text": "Three."}),
             json.dumps({"id": "empty", "ref_audio": str(wavs[1]), "ref_text": "a", "text": "   "}),
             json.dumps({"ref_audio": str(wavs[4]), "ref_text": utts[4]["text"], "text": "Four.",
                         "target_audio": str(wavs[5])})]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    proc = run_cli("synthesize", *model, "--prompts", prompts, "--out", tmp_path / "batch", check=False, python=NATIVE_PY)
    assert proc.returncode == 1
    report = json.loads((tmp_path / "batch" / "synthesis.json").read_text())
    assert report["generated"] == 2 and report["failed"] == 5 and report["rejected_lines"] == 3
    assert sorted(p.name for p in (tmp_path / "batch").glob("*.wav")) == ["good1.wav", "line00007.wav"]
    errors = proc.stderr
    assert f"{prompts}:2: not valid JSON" in errors
    assert f"{prompts}:3: 'ref_text' must be a non-empty string" in errors
    assert f"{prompts}:4: reference clip: audio file {tmp_path / 'nowhere.wav'} does not exist" in errors
    assert f"{prompts}:5: reference clip: audio file {tmp_path / 'broken.wav'} does not decode" in errors
    assert f"{prompts}:6: 'text' must be a non-empty string" in errors
    first = (tmp_path / "batch" / "good1.wav").read_bytes()
    run_cli("synthesize", *model, "--prompts", prompts, "--out", tmp_path / "again", check=False, python=NATIVE_PY)
    assert (tmp_path / "again" / "good1.wav").read_bytes() == first

    proc = run_cli("score", tmp_path / "batch", "--quiet", check=False, python=NATIVE_PY)
    scores = json.loads((tmp_path / "batch" / "scores.json").read_text())
    assert proc.returncode == 1 and scores["failed"] == 2  # the two prompts whose reference did not decode
    good = {r["id"]: r for r in scores["prompts"] if "generated" in r}
    assert set(good) == {"good1", "line00007"} and "ground_truth" in good["line00007"]
    assert -1 <= good["good1"]["generated"]["similarity"] <= 1 and good["good1"]["generated"]["wer"] is None
    assert good["line00007"]["ground_truth"]["duration_ratio"] == pytest.approx(1.0)


def test_no_audio_is_a_failure_not_an_empty_success(synth, speech):
    """With audio not forced and one new token, the model ends without audio: reported as a failure."""
    from higgs_ds.listening.synthesis import SynthesisConfig, SynthesisError

    with pytest.raises(SynthesisError, match="test: the model generated no audio"):
        synth.generate(cloning_prompt(speech), SynthesisConfig(max_new_tokens=1, force_audio=False))



def test_the_time_budget_reports_prompts_not_reached(synth, speech, tmp_path):
    """eval.max_seconds: once the deadline has passed no prompt starts; each left is a failure saying why."""
    import time

    from higgs_ds.listening.synthesis import SynthesisConfig, synthesize_prompts

    prompts = [cloning_prompt(speech), cloning_prompt(speech, "Second.")]
    prompts[1].id = "p1"
    rows = synthesize_prompts(synth, prompts, SynthesisConfig(max_new_tokens=10), tmp_path, progress=False,
                              deadline=time.time() - 1)
    assert [r["error"] for r in rows] == ["not generated: the time budget ran out first"] * 2
    assert not list(tmp_path.glob("*.wav"))
    rows = synthesize_prompts(synth, prompts, SynthesisConfig(max_new_tokens=10), tmp_path, progress=False,
                              deadline=time.time() + 600)
    assert all("error" not in r and (tmp_path / f"{r['id']}.wav").is_file() for r in rows)


def test_a_failure_inside_boson_generate_fails_that_prompt_only(fixtures_dir, synth, speech, tmp_path):
    """boson's generate raises when <|AUDIO_OUT|> is sampled as text (seen in a 240-step run's listening
    evaluation): that prompt is a failure naming the error, the prompts after it are still generated."""
    from higgs_ds.listening.synthesis import (ModelSource, SynthesisConfig, load_model_for_generation,
                                    synthesize_prompts)

    model, tokenizer, _ = load_model_for_generation(
        ModelSource(model=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"),
                    backend=BOSON_BACKEND), "cpu")
    with torch.no_grad():  # the text head always answers <|AUDIO_OUT|>
        model.audio_decoder_proj.text_lm_head.weight[model.config.audio_out_token_idx] = 5.0
    broken = BosonSynthesizer(model, tokenizer, synth.audio_tokenizer)
    second = cloning_prompt(speech, "Second.")
    second.id = "p1"
    rows = synthesize_prompts(broken, [cloning_prompt(speech), second], SynthesisConfig(max_new_tokens=20,
                                                                                        force_audio=False),
                              tmp_path, progress=False)
    assert rows[0]["error"].startswith("test: generation failed inside boson_multimodal (IndexError")
    assert rows[1]["error"].startswith("test: generation failed")  # the same model, the same failure, no crash
    ok = synthesize_prompts(broken, [second], SynthesisConfig(max_new_tokens=20), tmp_path, progress=False)
    assert "error" not in ok[0] and (tmp_path / "p1.wav").is_file()  # forced audio takes the normal path
