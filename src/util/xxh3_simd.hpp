#pragma once
// XXH3-128's streaming update built for wider x86-64 vector units than the
// baseline (SSE2): one translation unit each, compiled with its -m flag
// (src/CMakeLists.txt). digest.cpp picks the widest one the CPU and the
// kernel support, once, at the first use. Internal to util.
//
// Each unit includes nothing but xxhash.h with XXH_INLINE_ALL, so every
// function in it has internal linkage: no inline function compiled for
// AVX can be picked by the linker for code that runs on a CPU without it.
// `state` is an XXH3_state_t (xxhash.h renames the type under
// XXH_INLINE_ALL, identically in every unit).

#include <cstddef>

namespace cskit::util::detail {

using xxh3_update_fn = void (*)(void* state, const void* data, std::size_t n) noexcept;

void xxh3_update_avx2(void* state, const void* data, std::size_t n) noexcept;
void xxh3_update_avx512(void* state, const void* data, std::size_t n) noexcept;

}  // namespace cskit::util::detail
