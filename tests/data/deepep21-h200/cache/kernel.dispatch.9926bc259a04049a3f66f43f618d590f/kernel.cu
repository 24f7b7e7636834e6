// Includes' hash value: 4d4d2d080b0665e6a4f593ed92c569d2

#include <deep_ep/impls/dispatch.cuh>

using namespace deep_ep::elastic;

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&dispatch_impl<true, false, false, 132, 4, 15, 1, 14336, 0, 512, 256, 8, 1, 129, 198000000000>);
}
