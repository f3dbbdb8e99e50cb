"""Execute an artifact's `prefill` and `decode`: `executorch.runtime` on CPU, AOTInductor containers on CUDA.

Both methods read and update the same state inside the program; a call with input_pos[0] == 0 starts a
new sequence (the reset happens on the device).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .artifact import Artifact, ArtifactError


class Methods(Protocol):
    device: torch.device

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, T] int64, input_pos [T] int64 (1 <= T <= max_prefill_chunk) -> logits [1, vocab]."""

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, 1], input_pos [1] -> logits [1, vocab]."""

    def close(self) -> None:
        """Release the program (and on CUDA the GPU memory and temporary files)."""


class CpuMethods:
    """The two methods through the executorch pip wheel's runtime; the program is memory-mapped by it."""

    def __init__(self, artifact: Artifact):
        from executorch.runtime import Runtime, Verification

        self.device = torch.device("cpu")
        try:
            program = Runtime.get().load_program(artifact.path, verification=Verification.Minimal)
            self._prefill = program.load_method("prefill")
            self._decode = program.load_method("decode")
        except RuntimeError as e:
            raise ArtifactError(f"executorch cannot load {artifact.path}: {e}") from None
        self._program = program

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._prefill.execute((tokens, input_pos))[0]

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._decode.execute((tokens, input_pos))[0]

    def close(self) -> None:
        self._prefill = self._decode = self._program = None


def load_methods(artifact: Artifact) -> Methods:
    if artifact.meta.backend == "cpu":
        return CpuMethods(artifact)
    if not torch.cuda.is_available():
        raise ArtifactError(f"{artifact.path} is a CUDA artifact but no CUDA GPU is available")
    from .aoti import CudaMethods

    return CudaMethods(artifact)
