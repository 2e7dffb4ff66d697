// Element types of the native kernels: fp32 <-> fp16 / bf16 bit conversions (round to nearest
// even, as torch's .to() does), shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FER_HD __host__ __device__ __forceinline__
#else
#define FER_HD inline
#endif

namespace fer_fast {

// Element dtype codes of the launchers (fer_fast/augmentation.py and fer_fast/block.py pass them).
enum OutDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

FER_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// IEEE binary16 bits of f, round to nearest even (what torch's .to(torch.float16) does).
// Every case is computed and one selected, in signed ints, so that the CPU loop vectorises.
FER_HD uint16_t half_bits(float f) {
  const uint32_t x = float_bits(f);
  const int32_t ax = static_cast<int32_t>(x & 0x7fffffffu);
  // normal half: rebias the exponent, round the mantissa from 23 to 10 bits
  const int32_t normal = (ax - 0x38000000 + 0xfff + ((ax >> 13) & 1)) >> 13;
  // subnormal half: |f| in units of 2^-24 (exact scaling), rounded to an integer by adding and
  // subtracting 2^23; |f| is capped at 2^-14 first so that the unused lanes stay finite
  const float a = fabsf(f) < 6.103515625e-05f ? fabsf(f) : 6.103515625e-05f;
  const int32_t subnormal = static_cast<int32_t>((a * 16777216.0f + 8388608.0f) - 8388608.0f);
  const int32_t special = ax > 0x7f800000 ? 0x7e00 : 0x7c00;  // nan; inf and overflow
  const int32_t h = ax >= 0x477ff000 ? special : (ax >= 0x38800000 ? normal : subnormal);
  return static_cast<uint16_t>(((x >> 16) & 0x8000u) | static_cast<uint32_t>(h));
}

// bfloat16 bits of f, round to nearest even, nan kept quiet. Both cases are computed and one
// selected, so that CPU loops vectorise.
FER_HD uint16_t bfloat16_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t nan = (x >> 16) | 0x40u;
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// Output element types: storage type and conversion from the fp32 value.
struct Float32Out {
  using type = float;
  static FER_HD float from(float v) { return v; }
};
struct Float16Out {
  using type = uint16_t;
  static FER_HD uint16_t from(float v) { return half_bits(v); }
};
struct BFloat16Out {
  using type = uint16_t;
  static FER_HD uint16_t from(float v) { return bfloat16_bits(v); }
};

// The float value of IEEE binary16 bits (exact: every half is a float).
FER_HD float half_value(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  // subnormal (and zero): mantissa * 2^-24, computed exactly in float
  const float small = static_cast<float>(static_cast<int32_t>(mantissa)) * 5.9604644775390625e-08f;
  uint32_t small_bits;
#if defined(__CUDA_ARCH__)
  small_bits = __float_as_uint(small);
#else
  std::memcpy(&small_bits, &small, sizeof small_bits);
#endif
  const uint32_t normal = exponent == 0x1fu ? (0x7f800000u | (mantissa << 13))  // inf, nan
                                            : (((exponent + 112u) << 23) | (mantissa << 13));
  const uint32_t x = sign | (exponent == 0 ? small_bits : normal);
#if defined(__CUDA_ARCH__)
  return __uint_as_float(x);
#else
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
#endif
}

FER_HD float bfloat16_value(uint16_t bits) {
  const uint32_t x = static_cast<uint32_t>(bits) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(x);
#else
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
#endif
}

}  // namespace fer_fast
