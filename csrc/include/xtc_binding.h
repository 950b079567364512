// The Python names of the ops, shared by the CPU and CUDA modules so the two cannot drift apart.
#pragma once

#include "xtc_ops.h"

namespace xtc {

inline void define_ops(pybind11::module& m) {
  m.def("fake_quant", &fake_quant, "grouped fake quantization (binary, ternary, 3..8-bit sym/asym)",
        pybind11::arg("x"), pybind11::arg("bits"), pybind11::arg("num_groups"), pybind11::arg("symmetric"),
        pybind11::arg("out") = pybind11::none());
  m.def("pack_bits", &pack_bits, "pack 1/2/4/8-bit codes along the last dimension");
  m.def("unpack_bits", &unpack_bits, "unpack 1/2/4/8-bit codes along the last dimension");
  m.def("prepack_weight", &prepack_weight, "packed weight rows -> {kernel layout, row sums of levels}",
        pybind11::arg("packed_weight"), pybind11::arg("bits"), pybind11::arg("in_features"));
  m.def("packed_linear", &packed_linear, "per-token int8 activations x packed weight, integer accumulation",
        pybind11::arg("x"), pybind11::arg("kernel_weight"), pybind11::arg("row_sum"), pybind11::arg("row_scale"),
        pybind11::arg("bias"), pybind11::arg("bits"), pybind11::arg("act_bits"));
}

}  // namespace xtc
