"""Programmatic dependent launch in AOTInductor artifacts.

AOTInductor (torch 2.11) launches every Triton kernel with `cuLaunchKernel`, so a kernel written for PDL
(gdn/kernels/pdl.py) would wait for the whole previous kernel, as without PDL. Inside `pdl_launches()` the
generated C++ launches the kernels compiled with the grid-dependency steps (constexpr GDC true) through
`cuLaunchKernelEx` with the programmatic-stream-serialization attribute, and every other kernel as before:
only a kernel that waits on the grid dependency before touching an earlier kernel's output may start early.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

LAUNCH = "launchKernel("
LAUNCH_PDL = "launchKernelPdl("

# the same arguments as AOTInductor's launchKernel (torch/_inductor/codegen/cuda/device_op_overrides.py)
DRIVER = """
static inline void launchKernelPdl(
        CUfunction func, uint32_t gridX, uint32_t gridY, uint32_t gridZ, uint32_t numWarps,
        uint32_t sharedMemBytes, void* args[], cudaStream_t stream) {
    CUlaunchAttribute attr[1];
    attr[0].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr[0].value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config = {};
    config.gridDimX = gridX;
    config.gridDimY = gridY;
    config.gridDimZ = gridZ;
    config.blockDimX = 32 * numWarps;
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = sharedMemBytes;
    config.hStream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    CUDA_DRIVER_CHECK(cuLaunchKernelEx(&config, func, args, nullptr));
}
"""


class _PdlLines:
    """A code buffer that writes launchKernelPdl wherever the wrapped codegen writes launchKernel."""

    def __init__(self, buf: Any):
        self._buf = buf

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buf, name)

    def writeline(self, line: Any) -> None:
        self._buf.writeline(line.replace(LAUNCH, LAUNCH_PDL) if isinstance(line, str) else line)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.writeline(line)


def compiled_with_gdc(params: dict) -> bool:
    return params.get("triton_meta", {}).get("constants", {}).get("GDC") is True


@contextmanager
def pdl_launches() -> Iterator[None]:
    """While AOTInductor generates C++ in this context, kernels with GDC launch with PDL."""
    from torch._inductor.codegen.cpp_wrapper_gpu import DeferredTritonCallWrapper
    from torch._inductor.codegen.cuda.device_op_overrides import CUDADeviceOpOverrides

    launch = DeferredTritonCallWrapper.generate_launch_kernel
    driver = CUDADeviceOpOverrides.kernel_driver

    def generate_launch_kernel(self, prefix, wrapper, kernel_var_name, params):
        if compiled_with_gdc(params):
            prefix = _PdlLines(prefix)
        return launch(self, prefix, wrapper, kernel_var_name, params)

    DeferredTritonCallWrapper.generate_launch_kernel = generate_launch_kernel
    CUDADeviceOpOverrides.kernel_driver = lambda self: driver(self) + DRIVER
    try:
        yield
    finally:
        DeferredTritonCallWrapper.generate_launch_kernel = launch
        CUDADeviceOpOverrides.kernel_driver = driver
