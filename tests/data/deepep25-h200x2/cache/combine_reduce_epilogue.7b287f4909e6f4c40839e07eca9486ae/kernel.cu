
#include <deep_ep/impls/ep/combine_reduce_epilogue.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::combine_reduce_epilogue_impl<false, true, 132, 16, 1, 2, 7168, 1, 256, 8>);
}
