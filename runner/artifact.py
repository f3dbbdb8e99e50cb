"""Open a gdn artifact: an ExecuTorch program (`.pte`) with `prefill` and `decode`, plus its `.ptd` data file
when the backend writes one. Our metadata and the tokenizer are named data entries inside the `.pte`,
read through a memory map without loading the program.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ArtifactError
from .flatbuf import FormatError, PteLayout, Segment, read_pte, read_ptd

FORMAT_VERSION = 1
METADATA_KEY = "gdn.metadata"
TOKENIZER_KEY = "gdn.tokenizer"
METHODS = ("prefill", "decode")
BACKENDS = ("cuda", "cpu")
OPTIONAL_FIELDS = ("quant",)


@dataclass(frozen=True)
class Metadata:
    format_version: int
    backend: str
    family: str
    config: dict
    vocab_size: int
    max_seq_len: int
    max_prefill_chunk: int
    dtype: str
    state_dtype: str
    state: list[dict]
    bos_token_id: int | None
    eos_token_ids: list[int]
    stop_token_ids: list[int]
    chat_template: str | None
    generation_defaults: dict
    # weight-only quantization: {"scheme", "bits", "group_size", "symmetric", "scale_dtype", "quantized"};
    # None for float weights (and artifacts written before the field existed)
    quant: dict | None = None

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Metadata":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{where}: metadata is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ArtifactError(f"{where}: metadata is not a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{where}: unknown artifact format version {version!r}; this runner reads version {FORMAT_VERSION}")
        missing = [f.name for f in fields(cls) if f.name not in raw and f.name not in OPTIONAL_FIELDS]
        if missing:
            raise ArtifactError(f"{where}: metadata lacks {missing}")
        if raw["backend"] not in BACKENDS:
            raise ArtifactError(f"{where}: unknown backend {raw['backend']!r}; expected one of {list(BACKENDS)}")
        if raw.get("quant") is not None and not isinstance(raw["quant"], dict):
            raise ArtifactError(f"{where}: metadata quant must be an object or null, got {raw['quant']!r}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def weights_label(self) -> str:
        """'bfloat16', or 'int4 (group 64, bfloat16 scales)' for a quantized artifact."""
        q = self.quant
        if not q:
            return self.dtype
        return f"{q.get('scheme')} (group {q.get('group_size')}, {q.get('scale_dtype')} scales)"


def data_path_for(pte: Path) -> Path:
    """Where the exporter puts the data file of `pte`: beside it, same stem."""
    return pte.with_suffix(".ptd")


class MappedFile:
    """A read-only memory map of a whole file (closed with the object)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self.size = f.seek(0, 2)
            if self.size == 0:
                raise ArtifactError(f"{path} is empty")
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @classmethod
    def open(cls, path: Path) -> "MappedFile":
        try:
            return cls(path)
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e.strerror}") from None

    def view(self, seg: Segment) -> memoryview:
        return memoryview(self.map)[seg.offset : seg.offset + seg.size]

    def close(self) -> None:
        self.map.close()


@dataclass(frozen=True)
class Artifact:
    path: Path
    data_path: Path | None
    meta: Metadata
    tokenizer_json: str | None
    layout: PteLayout
    data_named: dict[str, Segment] | None

    @classmethod
    def open(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"no artifact at {path}")
        if not path.is_file():
            raise ArtifactError(f"{path} is not a file")
        pte = MappedFile.open(path)
        try:
            try:
                layout = read_pte(pte.map, pte.size)
            except FormatError as e:
                raise ArtifactError(f"{path} is not an ExecuTorch program or is truncated: {e}") from None
            if METADATA_KEY not in layout.named_data:
                raise ArtifactError(f"{path} is an ExecuTorch program but not a gdn artifact (no {METADATA_KEY!r} entry)")
            meta = Metadata.from_json(bytes(pte.view(layout.named_data[METADATA_KEY])).decode("utf-8"), str(path))
            tok = layout.named_data.get(TOKENIZER_KEY)
            tokenizer_json = bytes(pte.view(tok)).decode("utf-8") if tok is not None else None
        finally:
            pte.close()
        missing = [m for m in METHODS if m not in layout.method_inputs]
        if missing:
            raise ArtifactError(f"{path} lacks the method(s) {missing}")
        data_path, data_named = None, None
        if meta.backend == "cuda":
            data_path, data_named = _open_data(path, METHODS)
        return cls(path, data_path, meta, tokenizer_json, layout, data_named)


def _open_data(pte: Path, methods: tuple[str, ...]) -> tuple[Path, dict[str, Segment]]:
    data_path = data_path_for(pte)
    if not data_path.exists():
        raise ArtifactError(f"missing data file {data_path} (the weights of {pte.name}; keep it beside the .pte)")
    ptd = MappedFile.open(data_path)
    try:
        named = read_ptd(ptd.map, ptd.size)
    except FormatError as e:
        raise ArtifactError(f"{data_path} is not an ExecuTorch data file or is truncated: {e}") from None
    finally:
        ptd.close()
    missing = [f"{m}_weights_blob" for m in methods if f"{m}_weights_blob" not in named]
    if missing:
        raise ArtifactError(f"{data_path} does not hold {missing}; it belongs to another artifact")
    return data_path, named
