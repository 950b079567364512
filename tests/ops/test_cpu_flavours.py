"""Every CPU kernel flavour this machine executes (AVX-512 VNNI, AVX2 with and without AVX-VNNI, portable) builds
and computes the packed linear's integer dot products exactly; the extension shares torch's OpenMP threads."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from xtc_ds import ops
from xtc_ds.errors import ConfigError
from xtc_ds.ops import builder, native
from xtc_ds.quant import packing, reference

FLAVOURS = builder.supported_isas()


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request):
    """The extension of one flavour: a failed build fails the test (CI must build every flavour it can run)."""
    return request.param, builder.build_cpu(isa=request.param)


def _prepack(module, codes: torch.Tensor, bits: int):
    """Weight codes as stored rows (pack_bits layout), then the extension's kernel layout and row sums."""
    storage = reference.storage_bits(bits)
    padding = packing.padded_length(codes.shape[1], storage) - codes.shape[1]
    rows = packing.pack_bits(F.pad(codes.to(torch.uint8), (0, padding)), storage)
    return module.prepack_weight(rows, bits, codes.shape[1])


def _kernel_weight(module, levels: torch.Tensor, bits: int):
    codes = (levels > 0).long() if bits == 1 else levels + (1 if bits == 2 else 1 << (bits - 1))
    return _prepack(module, codes, bits)


def _levels(n: int, k: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    if bits == 1:
        return torch.randint(0, 2, (n, k), generator=generator) * 2 - 1
    if bits == 2:
        return torch.randint(-1, 2, (n, k), generator=generator)
    half = 1 << (bits - 1)
    return torch.randint(-half, half, (n, k), generator=generator)


# Token counts around the micro-kernel blocks (1, 4, 8) and the 1/2-bit expansion; in_features across the int16
# flush of the AVX2 kernel (32 quads = 128 inputs).
SHAPES = [(1, 4, 16), (3, 36, 48), (4, 128, 32), (5, 132, 16), (9, 260, 64), (37, 1536, 32), (130, 384, 48)]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m, k, n", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
@pytest.mark.native
@pytest.mark.slow
def test_integer_dot_products_are_exact(flavour, bits, m, k, n):
    """Activations on the integer grid (scale 1) and unit row scales: the output is the integer product itself,
    converted to float32 once."""
    _, module = flavour
    generator = torch.Generator().manual_seed(m * k * n + bits)
    codes = torch.randint(-127, 128, (m, k), generator=generator)
    codes[:, 0] = 127  # the per-token scale is max|x| / 127 = 1, so the activation codes are x
    levels = _levels(n, k, bits, generator)
    kernel_weight, row_sum = _kernel_weight(module, levels, bits)
    assert torch.equal(row_sum, levels.sum(dim=1).to(torch.int32))
    out = module.packed_linear(codes.float(), kernel_weight, row_sum, torch.ones(n), None, bits, 8)
    assert torch.equal(out, (codes.double() @ levels.double().T).float())


@pytest.mark.native
@pytest.mark.slow
@pytest.mark.parametrize("bits", [1, 2, 8])
def test_flavour_matches_the_reference(flavour, bits):
    _, module = flavour
    w, x, bias = torch.randn(64, 200), torch.randn(19, 200) * 3, torch.randn(64)
    quantized = reference.quantize_weight(w, bits, 64)
    kernel_weight, row_sum = _prepack(module, quantized.codes, bits)
    weight = reference.dequantize_weight(quantized, bits)
    for act_bits in (8, 4):
        out = module.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale, bias, bits, act_bits)
        expected = F.linear(reference.fake_quant_activation(x, act_bits), weight, bias)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.slow  # builds every flavour
def test_use_cpu_flavour_switches_the_registered_kernels(cpu_ops):
    x, w = torch.randn(6, 64), torch.randn(32, 64)
    quantized = reference.quantize_weight(w, 1, 32)
    kernel_weight, row_sum = ops.prepack_weight(packing.pack_bits(quantized.codes, 1), 1, 64)
    best = ops.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale, None, 1, 8)
    for isa in FLAVOURS:
        with native.use_cpu_flavour(isa) as module:
            assert builder.cpu_extension_name(isa) in module.__name__
            out = ops.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale, None, 1, 8)
        torch.testing.assert_close(out, best, rtol=1e-6, atol=1e-6)


def test_cpu_isa_override(monkeypatch):
    monkeypatch.setenv("XTC_CPU_ISA", "generic")
    assert builder.cpu_isa() == "generic" and "_generic_" in builder.cpu_extension_name()
    monkeypatch.setenv("XTC_CPU_ISA", "avx1024")
    with pytest.raises(ConfigError, match="XTC_CPU_ISA='avx1024': unknown flavour; this CPU runs"):
        builder.cpu_isa()
    monkeypatch.setattr(builder, "supported_isas", lambda: ("avx2", "generic"))
    monkeypatch.setenv("XTC_CPU_ISA", "avx512vnni")
    with pytest.raises(ConfigError, match="cannot execute; this CPU runs avx2, generic"):
        builder.cpu_isa()
    with pytest.raises(ConfigError, match="CPU flavour 'avx512vnni': this CPU runs avx2, generic"):
        builder.build_cpu(isa="avx512vnni")


_THREADS = """
import os, torch
torch.set_num_threads({threads})
from xtc_ds.ops import native
from xtc_ds.quant import packing, reference
module = native.load_cpu()
assert module is not None, native.status()
x, w = torch.randn(512, 768), torch.randn(768, 768)
q = reference.quantize_weight(w, 1, 768)
kw, rs = module.prepack_weight(packing.pack_bits(q.codes, 1), 1, 768)
before = len(os.listdir('/proc/self/task'))
for _ in range(3):
    module.packed_linear(x, kw, rs, q.weight_scale, None, 1, 8)
torch.nn.functional.linear(x, w)
runtimes = sorted({{line.split()[-1] for line in open('/proc/self/maps') if 'libgomp' in line or 'libiomp' in line}})
print(len(os.listdir('/proc/self/task')) - before, len(runtimes), runtimes)
"""


@pytest.mark.native
@pytest.mark.parametrize("threads", [1, 2])
def test_extension_uses_torch_openmp_runtime_and_thread_count(threads):
    """One OpenMP runtime in the process (torch's), and no more worker threads than torch.set_num_threads asks."""
    env = {**os.environ, "XTC_KERNELS": "native", "OMP_NUM_THREADS": "4"}
    result = subprocess.run(
        [sys.executable, "-c", _THREADS.format(threads=threads)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    started, runtimes, names = result.stdout.split(maxsplit=2)
    assert int(runtimes) == 1, names
    assert int(started) <= threads - 1, f"{started} threads started with torch.set_num_threads({threads})"
