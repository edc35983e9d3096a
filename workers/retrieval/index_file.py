"""One file holding an index replica: header (JSON) + hnswlib graph, under one SHA-256.

Layout: `MAGIC` (8 bytes) · SHA-256 of everything after it (32) · header length (u32 LE)
· header JSON · hnswlib graph bytes. The digest is checked before hnswlib sees a byte:
hnswlib trusts its input and a damaged graph can crash the process, so a file that does
not verify is rebuilt from SQL, never loaded. The header carries what the graph was built
from (model, dim, HNSW params, the SQL high-water mark, each label's item) so a file
from another database, model or parameter set is recognised as stale.

Writes go to a temporary sibling and are renamed into place, so several worker
processes on one machine may save concurrently: a reader sees one whole file or another.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.retrieval.vector_index import HnswParams, LabelInfo, VectorIndex

MAGIC = b"CLIDX\x00\x01\n"
FORMAT = 2  # 2: each label carries its workspace (a format-1 file is rebuilt from SQL)


class IndexFileError(Exception):
    """The file is missing, damaged, or from an incompatible build; rebuild instead."""


@dataclass
class IndexHeader:
    model: str
    dim: int
    params: HnswParams
    hwm: int
    labels: dict[int, LabelInfo]
    gaps: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "dim": self.dim,
            "space": "cosine",
            "params": self.params.to_dict(),
            "hwm": self.hwm,
            "gaps": self.gaps,
            "labels": [[seq, *info] for seq, info in sorted(self.labels.items())],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexHeader:
        if data.get("format") != FORMAT or data.get("space") != "cosine":
            raise IndexFileError(f"unsupported index format {data.get('format')!r}")
        return cls(
            model=str(data["model"]),
            dim=int(data["dim"]),
            params=HnswParams.from_dict(data["params"]),
            hwm=int(data["hwm"]),
            labels={
                int(s): LabelInfo(str(t), str(i), str(lang), None if ws is None else str(ws))
                for s, t, i, lang, ws in data["labels"]
            },
            gaps=[int(g) for g in data.get("gaps", [])],
        )


def save_index(path: Path, index: VectorIndex, header: IndexHeader) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graph-") as tmp:
        graph_path = os.path.join(tmp, "graph.bin")
        index.save_graph(graph_path)
        graph = Path(graph_path).read_bytes()
    header_bytes = json.dumps(header.to_json(), separators=(",", ":")).encode()
    body = struct.pack("<I", len(header_bytes)) + header_bytes + graph
    digest = hashlib.sha256(body).digest()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + digest + body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_header(path: Path) -> tuple[IndexHeader, bytes]:
    """The verified header and graph bytes; IndexFileError if anything is off."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IndexFileError("no index file") from None
    except OSError as exc:
        raise IndexFileError(f"cannot read index file: {exc}") from None
    prefix = len(MAGIC) + 32 + 4
    if len(data) < prefix or not data.startswith(MAGIC):
        raise IndexFileError("not an index file")
    digest, body = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(body).digest() != digest:
        raise IndexFileError("checksum mismatch")
    (header_len,) = struct.unpack("<I", body[:4])
    try:
        header = IndexHeader.from_json(json.loads(body[4 : 4 + header_len]))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFileError(f"bad header: {exc}") from None
    return header, body[4 + header_len :]


def load_index(path: Path) -> tuple[VectorIndex, IndexHeader]:
    header, graph = read_header(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graph-") as tmp:
        graph_path = os.path.join(tmp, "graph.bin")
        Path(graph_path).write_bytes(graph)
        try:
            index = VectorIndex.load_graph(graph_path, header.dim, header.params, header.labels)
        except (RuntimeError, ValueError) as exc:
            raise IndexFileError(f"graph does not load: {exc}") from None
    return index, header
