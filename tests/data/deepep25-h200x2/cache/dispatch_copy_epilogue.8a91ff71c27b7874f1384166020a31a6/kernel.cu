
#include <deep_ep/impls/ep/dispatch_copy_epilogue.cuh>

static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::dispatch_copy_epilogue_impl<false, false, false, 132, 1, 16, 1, 2, 14336, 0, 1, 256, 8, 1>);
}
