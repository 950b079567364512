// Python binding of the CPU ops (module name set by the builder: xtc_ds_cpu_ops_<isa>).
#include "xtc_binding.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { xtc::define_ops(m); }
