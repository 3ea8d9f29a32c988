"""Config: YAML + dotted overrides, errors that name the key, every shipped YAML and DeepSpeed JSON loads."""

import json

import pytest
import yaml

from tests.helpers import REPO
from higgs_ds.config import ConfigError, load_config
from higgs_ds.distributed import deepspeed_config


@pytest.fixture()
def base(shards, fixtures_dir):
    return [f"data.train={shards}", f"model.path={fixtures_dir / 'model'}"]


def test_overrides_merge_over_yaml(tmp_path, base):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"steps": 7, "optim": {"lr": 1e-3}, "lora": {"targets": ["a"]}}))
    cfg = load_config(str(path), base + ["optim.lr=3e-4", "lora.modules_to_save=[x, y]", "data.val=null",
                                         "precision=fp32", "optim.betas=[0.8, 0.95]"])
    assert cfg.steps == 7 and cfg.optim.lr == 3e-4 and cfg.precision == "fp32"
    assert cfg.lora.modules_to_save == ["x", "y"] and cfg.data.val is None and cfg.optim.betas == (0.8, 0.95)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'lr'?"),
    ("stepz=3", "unknown config key 'stepz'; did you mean 'steps'?"),
    ("optim.lr=-1", "optim.lr: must be > 0"),
    ("data.micro_batch_size=0", "data.micro_batch_size: must be >= 1"),
    ("steps=ten", "steps: must be an integer"),
    ("steps=2.5", "steps: must be an integer"),
    ("precision=fp16", "precision: must be bf16 or fp32"),
    ("data.collator=fast", "unknown config key 'data.collator'"),
    ("model.backend=torch", "model.backend: must be native (or package.module:NAME, a backend defined outside "
                            "higgs_ds), got 'torch'"),
    ("model.backend=boson", "boson_multimodal's model is no longer a backend: `higgs-ds convert-run RUN`"),
    ("lora.preset=", "lora.preset: must name a preset of the model family, default or custom"),
    ("data.train=/nonexistent", "data.train: /nonexistent has no index.json"),
    ("model.path=/nonexistent/model", "model.path: /nonexistent/model has no config.json"),
    ("resume=/nowhere", "resume: must be auto, never or an existing checkpoint directory"),
    ("progress_bar=maybe", "progress_bar: must be true or false"),
    ("data.train_weights=[1, 2]", "data.train_weights: has 2 weights for 1 shard set(s) in data.train"),
    ("optim=3", "optim: must be a mapping, got 3"),
    ("optim.lr.x=3", "optim.lr is not a section"),
    ("novalue", "must look like key=value"),
])
def test_bad_values_name_the_key(base, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, base + [override])
    assert message in str(err.value)


def test_bad_yaml_names_the_key(tmp_path, base):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  warmup_step: 10\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.warmup_step'; did you mean 'warmup_steps'"):
        load_config(str(path), base)


def test_bad_config_fails_before_any_process_group(base):
    from tests.helpers import launch_training

    rc, out = launch_training("torchrun", 1, base + ["optim.lrr=1"], check=False, timeout=120)
    assert rc != 0 and "unknown config key 'optim.lrr'; did you mean 'lr'?" in out
    assert "deepspeed_shm_comm_op" not in out and "model " not in out


def test_shipped_yamls_load(shards, fixtures_dir):
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"demo.yaml", "higgs_v2_lora.yaml"}
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and ("train.py" in first or "higgs-ds" in first), f"{path}: {first}"
        cfg = load_config(str(path), [f"data.train={shards}", f"data.val={shards}",
                                      f"model.path={fixtures_dir / 'model'}"])
        assert cfg.steps > 0


def test_deepspeed_json_gets_batch_sizes_from_the_training_config(tmp_path):
    for name in ("zero2.json", "zero2_offload.json", "zero3.json"):
        ds = deepspeed_config(str(REPO / "ds_configs" / name), micro=2, accum=3, world=4, precision="bf16",
                              grad_clip=1.0)
        assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 2
        assert ds["gradient_accumulation_steps"] == 3 and ds["bf16"]["enabled"] is True
        assert "optimizer" not in ds and ds["zero_optimization"]["stage"] in (2, 3)
    conflict = tmp_path / "ds.json"
    conflict.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=8 conflicts with the training config "
                                         r"\(data.micro_batch_size gives 2\)"):
        deepspeed_config(str(conflict), micro=2, accum=1, world=1, precision="bf16", grad_clip=1.0)
    conflict.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="remove 'optimizer'"):
        deepspeed_config(str(conflict), micro=2, accum=1, world=1, precision="bf16", grad_clip=1.0)
    conflict.write_text(json.dumps({"bf16": {"enabled": False}}))
    with pytest.raises(ValueError, match="bf16.enabled=False conflicts with precision=bf16"):
        deepspeed_config(str(conflict), micro=2, accum=1, world=1, precision="bf16", grad_clip=1.0)
