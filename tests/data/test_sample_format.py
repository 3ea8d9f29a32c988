"""The sample byte format: corrupt bytes give a clear error, .npy payloads decode like np.load and never unpickle."""

import numpy as np
import pytest


def test_corrupt_sample_bytes_give_a_clear_error(shards):
    import io

    from higgs_ds.data.sample_format import ShardError, read_sample_at

    from higgs_ds.data.shard_index import ShardIndex

    idx = ShardIndex.load(shards)
    from pathlib import Path

    data = bytearray(Path(idx.shard_path(0)).read_bytes())
    off, size = int(idx.rows["offset"][1]), int(idx.rows["size"][1])
    data[off + 600: off + 700] = b"\x00" * 100  # inside the first member's payload (.codes.npy header)
    with pytest.raises(ShardError, match=r"shard-000000.tar.*s000000001"):
        read_sample_at(io.BytesIO(bytes(data)), off, size, f"{idx.shard_path(0)} sample s000000001")
    with pytest.raises(ShardError, match="truncated"):
        read_sample_at(io.BytesIO(bytes(data[: off + 100])), off, size, "x")


def test_npy_payloads_decode_like_np_load():
    """decode_npy matches numpy's plain headers directly and hands any other header to numpy; never unpickles."""
    import io

    from higgs_ds.data.sample_format import decode_npy

    def npy(a, version=None):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, version=version, allow_pickle=True)
        return buf.getvalue()

    arrays = [np.zeros((8, 0), np.int16), np.arange(24, dtype=np.int16).reshape(8, 3), np.arange(5, dtype=">i4"),
              np.ones((), np.float32), np.asfortranarray(np.arange(6).reshape(2, 3)), np.zeros((2, 3, 4), bool),
              np.array(["ab", "c"])]
    for a in arrays:
        for version in (None, (2, 0)):
            data = npy(a, version)
            got, want = decode_npy(data), np.load(io.BytesIO(data))
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    with pytest.raises(ValueError, match="object arrays are not allowed"):
        decode_npy(npy(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError):
        decode_npy(npy(np.arange(24, dtype=np.int16).reshape(8, 3))[:-2])  # truncated payload
