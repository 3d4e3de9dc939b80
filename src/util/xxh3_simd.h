#ifndef CSKIT_UTIL_XXH3_SIMD_H
#define CSKIT_UTIL_XXH3_SIMD_H
/* XXH3-128's streaming update built for wider x86-64 vector units than the
 * baseline (SSE2): one C translation unit each, compiled with its -m flag
 * (src/CMakeLists.txt). util/digest.cpp picks the widest one the CPU and
 * the kernel support, once, at the first use. Internal to util.
 *
 * The units are C and include nothing but xxhash.h with XXH_INLINE_ALL,
 * so every function in them has internal linkage: nothing compiled for
 * AVX can be picked by the linker for code that runs on a CPU without it.
 * `state` is an XXH3_state_t (xxhash.h renames the type under
 * XXH_INLINE_ALL, identically in every unit). */

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void cskit_xxh3_update_avx2(void* state, const void* data, size_t n);
void cskit_xxh3_update_avx512(void* state, const void* data, size_t n);

#ifdef __cplusplus
}
#endif

#endif
