"""CUDA ops: compiled for sm_80 and sm_90 with nvcc wherever it exists (CI has no GPU); checked on a GPU if any."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from xtc_ds import ops
from xtc_ds.ops import builder, native
from xtc_ds.quant import packing, reference

CSRC = builder.csrc_dir()


def _cuda_include() -> Path:
    nvcc = Path(shutil.which("nvcc")).resolve()
    for root in (nvcc.parent.parent, Path("/usr/local/cuda")):
        if (root / "include" / "cuda_runtime.h").exists():
            return root / "include"
    pytest.skip("CUDA headers not found beside nvcc")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", ["quant_kernels.cu", "packed_kernels.cu"])
def test_kernels_compile_for_sm80_and_sm90(tmp_path, source):
    cmd = [
        "nvcc",
        "-std=c++17",
        "-O3",
        "-c",
        f"-I{CSRC / 'include'}",
        str(CSRC / "cuda" / source),
        "-o",
        str(tmp_path / "k.o"),
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    cubins = (tmp_path / "k.o").read_bytes()
    assert b"sm_80" in cubins and b"sm_90" in cubins  # both architectures are embedded


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_torch_binding_compiles(tmp_path):
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()] + [
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{_cuda_include()}",
        f"-I{CSRC / 'include'}",
        f"-I{CSRC / 'cuda'}",
    ]
    cmd = [
        "c++",
        "-std=c++20",
        "-fsyntax-only",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-DTORCH_EXTENSION_NAME=xtc_ds_cuda_ops",
        *includes,
        str(CSRC / "cuda" / "binding.cpp"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def cuda_ops():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    module = native.load_cuda()
    assert module is not None, native.status()["cuda"]
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, groups", [((5, 7), 5), ((768, 768), 1), ((3072, 768), 64), ((30522, 768), 30522)])
def test_cuda_matches_reference(cuda_ops, dtype, shape, groups):
    w = torch.randn(shape, device="cuda").to(dtype)
    for bits in range(1, 9):
        for symmetric in (True, False) if bits >= 3 else (True,):
            out = torch.full_like(w, float("nan"))
            cuda_ops.fake_quant(w, bits, groups, symmetric, out=out)
            expected = reference.fake_quant_weight(w.cpu(), bits, groups, symmetric)
            assert torch.equal(out.cpu(), expected), (bits, groups, symmetric)


def test_cuda_activation_and_packing(cuda_ops):
    x = torch.randn(70000, 64, device="cuda")  # more tokens than one grid dimension holds
    assert torch.equal(ops.fake_quant_activation(x, 8).cpu(), reference.fake_quant_activation(x.cpu(), 8))
    for bits in packing.PACK_BITS:
        codes = torch.randint(0, 2**bits, (33, 64), dtype=torch.uint8, device="cuda")
        packed = ops.pack_bits(codes, bits)
        assert torch.equal(packed.cpu(), packing.pack_bits(codes.cpu(), bits))
        assert torch.equal(ops.unpack_bits(packed, bits), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_cuda_packed_linear_matches_reference(cuda_ops, bits):
    import torch.nn.functional as F

    n, k = 96, 200
    w, x, bias = torch.randn(n, k), torch.randn(2, 37, k) * 3, torch.randn(n)
    quantized = reference.quantize_weight(w, bits, n)
    storage = reference.storage_bits(bits)
    codes = F.pad(quantized.codes, (0, packing.padded_length(k, storage) - k))
    kernel_weight, row_sum = cuda_ops.prepack_weight(packing.pack_bits(codes, storage).cuda(), bits, k)
    out = cuda_ops.packed_linear(x.cuda(), kernel_weight, row_sum, quantized.weight_scale.cuda(), bias.cuda(), bits, 8)
    expected = F.linear(reference.fake_quant_activation(x, 8), reference.dequantize_weight(quantized, bits), bias)
    levels = reference.dequantize_weight(quantized, bits) / quantized.weight_scale[:, None]
    assert torch.equal(row_sum.cpu(), levels.round().sum(dim=1).to(torch.int32))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
