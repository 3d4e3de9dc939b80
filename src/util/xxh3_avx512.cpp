// XXH3's AVX-512 kernel: built with -mavx512f, called only where the CPU has it
// (see xxh3_simd.hpp).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's own avx512fintrin.h trips this warning (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util/xxh3_simd.hpp"

void cskit::util::detail::xxh3_update_avx512(void* state, const void* data, std::size_t n) noexcept {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state), data, n);
}
