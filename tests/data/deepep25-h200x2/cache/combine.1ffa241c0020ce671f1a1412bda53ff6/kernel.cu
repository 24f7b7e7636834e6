
#include <deep_ep/impls/ep/combine.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::combine_impl<true, false, true, 28, 16, 2, 7168, 1, 256, 8, 129, 198000000000>);
}
