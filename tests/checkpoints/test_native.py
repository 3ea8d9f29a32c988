"""The layout mapping on its own (no transformers 5 needed; tests/checkpoints/native/ checks it against the real classes):
the conversion cache, damaged and unportable checkpoints named plainly, adapters renamed for the native model."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_ds.checkpoints.checkpoint_dir import Checkpoint, CheckpointError

from higgs_ds.checkpoints.hub import MODEL_REPO, PINNED_REVISIONS, resolve
from higgs_ds.checkpoints.native import boson_to_native, native_config, special_token_ids
from higgs_ds.checkpoints.native_adapters import native_adapter


@pytest.fixture
def native_dir(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HIGGS_DS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "native"
    boson_to_native(fixtures_dir / "model", out, fixtures_dir / "tokenizer")
    return out


def test_a_native_directory_is_converted_once_and_again_when_it_changes(native_dir, tmp_path):
    first = resolve(str(native_dir), "model")
    source = json.loads((first.path / "SOURCE.json").read_text())
    assert (source["spec"], source["layout"]) == (str(native_dir), "native")
    assert first.spec == str(native_dir) and first.origin == native_dir.resolve()
    stamp = (first.path / "config.json").stat().st_mtime_ns
    again = resolve(str(native_dir), "model")
    assert again.path == first.path and (again.path / "config.json").stat().st_mtime_ns == stamp
    text = resolve(str(native_dir), "text_tokenizer")  # transformers 5's tokenizer_config, readable by 4.x
    assert text.converted and json.loads((text.path / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"

    weights = load_file(native_dir / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2
    save_file(weights, str(native_dir / "model.safetensors"))
    changed = resolve(str(native_dir), "model")
    assert changed.path != first.path
    assert torch.equal(load_file(changed.path / "model.safetensors")["norm.weight"], weights["model.norm.weight"])


def test_damaged_native_checkpoints_name_the_file_and_the_key(native_dir):
    weights = load_file(native_dir / "model.safetensors")
    del weights["model.layers.1.audio_mlp.up_proj.weight"]
    save_file(weights, str(native_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no weight for 'model\.layers\.1\.audio_mlp\.up_proj\.weight' "
                                              r"\(1 of the model's 33 weights are missing\)"):
        resolve(str(native_dir), "model")

    del weights["text_lm_head.weight"]
    save_file(weights, str(native_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no 'text_lm_head.weight' .* use_text_head=True"):
        resolve(str(native_dir), "model")

    blob = (native_dir / "model.safetensors").read_bytes()
    (native_dir / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match=f"{native_dir / 'model.safetensors'}: not a readable safetensors"):
        resolve(str(native_dir), "model")

    (native_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{native_dir / 'config.json'}: not readable JSON"):
        resolve(str(native_dir), "model")


def test_a_shard_listed_in_the_index_but_missing_is_named(native_dir):
    weights = load_file(native_dir / "model.safetensors")
    names = sorted(weights)
    save_file({k: weights[k] for k in names[:10]}, str(native_dir / "model-00001-of-00002.safetensors"))
    (native_dir / "model.safetensors").unlink()
    (native_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        **dict.fromkeys(names[:10], "model-00001-of-00002.safetensors"),
        **dict.fromkeys(names[10:], "model-00002-of-00002.safetensors")}}))
    with pytest.raises(CheckpointError, match=f"lists {len(names) - 10} weights that no file holds .* "
                                              f"model-00002-of-00002.safetensors"):
        resolve(str(native_dir), "model")


def test_sharded_writes_reload_to_the_same_tensors(fixtures_dir, tmp_path):
    """A 5.77B export is written in shards of at most 5 GB; here in shards of 1 MB, with transformers' index."""
    from higgs_ds.checkpoints.native import WeightFiles, native_to_boson, write_weights

    native = tmp_path / "native"
    boson_to_native(fixtures_dir / "model", native, fixtures_dir / "tokenizer")
    src = WeightFiles(native)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_weights(sharded, src.keys(), lambda k: src.get(k).numel() * 4, src.get, max_bytes=1 << 20)
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(src.keys())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((native / name).read_bytes())
    native_to_boson(sharded, tmp_path / "boson")
    a = load_file(fixtures_dir / "model" / "model.safetensors")
    b = load_file(tmp_path / "boson" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_boson_to_native_to_boson_is_bit_exact(fixtures_dir, tmp_path):
    """The weights are renamed, never touched: the fixture comes back byte-identical, and transformers loads the
    native directory strictly (no missing, unexpected or mismatched key)."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_ds.checkpoints.native import native_to_boson

    boson_to_native(fixtures_dir / "model", tmp_path / "native", fixtures_dir / "tokenizer")
    model, info = HiggsAudioV2ForConditionalGeneration.from_pretrained(tmp_path / "native", use_text_head=True,
                                                                        output_loading_info=True)
    assert not any(info.values()), info
    resaved = tmp_path / "resaved"
    model.save_pretrained(resaved)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (resaved / name).write_bytes((tmp_path / "native" / name).read_bytes())
    native_to_boson(resaved, tmp_path / "boson")
    a, b = load_file(fixtures_dir / "model" / "model.safetensors"), load_file(tmp_path / "boson" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, message", [
    ({"audio_dual_ffn_layers": [0]}, "audio_dual_ffn_layers [0] (native: every one of the 2 layers"),
    ({"audio_ffn_intermediate_size": 96}, "audio_ffn_intermediate_size 96 (native: the text FFN's"),
    ({"use_audio_out_self_attention": True}, "use_audio_out_self_attention True (native: False)"),
])
def test_a_boson_model_the_native_class_cannot_express_is_refused(fixtures_dir, change, message):
    config = {**json.loads((fixtures_dir / "model" / "config.json").read_text()), **change}
    with pytest.raises(CheckpointError, match="cannot be written in the transformers-native layout: ") as err:
        native_config(config, special_token_ids(fixtures_dir / "tokenizer"))
    assert message in str(err.value)


def test_adapter_names_and_targets_for_the_native_model(tmp_path):
    torch.manual_seed(0)
    state = {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 64),
             "base_model.model.layers.1.audio_mlp.down_proj.lora_B.weight": torch.randn(64, 4),
             "base_model.model.audio_decoder_proj.text_lm_head.lora_A.weight": torch.randn(4, 64),
             "base_model.model.audio_decoder_proj.audio_lm_head.weight": torch.randn(8, 64)}
    src = tmp_path / "boson"
    src.mkdir()
    save_file(state, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": "x", "revision": None,
        "target_modules": r"^(.*\.)?(self_attn\.q_proj|audio_mlp\.down_proj|audio_decoder_proj\.text_lm_head)$",
        "modules_to_save": ["audio_decoder_proj.audio_lm_head"]}))
    native_adapter(src, tmp_path / "native", MODEL_REPO, None)
    out = load_file(tmp_path / "native" / "adapter_model.safetensors")
    assert sorted(out) == ["base_model.model.audio_lm_head.weight",
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                           "base_model.model.model.layers.1.audio_mlp.down_proj.lora_B.weight",
                           "base_model.model.text_lm_head.lora_A.weight"]
    assert torch.equal(out["base_model.model.text_lm_head.lora_A.weight"],
                       state["base_model.model.audio_decoder_proj.text_lm_head.lora_A.weight"])
    config = json.loads((tmp_path / "native" / "adapter_config.json").read_text())
    assert config["target_modules"] == r"^(.*\.)?(self_attn\.q_proj|audio_mlp\.down_proj|text_lm_head)$"
    assert config["modules_to_save"] == ["audio_lm_head"]
    assert (config["base_model_name_or_path"], config["revision"]) == (MODEL_REPO, None)


def test_the_native_base_of_an_adapter():
    from higgs_ds.checkpoints.export import native_base_of

    pinned = Checkpoint("model", "/x", MODEL_REPO, PINNED_REVISIONS[MODEL_REPO])
    assert native_base_of(pinned) == (MODEL_REPO, None)  # main of the same repo: that model, converted
    native = Checkpoint("model", "/cache/abc", MODEL_REPO, "d" * 40, layout="native", origin="/hub/snap")
    assert native_base_of(native) == (MODEL_REPO, "d" * 40)
    local = Checkpoint("model", "/cache/abc", layout="native", origin=os.path.abspath("mine"))
    assert native_base_of(local) == (os.path.abspath("mine"), None)
    assert native_base_of(Checkpoint("model", "/my/boson/dir")) is None
