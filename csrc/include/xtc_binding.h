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
}

}  // namespace xtc
