"""Checkpoint sources: pinned hub revisions, a native hub revision fetched with the files its layout needs, a
checkpoint in neither layout or damaged refused with one clear message, the semantic model from an explicit directory, and the resolved commits recorded in build.json, config.yaml and the
adapter. The hub cannot be reached here: the download functions are replaced where a download is asserted (and the
tests say so); elsewhere checkpoints are served from a real Hugging Face cache folder, offline."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, launch_training, read_run, run_cli, train_overrides
from higgs_ds.checkpoints import hub
from higgs_ds.checkpoints.native import boson_to_native
from higgs_ds.fixtures import hf_cache_snapshot, semantic_model_dir

MODEL_PIN = "10840182ca4ad5d9d9113b60b9bb3c1ef1ba3f84"
TOKENIZER_PIN = "9d4988fbd4ad07b4cac3a5fa462741a41810dbec"
BOSON_MODEL_CONFIG = {"model_type": "higgs_audio", "text_config": {"model_type": "llama"}}
BOSON_TOKENIZER_CONFIG = {"n_filters": 32, "D": 16, "ratios": [8, 5, 4, 2, 3], "sample_rate": 24000, "bins": 1024,
                          "n_q": 8, "semantic_techer": "hubert_base_general", "semantic_sample_rate": 16000}
# config.json as transformers >= 5.3 writes them (HiggsAudioV2Config / HiggsAudioV2TokenizerConfig.to_dict())
NATIVE_MODEL_CONFIG = {
    "architectures": ["HiggsAudioV2ForConditionalGeneration"], "model_type": "higgs_audio_v2", "vocab_size": 128256,
    "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
    "num_key_value_heads": 8, "head_dim": 128, "num_codebooks": 8, "codebook_size": 1026, "audio_token_id": 128016,
    "audio_bos_token_id": 128013, "audio_delay_token_id": 128014, "audio_stream_bos_id": 1024,
    "audio_stream_eos_id": 1025, "pad_token_id": 128001, "eos_token_id": 128009, "dtype": "bfloat16",
    "rope_parameters": {"factor": 32.0, "rope_theta": 500000.0, "rope_type": "llama3"},
    "transformers_version": "5.3.0"}
NATIVE_TOKENIZER_CONFIG = {
    "architectures": ["HiggsAudioV2TokenizerModel"], "model_type": "higgs_audio_v2_tokenizer", "sample_rate": 24000,
    "codebook_size": 1024, "codebook_dim": 64, "target_bandwidths": [0.5, 1, 1.5, 2, 4],
    "semantic_sample_rate": 16000, "downsample_factor": 320,
    "acoustic_model_config": {"model_type": "dac", "encoder_hidden_size": 64, "downsampling_ratios": [8, 5, 4, 2],
                              "decoder_hidden_size": 1024, "upsampling_ratios": [8, 5, 4, 2], "hidden_size": 256},
    "semantic_model_config": {"model_type": "hubert", "hidden_size": 768, "mask_time_prob": 0.0},
    "transformers_version": "5.3.0"}


def write_native_model(path):
    from safetensors.torch import save_file
    import torch

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(NATIVE_MODEL_CONFIG))
    save_file({"model.embed_audio_tokens.embed_audio_tokens.weight": torch.zeros(2, 4),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
               "audio_lm_head.weight": torch.zeros(2, 4)}, str(path / "model.safetensors"))
    return path


class FakeHub:
    """Stands in for huggingface_hub's download functions (no hub here): serves one config per repo, records every
    call, and lays files out as the real cache does (snapshots/<commit>/)."""

    def __init__(self, root, configs):
        self.root, self.configs, self.calls = root, configs, []

    def _snapshot(self, repo_id, revision):
        commit = revision if len(revision) == 40 else "c" * 40  # a branch resolves to some commit
        snap = self.root / repo_id.replace("/", "--") / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text(json.dumps(self.configs[repo_id]))
        return snap

    def hf_hub_download(self, repo_id, filename, revision=None, **kw):
        self.calls.append(("hf_hub_download", repo_id, filename, revision))
        return str(self._snapshot(repo_id, revision) / filename)

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, **kw):
        self.calls.append(("snapshot_download", repo_id, revision, tuple(allow_patterns or ())))
        snap = self._snapshot(repo_id, revision)
        for name in ("model.pth", "model.safetensors", "tokenizer.json"):
            (snap / name).write_bytes(b"x")
        return str(snap)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def install(configs):
        fake = FakeHub(tmp_path / "hub", configs)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
        return fake

    return install


def test_bare_higgs_ids_download_the_pinned_revisions(fake_hub):
    """Mocked download (no hub here): the pinned revision is what reaches the download call."""
    fake = fake_hub({hub.MODEL_REPO: BOSON_MODEL_CONFIG, hub.AUDIO_TOKENIZER_REPO: BOSON_TOKENIZER_CONFIG})
    model = hub.resolve(hub.MODEL_REPO, "model")
    tokenizer = hub.resolve(hub.AUDIO_TOKENIZER_REPO, "audio_tokenizer")
    assert [c[3] if c[0] == "hf_hub_download" else c[2] for c in fake.calls] == [MODEL_PIN] * 2 + [TOKENIZER_PIN] * 2
    assert fake.calls[0][:3] == ("hf_hub_download", hub.MODEL_REPO, "config.json")  # layout checked first
    assert model.spec == f"{hub.MODEL_REPO}@{MODEL_PIN}" and model.commit == MODEL_PIN
    assert tokenizer.spec == f"{hub.AUDIO_TOKENIZER_REPO}@{TOKENIZER_PIN}"
    assert (tokenizer.path / "model.pth").is_file()


def test_explicit_revisions_and_other_repos(fake_hub):
    """Mocked download: `id@rev` asks for that revision; another repo's bare id means main; a text tokenizer named
    by a model repo downloads no weights."""
    fake = fake_hub({hub.MODEL_REPO: BOSON_MODEL_CONFIG, "me/my-higgs": BOSON_MODEL_CONFIG})
    assert hub.resolve(f"{hub.MODEL_REPO}@{'a' * 40}", "model").commit == "a" * 40
    mine = hub.resolve("me/my-higgs", "model")
    assert ("snapshot_download", "me/my-higgs", "main") == fake.calls[-1][:3]
    assert mine.spec == f"me/my-higgs@{'c' * 40}"  # the branch is recorded as the commit it resolved to
    hub.resolve(hub.MODEL_REPO, "text_tokenizer")
    patterns = fake.calls[-1][3]
    assert fake.calls[-1][:3] == ("snapshot_download", hub.MODEL_REPO, MODEL_PIN)
    assert "*.json" in patterns and not any("safetensors" in p for p in patterns)


@pytest.mark.parametrize("spec", ["a/b/c", "org/name@", "@abc"])
def test_malformed_names_are_refused(spec):
    with pytest.raises(hub.CheckpointError, match="neither an existing directory nor a hub id"):
        hub.parse_spec(spec)


def test_a_native_hub_revision_downloads_its_layouts_files_and_a_damaged_one_is_named(fake_hub, tmp_path,
                                                                                       monkeypatch):
    """Mocked download (no hub here): main of today's repos is in the transformers-native layout. The audio
    tokenizer's safetensors are fetched (not boson's model.pth), and the fake hub's files, which are not what their
    names say, are named by the conversion instead of failing somewhere inside it."""
    monkeypatch.setenv("HIGGS_DS_CACHE", str(tmp_path / "cache"))
    fake = fake_hub({hub.MODEL_REPO: NATIVE_MODEL_CONFIG, hub.AUDIO_TOKENIZER_REPO: NATIVE_TOKENIZER_CONFIG})
    for repo, kind, damaged in ((hub.MODEL_REPO, "model", "tokenizer.json: not a readable tokenizer"),
                                (hub.AUDIO_TOKENIZER_REPO, "audio_tokenizer",
                                 "model.safetensors: not a readable safetensors file")):
        with pytest.raises(hub.CheckpointError) as err:
            hub.resolve(f"{repo}@main", kind)
        assert f"{'c' * 40}/{damaged}" in str(err.value)
        assert fake.calls[-2][:3] == ("hf_hub_download", repo, "config.json")  # the layout is read first
        assert "*.safetensors" in fake.calls[-1][3]
    assert "model.pth" not in fake.calls[-1][3]
    assert not list((tmp_path / "cache" / "converted").glob("[0-9a-f]*"))  # nothing half-converted is kept


def test_checkpoints_in_neither_layout_get_one_clear_message(tmp_path, fixtures_dir, speech, shards):
    not_a_tokenizer = tmp_path / "not-a-tokenizer"
    not_a_tokenizer.mkdir()
    (not_a_tokenizer / "config.json").write_text(json.dumps({"model_type": "encodec", "sampling_rate": 24000}))
    proc = run_cli("shards", "build", "--input", speech / "utterances.jsonl", "--out", tmp_path / "out",
                   "--audio-tokenizer", not_a_tokenizer, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"audio tokenizer {not_a_tokenizer}: config.json has neither n_q/bins/sample_rate (boson_multimodal's "
            f"layout) nor model_type 'higgs_audio_v2_tokenizer'") in proc.stderr
    assert not (tmp_path / "out" / "build.json").exists()

    native_model = write_native_model(tmp_path / "native-model")  # config and weights, no text tokenizer
    # two ranks as srun starts them (torchrun and deepspeed add their own launcher traceback to any failure)
    rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, tmp_path / "run", **{
        "model.path": native_model, "model.tokenizer": "none"}), check=False)
    assert rc == 2 and "Traceback" not in out
    message = f"text tokenizer {native_model}: no tokenizer.json or tokenizer_config.json in {native_model}"
    assert out.count(message) == 1, out[-3000:]  # rank 0
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_native_model_without_its_text_tokenizer_trains_with_the_one_given(fixtures_dir, shards, tmp_path):
    """The audio token ids come from model.tokenizer: the model directory need not hold one."""
    model = tmp_path / "native"
    boson_to_native(fixtures_dir / "model", model, fixtures_dir / "tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    run = tmp_path / "run"
    launch_training("srun-env", 1, train_overrides(fixtures_dir, shards, run, steps=2, **{"model.path": model}))
    rows, _, _ = read_run(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["text_tokens"] > 0 and r["audio_tokens"] > 0 for r in rows)


def stage_hub_cache(home, fixtures_dir):
    """A Hugging Face cache holding the fixtures where the hub's pinned revisions would put them (real
    huggingface_hub code resolves them offline)."""
    for repo, commit, src in ((hub.MODEL_REPO, MODEL_PIN, [fixtures_dir / "model", fixtures_dir / "tokenizer"]),
                              (hub.AUDIO_TOKENIZER_REPO, TOKENIZER_PIN, [fixtures_dir / "audio_tokenizer"]),
                              ("bosonai/hubert_base", "b" * 40, [semantic_model_dir(fixtures_dir)])):
        snap = hf_cache_snapshot(home, repo, commit)
        for d in src:
            for f in d.iterdir():
                shutil.copy(f, snap / f.name)
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_hub_names_are_recorded_as_resolved_commits(tmp_path, fixtures_dir, speech):
    env = stage_hub_cache(tmp_path / "hf", fixtures_dir)
    out = tmp_path / "shards"
    run_cli("shards", "build", "--input", speech / "utterances.jsonl", "--out", out, "--audio-tokenizer",
            hub.AUDIO_TOKENIZER_REPO, "--text-tokenizer", hub.MODEL_REPO, "--shard-size", 6, env=env)
    build = json.loads((out / "build.json").read_text())
    assert build["audio_tokenizer"] == f"{hub.AUDIO_TOKENIZER_REPO}@{TOKENIZER_PIN}"
    assert build["text_tokenizer"] == f"{hub.MODEL_REPO}@{MODEL_PIN}"
    assert build["semantic_model"] == f"bosonai/hubert_base@{'b' * 40}"

    run = tmp_path / "run"
    overrides = train_overrides(fixtures_dir, out, run, steps=2, **{"model.path": hub.MODEL_REPO,
                                                                    "model.tokenizer": "none"})
    launch_training("torchrun", 1, overrides, extra_env=env)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["path"] == config["model"]["tokenizer"] == f"{hub.MODEL_REPO}@{MODEL_PIN}"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == (hub.MODEL_REPO, MODEL_PIN)
    rows, _, _ = read_run(run)
    assert [r["step"] for r in rows] == [1, 2]
    merged = tmp_path / "merged"
    run_cli("export", "--checkpoint", run, "--out", merged, "--merge", env=env)  # the base comes from config.yaml
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()


def test_semantic_model_from_an_explicit_directory(tmp_path, fixtures_dir):
    """With an empty Hugging Face cache and no hub, --semantic-model DIR is all the audio tokenizer needs, and it
    encodes exactly as when loaded from the cache; without it the error names the missing model."""
    script = f"""
import sys, numpy as np
from higgs_ds.checkpoints.checkpoint_dir import CheckpointError
from higgs_ds.data.codec import AudioEncoder
wav = np.sin(np.arange(24000) / 24000 * 2 * np.pi * 220).astype(np.float32)
enc = AudioEncoder({str(fixtures_dir / 'audio_tokenizer')!r}, None, "cpu", semantic_model=sys.argv[1])
np.save(sys.argv[2], enc.encode_waveform(wav, 24000))
print(enc.semantic.spec)
try:
    AudioEncoder({str(fixtures_dir / 'audio_tokenizer')!r}, None, "cpu")
except CheckpointError as e:
    print("ERROR", e)
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(semantic_model_dir(fixtures_dir)), tmp_path / "a.npy"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(semantic_model_dir(fixtures_dir)) in proc.stdout
    assert "ERROR could not get the semantic model bosonai/hubert_base@main from the hub" in proc.stdout

    from higgs_ds.data.codec import AudioEncoder
    import numpy as np

    default = AudioEncoder(str(fixtures_dir / "audio_tokenizer"), None, "cpu")  # from the fixtures' cache
    wav = np.sin(np.arange(24000) / 24000 * 2 * np.pi * 220).astype(np.float32)
    assert np.array_equal(np.load(tmp_path / "a.npy"), default.encode_waveform(wav, 24000))
