// Includes' hash value: 10d0f768a9ed98336ac35e33db0e801f

#include <deep_ep/impls/combine_reduce_epilogue.cuh>

using namespace deep_ep::elastic;

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&combine_reduce_epilogue_impl<false, true, 132, 16, 1, 1, 7168, 4096, 256, 8>);
}
