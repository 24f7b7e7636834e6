
#include <deep_ep/impls/ep/combine.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::combine_impl<true, true, true, 132, 16, 1, 7168, 8192, 256, 8, 129, 198000000000>);
}
