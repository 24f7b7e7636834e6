// Includes' hash value: 4d4d2d080b0665e6a4f593ed92c569d2

#include <deep_ep/impls/dispatch.cuh>

using namespace deep_ep::elastic;

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&dispatch_impl<true, true, false, 132, 4, 28, 1, 7168, 56, 1, 256, 8, 128, 129, 198000000000>);
}
