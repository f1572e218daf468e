// XXH3-64 (seed 0, default secret): the checkpoint chunk checksum.
//
// Written from the public xxHash specification so that the engine needs no
// vendored code; it must agree bit for bit with `xxhash.xxh3_64` (tested).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sllm {

// Hash `len` bytes at `data`. Thread-safe, allocation-free.
uint64_t xxh3_64(const void* data, size_t len) noexcept;

// The same hash through one stripe kernel (0 scalar, 1 SSE2, 2 AVX2), so that
// tests can check every kernel; false when the CPU lacks it.
bool xxh3_64_kernel(const void* data, size_t len, int kernel, uint64_t* out) noexcept;

}  // namespace sllm
