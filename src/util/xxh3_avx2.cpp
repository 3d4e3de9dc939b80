// XXH3's AVX2 kernel: built with -mavx2, called only where the CPU has it
// (see xxh3_simd.hpp).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util/xxh3_simd.hpp"

void cskit::util::detail::xxh3_update_avx2(void* state, const void* data, std::size_t n) noexcept {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state), data, n);
}
