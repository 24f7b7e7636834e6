
#include <deep_ep/impls/ep/combine.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::combine_impl<true, false, true, 132, 16, 1, 7168, 4, 256, 8, 129, 198000000000>);
}
