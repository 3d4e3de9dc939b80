/* XXH3's AVX2 kernel: built with -mavx2, called only where the CPU has it
 * (see xxh3_simd.h). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util/xxh3_simd.h"

void cskit_xxh3_update_avx2(void* state, const void* data, size_t n) {
  XXH3_128bits_update((XXH3_state_t*)state, data, n);
}
