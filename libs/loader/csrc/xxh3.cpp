// XXH3-64 with scalar, SSE2 and AVX2 stripe loops picked once at run time.
#include "xxh3.hpp"

#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SLLM_X86 1
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sllm's loader assumes a little-endian host"
#endif

namespace sllm {
namespace {

constexpr uint64_t kP32_1 = 0x9E3779B1ULL;
constexpr uint64_t kP32_2 = 0x85EBCA77ULL;
constexpr uint64_t kP32_3 = 0xC2B2AE3DULL;
constexpr uint64_t kP64_1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP64_2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP64_3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP64_4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP64_5 = 0x27D4EB2F165667C5ULL;
constexpr uint64_t kPMX1 = 0x165667919E3779F9ULL;
constexpr uint64_t kPMX2 = 0x9FB21C651E98DF25ULL;

constexpr size_t kSecretSize = 192;
constexpr size_t kStripe = 64;
constexpr size_t kStripesPerBlock = (kSecretSize - kStripe) / 8;  // 16
constexpr size_t kBlock = kStripe * kStripesPerBlock;              // 1024

alignas(64) const uint8_t kSecret[kSecretSize] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

inline uint64_t rd64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t fold(uint64_t a, uint64_t b) {
  const __uint128_t p = static_cast<__uint128_t>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
}

inline uint64_t xxh64_avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kP64_2;
  h ^= h >> 29;
  h *= kP64_3;
  return h ^ (h >> 32);
}

inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 37;
  h *= kPMX1;
  return h ^ (h >> 32);
}

inline uint64_t rrmxmx(uint64_t h, uint64_t len) {
  h ^= rotl(h, 49) ^ rotl(h, 24);
  h *= kPMX2;
  h ^= (h >> 35) + len;
  h *= kPMX2;
  return h ^ (h >> 28);
}

inline uint64_t mix16(const uint8_t* in, const uint8_t* sec) {
  return fold(rd64(in) ^ rd64(sec), rd64(in + 8) ^ rd64(sec + 8));
}

uint64_t len_0to16(const uint8_t* in, size_t len) {
  if (len > 8) {
    const uint64_t lo = rd64(in) ^ (rd64(kSecret + 24) ^ rd64(kSecret + 32));
    const uint64_t hi = rd64(in + len - 8) ^ (rd64(kSecret + 40) ^ rd64(kSecret + 48));
    return avalanche(len + __builtin_bswap64(lo) + hi + fold(lo, hi));
  }
  if (len >= 4) {
    const uint64_t in1 = rd32(in);
    const uint64_t in2 = rd32(in + len - 4);
    const uint64_t keyed = (in2 + (in1 << 32)) ^ (rd64(kSecret + 8) ^ rd64(kSecret + 16));
    return rrmxmx(keyed, len);
  }
  if (len > 0) {
    const uint32_t combined = (static_cast<uint32_t>(in[0]) << 16) |
                              (static_cast<uint32_t>(in[len >> 1]) << 24) |
                              static_cast<uint32_t>(in[len - 1]) | (static_cast<uint32_t>(len) << 8);
    const uint64_t bitflip = rd32(kSecret) ^ rd32(kSecret + 4);
    return xxh64_avalanche(combined ^ bitflip);
  }
  return xxh64_avalanche(rd64(kSecret + 56) ^ rd64(kSecret + 64));
}

uint64_t len_17to128(const uint8_t* in, size_t len) {
  uint64_t acc = len * kP64_1;
  if (len > 32) {
    if (len > 64) {
      if (len > 96) {
        acc += mix16(in + 48, kSecret + 96);
        acc += mix16(in + len - 64, kSecret + 112);
      }
      acc += mix16(in + 32, kSecret + 64);
      acc += mix16(in + len - 48, kSecret + 80);
    }
    acc += mix16(in + 16, kSecret + 32);
    acc += mix16(in + len - 32, kSecret + 48);
  }
  acc += mix16(in, kSecret);
  acc += mix16(in + len - 16, kSecret + 16);
  return avalanche(acc);
}

uint64_t len_129to240(const uint8_t* in, size_t len) {
  constexpr size_t kStartOffset = 3;
  constexpr size_t kLastOffset = 17;
  constexpr size_t kSecretSizeMin = 136;
  uint64_t acc = len * kP64_1;
  const size_t rounds = len / 16;
  for (size_t i = 0; i < 8; ++i) acc += mix16(in + 16 * i, kSecret + 16 * i);
  acc = avalanche(acc);
  for (size_t i = 8; i < rounds; ++i) acc += mix16(in + 16 * i, kSecret + 16 * (i - 8) + kStartOffset);
  acc += mix16(in + len - 16, kSecret + kSecretSizeMin - kLastOffset);
  return avalanche(acc);
}

// ---- long inputs: 8 accumulators fed 64-byte stripes ----------------------

void accumulate_scalar(uint64_t* acc, const uint8_t* in, const uint8_t* sec, size_t stripes) {
  for (size_t s = 0; s < stripes; ++s) {
    const uint8_t* p = in + s * kStripe;
    const uint8_t* k = sec + s * 8;
    for (size_t i = 0; i < 8; ++i) {
      const uint64_t v = rd64(p + 8 * i);
      const uint64_t dk = v ^ rd64(k + 8 * i);
      acc[i ^ 1] += v;
      acc[i] += (dk & 0xFFFFFFFFULL) * (dk >> 32);
    }
  }
}

void scramble_scalar(uint64_t* acc, const uint8_t* sec) {
  for (size_t i = 0; i < 8; ++i) {
    uint64_t a = acc[i];
    a ^= a >> 47;
    a ^= rd64(sec + 8 * i);
    acc[i] = a * kP32_1;
  }
}

#ifdef SLLM_X86
void accumulate_sse2(uint64_t* acc, const uint8_t* in, const uint8_t* sec, size_t stripes) {
  __m128i* xacc = reinterpret_cast<__m128i*>(acc);
  for (size_t s = 0; s < stripes; ++s) {
    const __m128i* p = reinterpret_cast<const __m128i*>(in + s * kStripe);
    const __m128i* k = reinterpret_cast<const __m128i*>(sec + s * 8);
    for (size_t i = 0; i < 4; ++i) {
      const __m128i d = _mm_loadu_si128(p + i);
      const __m128i dk = _mm_xor_si128(d, _mm_loadu_si128(k + i));
      const __m128i prod = _mm_mul_epu32(dk, _mm_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1)));
      const __m128i swapped = _mm_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));
      xacc[i] = _mm_add_epi64(prod, _mm_add_epi64(xacc[i], swapped));
    }
  }
}

void scramble_sse2(uint64_t* acc, const uint8_t* sec) {
  __m128i* xacc = reinterpret_cast<__m128i*>(acc);
  const __m128i prime = _mm_set1_epi32(static_cast<int>(kP32_1));
  for (size_t i = 0; i < 4; ++i) {
    const __m128i a = xacc[i];
    const __m128i dv = _mm_xor_si128(a, _mm_srli_epi64(a, 47));
    const __m128i dk = _mm_xor_si128(dv, _mm_loadu_si128(reinterpret_cast<const __m128i*>(sec) + i));
    const __m128i hi = _mm_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1));
    xacc[i] = _mm_add_epi64(_mm_mul_epu32(dk, prime), _mm_slli_epi64(_mm_mul_epu32(hi, prime), 32));
  }
}

__attribute__((target("avx2"))) void accumulate_avx2(uint64_t* acc, const uint8_t* in,
                                                     const uint8_t* sec, size_t stripes) {
  __m256i a0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc));
  __m256i a1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc) + 1);
  for (size_t s = 0; s < stripes; ++s) {
    const __m256i* p = reinterpret_cast<const __m256i*>(in + s * kStripe);
    const __m256i* k = reinterpret_cast<const __m256i*>(sec + s * 8);
    const __m256i d0 = _mm256_loadu_si256(p);
    const __m256i d1 = _mm256_loadu_si256(p + 1);
    const __m256i dk0 = _mm256_xor_si256(d0, _mm256_loadu_si256(k));
    const __m256i dk1 = _mm256_xor_si256(d1, _mm256_loadu_si256(k + 1));
    const __m256i p0 = _mm256_mul_epu32(dk0, _mm256_shuffle_epi32(dk0, _MM_SHUFFLE(0, 3, 0, 1)));
    const __m256i p1 = _mm256_mul_epu32(dk1, _mm256_shuffle_epi32(dk1, _MM_SHUFFLE(0, 3, 0, 1)));
    a0 = _mm256_add_epi64(p0, _mm256_add_epi64(a0, _mm256_shuffle_epi32(d0, _MM_SHUFFLE(1, 0, 3, 2))));
    a1 = _mm256_add_epi64(p1, _mm256_add_epi64(a1, _mm256_shuffle_epi32(d1, _MM_SHUFFLE(1, 0, 3, 2))));
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc), a0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc) + 1, a1);
}

__attribute__((target("avx2"))) void scramble_avx2(uint64_t* acc, const uint8_t* sec) {
  __m256i* xacc = reinterpret_cast<__m256i*>(acc);
  const __m256i prime = _mm256_set1_epi32(static_cast<int>(kP32_1));
  for (size_t i = 0; i < 2; ++i) {
    const __m256i a = _mm256_load_si256(xacc + i);
    const __m256i dv = _mm256_xor_si256(a, _mm256_srli_epi64(a, 47));
    const __m256i dk =
        _mm256_xor_si256(dv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sec) + i));
    const __m256i hi = _mm256_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1));
    const __m256i lo_prod = _mm256_mul_epu32(dk, prime);
    const __m256i hi_prod = _mm256_mul_epu32(hi, prime);
    _mm256_store_si256(xacc + i, _mm256_add_epi64(lo_prod, _mm256_slli_epi64(hi_prod, 32)));
  }
}
#endif

using AccumulateFn = void (*)(uint64_t*, const uint8_t*, const uint8_t*, size_t);
using ScrambleFn = void (*)(uint64_t*, const uint8_t*);

struct Kernels {
  AccumulateFn accumulate;
  ScrambleFn scramble;
};

Kernels pick_kernels() {
#ifdef SLLM_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return {accumulate_avx2, scramble_avx2};
  return {accumulate_sse2, scramble_sse2};
#else
  return {accumulate_scalar, scramble_scalar};
#endif
}

uint64_t hash_long(const Kernels& k, const uint8_t* in, size_t len) {
  alignas(64) uint64_t acc[8] = {kP32_3, kP64_1, kP64_2, kP64_3, kP64_4, kP32_2, kP64_5, kP32_1};
  const size_t blocks = (len - 1) / kBlock;
  for (size_t n = 0; n < blocks; ++n) {
    k.accumulate(acc, in + n * kBlock, kSecret, kStripesPerBlock);
    k.scramble(acc, kSecret + kSecretSize - kStripe);
  }
  const size_t stripes = ((len - 1) - kBlock * blocks) / kStripe;
  k.accumulate(acc, in + blocks * kBlock, kSecret, stripes);
  constexpr size_t kLastAccStart = 7;
  k.accumulate(acc, in + len - kStripe, kSecret + kSecretSize - kStripe - kLastAccStart, 1);
  constexpr size_t kMergeStart = 11;
  uint64_t result = len * kP64_1;
  for (size_t i = 0; i < 4; ++i) {
    const uint8_t* s = kSecret + kMergeStart + 16 * i;
    result += fold(acc[2 * i] ^ rd64(s), acc[2 * i + 1] ^ rd64(s + 8));
  }
  return avalanche(result);
}

}  // namespace

uint64_t xxh3_64(const void* data, size_t len) noexcept {
  static const Kernels k = pick_kernels();
  const uint8_t* in = static_cast<const uint8_t*>(data);
  if (len <= 16) return len_0to16(in, len);
  if (len <= 128) return len_17to128(in, len);
  if (len <= 240) return len_129to240(in, len);
  return hash_long(k, in, len);
}

bool xxh3_64_kernel(const void* data, size_t len, int kernel, uint64_t* out) noexcept {
  Kernels k{accumulate_scalar, scramble_scalar};
#ifdef SLLM_X86
  if (kernel == 1) k = {accumulate_sse2, scramble_sse2};
  if (kernel == 2) {
    if (!__builtin_cpu_supports("avx2")) return false;
    k = {accumulate_avx2, scramble_avx2};
  }
#else
  if (kernel != 0) return false;
#endif
  const uint8_t* in = static_cast<const uint8_t*>(data);
  *out = len <= 240 ? xxh3_64(data, len) : hash_long(k, in, len);
  return true;
}

}  // namespace sllm
