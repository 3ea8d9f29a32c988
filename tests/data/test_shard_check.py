"""`shards inspect` and `shards verify`: totals of a shard set, and the bad shard named for each kind of damage."""

import json

import pytest

from tests.helpers import run_cli


def test_inspect_and_verify(shards):
    info = json.loads(run_cli("shards", "inspect", shards, "--json").stdout)
    assert info["samples"] == 12 and info["speakers"] == 3 and info["shards"] == 3
    assert 0.01 < info["hours"] < 0.05
    assert info["text_tokens_per_sample"]["p50"] > 0
    proc = run_cli("shards", "verify", shards)
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_names_the_bad_shard(shards, tmp_path, damage):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    target = copy / "shard-000001.tar"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[1000] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:3000]))
    else:
        target.unlink()
    proc = run_cli("shards", "verify", copy, check=False)
    assert proc.returncode == 1
    assert "shard-000001.tar" in proc.stdout and "Traceback" not in proc.stderr
    assert {"flip": "sha256 mismatch", "truncate": "truncated", "delete": "missing"}[damage] in proc.stdout
