"""Fused vs reference quantization ops at BERT-base shapes, next to this machine's copy bandwidth.

Usage: ``python benchmarks/bench_ops.py [--repeats 20]``

For each weight shape and bit width: reference time, fused time, speedup, and the fused op's effective
bandwidth (bytes read + written by one ideal pass: input read, output written) as a share of the copy
bandwidth of a large ``clone`` measured in the same run. Activation rows use a (32 x 128, 768) token batch.
A second table times the packed W1A8/W2A8 linear kernel against its reference (unpack, dequantize, fake-quantize
the input, fp32 matmul) and against a plain fp32 ``F.linear``, for 128 and 4096 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from xtc_ds import ops
from xtc_ds.ops import native
from xtc_ds.quant import reference

SHAPES = [(768, 768), (3072, 768), (768, 3072), (30522, 768)]


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if native.load_cpu() is None:
        raise SystemExit(f"fused CPU ops unavailable: {native.status()['cpu']}")
    big = torch.randn(64 * 1024 * 1024 // 4)
    copy_gbs = 2 * big.numel() * 4 / _time(big.clone, args.repeats) / 1e9
    print(
        f"CPU, {torch.get_num_threads()} threads, float32; copy bandwidth (clone, read + write): {copy_gbs:.1f} GB/s"
    )
    print(f"{'op':<26} {'shape':>12} {'reference ms':>13} {'fused ms':>9} {'speedup':>8} {'GB/s':>6} {'% copy':>7}")
    rows = []
    for shape in SHAPES:
        w = torch.randn(shape)
        for bits, symmetric in ((1, True), (2, True), (4, True), (8, True), (8, False)):
            name = {1: "binary", 2: "ternary"}.get(bits, f"int{bits} {'sym' if symmetric else 'asym'}")
            rows.append(
                (
                    f"weight {name}, 1 group",
                    w,
                    lambda w=w, b=bits, s=symmetric: reference.fake_quant_weight(w, b, 1, s),
                    lambda w=w, b=bits, s=symmetric: ops.fake_quant_weight(w, b, 1, s),
                )
            )
        rows.append(
            (
                "weight binary, per row",
                w,
                lambda w=w: reference.fake_quant_weight(w, 1, w.shape[0]),
                lambda w=w: ops.fake_quant_weight(w, 1, w.shape[0]),
            )
        )
    x = torch.randn(32 * 128, 768)
    for bits in (8, 4):
        rows.append(
            (
                f"activation int{bits} per token",
                x,
                lambda b=bits: reference.fake_quant_activation(x, b),
                lambda b=bits: ops.fake_quant_activation(x, b),
            )
        )
    for name, tensor, ref_fn, fused_fn in rows:
        ref_s, fused_s = _time(ref_fn, args.repeats), _time(fused_fn, args.repeats)
        gbs = 2 * tensor.numel() * tensor.element_size() / fused_s / 1e9
        shape = "x".join(map(str, tensor.shape))
        print(
            f"{name:<26} {shape:>12} {ref_s * 1e3:>13.2f} {fused_s * 1e3:>9.2f} {ref_s / fused_s:>7.1f}x "
            f"{gbs:>6.1f} {100 * gbs / copy_gbs:>6.0f}%"
        )
    _packed_linear_table(args.repeats)


def _packed_linear_table(repeats: int) -> None:
    """Packed W{1,2}A8 linear: the integer kernel vs its reference (unpack, dequantize, fp32 matmul) and fp32."""
    import torch.nn.functional as F

    from xtc_ds.quant import packing

    kernel = native.load_cpu()
    print(
        f"\n{'packed linear':<14} {'tokens x in -> out':>20} {'fp32 ms':>8} {'reference ms':>13} {'kernel ms':>10}"
        f" {'vs fp32':>8} {'vs ref':>7}"
    )
    for tokens in (128, 4096):
        for k, n in ((768, 768), (768, 3072), (3072, 768)):
            x, w, bias = torch.randn(tokens, k), torch.randn(n, k), torch.randn(n)
            fp32_s = _time(lambda x=x, w=w, bias=bias: F.linear(x, w, bias), repeats)
            for bits in (1, 2):
                quantized = reference.quantize_weight(w, bits, 1)
                packed = packing.pack_bits(quantized.codes, bits)
                kernel_weight, row_sum = kernel.prepack_weight(packed, bits, k)
                scale = quantized.weight_scale.expand(n).contiguous()

                def reference_fn(bits=bits, packed=packed, quantized=quantized, x=x, bias=bias):
                    codes = packing.unpack_bits(packed, bits)
                    weight = reference.dequantize_weight(quantized._replace(codes=codes), bits)
                    return F.linear(reference.fake_quant_activation(x, 8), weight, bias)

                ref_s = _time(reference_fn, repeats)
                kernel_s = _time(
                    lambda kw=kernel_weight, rs=row_sum, sc=scale, b=bits, x=x, bias=bias: kernel.packed_linear(
                        x, kw, rs, sc, bias, b, 8
                    ),
                    repeats,
                )
                shape = f"{tokens}x{k}->{n}"
                print(
                    f"{f'W{bits}A8':<14} {shape:>20} {fp32_s * 1e3:>8.2f} {ref_s * 1e3:>13.2f} {kernel_s * 1e3:>10.2f}"
                    f" {fp32_s / kernel_s:>7.1f}x {ref_s / kernel_s:>6.1f}x"
                )


if __name__ == "__main__":
    main()
