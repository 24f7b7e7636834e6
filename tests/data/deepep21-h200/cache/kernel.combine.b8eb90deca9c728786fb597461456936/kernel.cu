// Includes' hash value: 806481bdc52de5448fe5654ba0452577

#include <deep_ep/impls/combine.cuh>

using namespace deep_ep::elastic;

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&combine_impl<true, false, true, 132, 16, 1, 7168, 1024, 256, 8, 129, 198000000000>);
}
