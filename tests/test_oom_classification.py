"""Out-of-memory classification (README "Embedding": on OOM the batch is halved, then the CPU
takes over). Only real OOM signatures may trigger that: any other failure misread as OOM would be
retried silently at a smaller batch and on another backend instead of failing loudly."""

from __future__ import annotations

import numpy as np
import pytest

from unet_deploy.backends.base import Backend
from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.errors import BackendError
from unet_deploy.pipeline import segment_array
from unet_deploy.segmenter import Segmenter, is_out_of_memory

# messages as the libraries print them
REAL_OOM = [
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.35 GiB total capacity)",  # torch
    "CUDA error: out of memory",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; GPU=0",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
    "buffer of size 1073741824",
    "cudaErrorMemoryAllocation: out of memory",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "[Errno 12] Cannot allocate memory",
    "std::bad_alloc",
    "GPU memory allocation failed during allocation of workspace",
    "OOM when allocating tensor with shape [8,64,572,572]",
]
NOT_OOM = [
    "no room left in queue",
    "Zoom level invalid",
    "bloom filter rejected the key",
    "CUDA error: an illegal memory access was encountered",
    "shape mismatch: expected (1, 1, 92, 92)",
    "memory layout of the input is not contiguous",
    "broom closet",
    "TensorRT: engine deserialization failed",
    "failed to allocate a CUDA stream handle",  # not memory
]


@pytest.mark.parametrize("text", REAL_OOM)
def test_real_oom_signatures(text):
    assert is_out_of_memory(RuntimeError(text))
    wrapped = BackendError("inference failed")
    wrapped.__cause__ = RuntimeError(text)
    assert is_out_of_memory(wrapped)  # found through the cause chain


def test_oom_exception_types():
    assert is_out_of_memory(MemoryError())

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    assert is_out_of_memory(OutOfMemoryError(""))


@pytest.mark.parametrize("text", NOT_OOM)
def test_not_oom(text):
    assert not is_out_of_memory(RuntimeError(text))
    wrapped = BackendError("inference failed")
    wrapped.__cause__ = ValueError(text)
    assert not is_out_of_memory(wrapped)


class Failing(Backend):
    """ONNX Runtime inside, but every batch of more than one tile raises ``text``."""

    name = "fake-gpu"
    thread_safe = True

    def __init__(self, path, text):
        super().__init__()
        self.inner = OnnxRuntimeBackend(path)
        self.info = self.inner.info
        self.text = text
        self.batches: list[int] = []

    def _activate(self):
        self.inner.activate()

    def _deactivate(self):
        self.inner.deactivate()

    def infer(self, batch):
        self.batches.append(len(batch))
        raise RuntimeError(self.text)


def test_non_oom_failure_is_not_retried_smaller_or_on_cpu(tiny_model, real_crop):
    be = Failing(tiny_model, "no room left in queue")
    with Segmenter(tiny_model, backend=be, batch_size=8, warmup=False, tile=92) as s:
        with pytest.raises(BackendError, match="no room left in queue"):
            s(real_crop)
        h = s.health()
        assert h["status"] == "failed" and h["fallback"] is None and h["batch_size"] == 8
    assert be.batches == [8]  # tried once, at the requested batch: no halving, no fallback


def test_real_oom_is_retried(tiny_model, real_crop):
    be = Failing(tiny_model, "CUDA out of memory. Tried to allocate 2.00 GiB")
    with Segmenter(tiny_model, backend=be, batch_size=8, warmup=False, tile=92) as s:
        with pytest.warns(RuntimeWarning, match="out of memory"):
            got = s(real_crop)
        assert s.health()["fallback"]
    assert be.batches[:4] == [8, 4, 2, 1]
    np.testing.assert_array_equal(got, segment_array(real_crop, tiny_model))
