// Python binding of the CPU ops (module name set by the builder: xtc_ds_cpu_ops_<isa>).
#include "xtc_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fake_quant", &xtc::fake_quant, "grouped fake quantization (binary, ternary, 3..8-bit sym/asym)",
        pybind11::arg("x"), pybind11::arg("bits"), pybind11::arg("num_groups"), pybind11::arg("symmetric"),
        pybind11::arg("out") = pybind11::none());
  m.def("pack_bits", &xtc::pack_bits, "pack 1/2/4/8-bit codes along the last dimension");
  m.def("unpack_bits", &xtc::unpack_bits, "unpack 1/2/4/8-bit codes along the last dimension");
}
