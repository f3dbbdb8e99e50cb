"""Write the lowered program as the artifact: the `.pte` (and the `.ptd` of the CUDA backend's weights) under
temporary names in the target folder, renamed into place at the end, so a failed export leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from gdn.runner.artifact import data_path_for

from .errors import ExportError
from .model import GDNForCausalLM


def check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ExportError(f"out of disk space in {folder}: about {needed / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free")


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors, each storage counted once (a tied embedding and lm_head are one)."""
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def weights_bytes(model: GDNForCausalLM) -> int:
    return tensor_bytes([*model.parameters(), *model.buffers()])


def write_artifact(et_program, output: Path, with_data: bool) -> tuple[Path, Path | None]:
    """Write the .pte (and .ptd) under temporary names in the target folder, then rename them into place."""
    folder = output.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=folder))
    try:
        pte_tmp = tmp / output.name
        with open(pte_tmp, "wb") as f:
            et_program.write_to_file(f)
        data_path = None
        if with_data:
            blobs = et_program._tensor_data or {}
            if len(blobs) != 1:
                raise ExportError(f"the CUDA lowering wrote {len(blobs)} data files ({sorted(blobs)}); expected one")
            (cord,) = blobs.values()
            data_path = data_path_for(output)
            with open(tmp / data_path.name, "wb") as f:
                cord.write_to_file(f)
            os.replace(tmp / data_path.name, data_path)
        try:
            os.replace(pte_tmp, output)
        except OSError:
            if data_path is not None:
                data_path.unlink(missing_ok=True)
            raise
        return output, data_path
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise ExportError(f"out of disk space writing {output}: {e.strerror}") from None
        raise ExportError(f"cannot write {output}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
