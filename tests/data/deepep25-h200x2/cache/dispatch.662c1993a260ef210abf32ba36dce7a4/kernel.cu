
#include <deep_ep/impls/ep/dispatch.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::dispatch_impl<true, false, false, 28, 4, 15, 2, 14336, 0, 1, 256, 8, 1, 129, 198000000000>);
}
