// Includes' hash value: 7aa89586d0a1c62cc746621b51a28b59

#include <deep_ep/impls/dispatch_copy_epilogue.cuh>

using namespace deep_ep::elastic;

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&dispatch_copy_epilogue_impl<false, false, false, 132, 1, 16, 1, 1, 14336, 0, 512, 256, 8, 1>);
}
