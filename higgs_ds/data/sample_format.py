"""The bytes of one sample in a shard: ustar members `sNNNNNNNNN.json` (the ChatML record + audio metadata) and
`sNNNNNNNNN.codes.npy` (int16 codes), written with WebDataset's TarWriter and read back by direct parsing."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile

import numpy as np

from higgs_ds.data.chatml import Record


class ShardError(RuntimeError):
    """A shard set is incomplete, corrupt or inconsistent; the message names the file."""


class ShardSetError(ShardError):
    """The shard set as a whole does not match its index: every rank finds the same, so one says it."""


def shard_name(j: int) -> str:
    return f"shard-{j:06d}.tar"


def sample_key(index: int) -> str:
    return f"s{index:09d}"  # no dots: WebDataset splits keys at the first dot


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': (False|True), "
                         rb"'shape': \(((?:\d+, ?)*\d*)\), \} *\n")


def decode_npy(data: bytes) -> np.ndarray:
    """An .npy payload without pickle. The header numpy writes for plain arrays is matched directly (numpy's own
    parser runs ast.literal_eval, half the read cost of a sample); any other header goes through numpy."""
    m = _NPY_HEADER.match(data, 10) if data[:8] == b"\x93NUMPY\x01\x00" else None
    if m is not None and m.end() == 10 + int.from_bytes(data[8:10], "little"):
        dtype, fortran = np.dtype(m[1].decode()), m[2] == b"True"
        shape = tuple(int(d) for d in m[3].split(b",") if d.strip())
        start = m.end()
    else:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf)
        start = buf.tell()
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
    return arr.reshape(shape, order="F" if fortran else "C")


def sample_members(record: Record, codes: list[np.ndarray], digests: list[str], seconds: list[float],
                   num_codebooks: int, tokens: dict | None = None) -> dict:
    meta = record.to_json()
    if tokens is not None:
        meta["tokens"] = tokens  # {"tokenizer": fingerprint, "input": [...], "label": [...]}
    meta.update(key=sample_key(record.index), index=record.index, source=record.source,
                audio=[{"path": p, "sha256": d, "frames": int(c.shape[1]), "seconds": round(s, 6)}
                       for p, c, d, s in zip(record.audio, codes, digests, seconds)])
    all_codes = np.concatenate(codes, axis=1).astype(np.int16) if codes else np.zeros((num_codebooks, 0), np.int16)
    return {"__key__": sample_key(record.index), "json": json.dumps(meta, sort_keys=True).encode(),
            "codes.npy": encode_npy(all_codes)}


def decode_sample(members: dict[str, bytes], where: str) -> tuple[dict, np.ndarray]:
    """(record json, int16 codes) from a sample's tar members, or ShardError naming `where`."""
    if set(members) != {"json", "codes.npy"}:
        raise ShardError(f"{where}: expected members .json and .codes.npy, found {sorted(members)}")
    try:
        meta = json.loads(members["json"])
        codes = decode_npy(members["codes.npy"])
    except (ValueError, UnicodeDecodeError, EOFError) as e:
        raise ShardError(f"{where}: does not decode: {e}") from None
    frames = sum(a["frames"] for a in meta.get("audio", []))
    if codes.dtype != np.int16 or codes.ndim != 2 or codes.shape[1] != frames:
        raise ShardError(f"{where}: codes have dtype {codes.dtype} shape {codes.shape}, expected int16 (8, {frames})")
    return meta, codes


def member_key(header: bytes) -> str | None:
    """The sample key of the tar member whose 512-byte header this is, or None if it is not a valid ustar header."""
    if len(header) < 512 or header[257:262] != b"ustar":
        return None
    try:
        stored = int(header[148:156].split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        return None
    if stored != sum(header[:512]) - sum(header[148:156]) + 256:
        return None
    return header[:100].split(b"\0")[0].decode("utf-8", "replace").partition(".")[0]


def span_members(data: bytes, where: str) -> dict[str, bytes]:
    """Members of a sample's byte span: plain ustar headers (what TarWriter writes for short names) parsed
    directly, checksums verified; anything else goes through tarfile."""
    members, pos = {}, 0
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header[156:157] not in (b"0", b"\0") or not header[257:262] == b"ustar":
            return span_members_tarfile(data, where)
        try:
            stored = int(header[148:156].split(b"\0")[0].strip() or b"0", 8)
            size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            raise ShardError(f"{where}: corrupt tar header at byte {pos}") from None
        if stored != sum(header) - sum(header[148:156]) + 256:
            raise ShardError(f"{where}: corrupt tar header at byte {pos} (checksum mismatch)")
        name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
        if pos + 512 + size > len(data):
            raise ShardError(f"{where}: truncated member {name}")
        members[name.partition(".")[2]] = data[pos + 512:pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
    return members


def span_members_tarfile(data: bytes, where: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                members[m.name.partition(".")[2]] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{where}: corrupt tar data: {e}") from None
    return members


def read_sample_at(f, offset: int, size: int, where: str) -> tuple[dict, np.ndarray]:
    """Read one sample by seeking to its byte span in an open shard (the index holds offset and size)."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ShardError(f"{where}: truncated (wanted {size} bytes at offset {offset}, got {len(data)})")
    return decode_sample(span_members(data, where), where)
