/* XXH3's AVX-512 kernel: built with -mavx512f, called only where the CPU has it
 * (see xxh3_simd.h). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
/* GCC 12's own avx512fintrin.h trips this warning (GCC bug 105593). */
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util/xxh3_simd.h"

void cskit_xxh3_update_avx512(void* state, const void* data, size_t n) {
  XXH3_128bits_update((XXH3_state_t*)state, data, n);
}
