// BatchNorm + ReLU of a channels_last conv output on the CPU: the kernels of the "native" block
// backend (fer_fast/block.py; its 2x2 max-pool is torch's). Four passes, each one read of the
// data:
//   forward:  bn_stats (per-channel shifted sums of the BatchNorm input) and bn_act_forward
//             (normalise and ReLU in the block's order);
//   backward: bn_act_backward_sums (sum dz, sum dz * x_hat) and bn_act_backward (dy),
// where dz, the gradient of the BatchNorm output, is recomputed from the conv output (the ReLU
// mask of the rounded block output) instead of being stored. The [C]-sized coefficient math
// between the passes runs in torch (fer_fast/block.py), so the formulas are the eager
// reference's.
//
// Positions (n, h, w) are split over std::threads in contiguous ranges; per-channel partial sums
// are reduced per thread and merged in thread order. Compiled with -ffp-contract=off: every
// multiply and add rounds as in the eager reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bn_act.h"
#include "dtypes.h"

namespace fer_fast {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FER_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FER_CPU_CLONES
#endif

struct F32 {
  using type = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct BF16 {
  using type = uint16_t;
  static float load(uint16_t v) { return bfloat16_value(v); }
  static uint16_t store(float v) { return bfloat16_bits(v); }
};

// The value v takes once stored as T (what the reference's .to(dtype) gives).
template <class T>
inline float rounded(float v) { return T::load(T::store(v)); }

// The block's activation of conv output x: relu(x * scale + shift) ("bn_relu") or
// relu(x) * scale + shift ("relu_bn"), in the reference's operation order.
template <bool kReluFirst>
inline float activation(float x, float scale, float shift) {
  if (kReluFirst) return std::max(x, 0.0f) * scale + shift;
  const float v = x * scale + shift;
  return v > 0.0f ? v : 0.0f;
}

template <bool kReluFirst>
inline float bn_input(float x) { return kReluFirst ? (x > 0.0f ? x : 0.0f) : x; }



// Run body(first, last) over [0, count) split into `threads` contiguous ranges; thread 0 is the
// caller. Returns after every range is done.
template <class Body>
void parallel_ranges(int64_t count, int threads, Body body) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, count));
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int64_t w = 1; w < workers; ++w)
    pool.emplace_back(body, w, w * count / workers, (w + 1) * count / workers);
  body(0, 0, count / workers);
  for (auto& t : pool) t.join();
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Positions [first, last) of x [P, C]: per channel, sums of (bn_in - shift0) and its square,
// in float per block of rows, accumulated in double.
template <class T, bool kReluFirst>
FER_CPU_CLONES void stats_range(const typename T::type* __restrict x, int64_t c,
                                const float* __restrict origin, int64_t first, int64_t last,
                                double* __restrict sums) {
  constexpr int64_t kBlock = 64;
  std::vector<float> s1(c), s2(c);
  for (int64_t p0 = first; p0 < last; p0 += kBlock) {
    std::fill(s1.begin(), s1.end(), 0.0f);
    std::fill(s2.begin(), s2.end(), 0.0f);
    const int64_t p1 = std::min(last, p0 + kBlock);
    for (int64_t p = p0; p < p1; ++p) {
      const typename T::type* row = x + p * c;
      for (int64_t k = 0; k < c; ++k) {
        const float d = bn_input<kReluFirst>(T::load(row[k])) - origin[k];
        s1[k] += d;
        s2[k] += d * d;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      sums[k] += s1[k];
      sums[c + k] += s2[k];
    }
  }
}

template <class T, bool kReluFirst>
void stats(const void* x_, const Shape& s, double* out, int threads) {
  const auto* x = static_cast<const typename T::type*>(x_);
  const int64_t positions = s.n * s.h * s.w;
  std::vector<float> origin(s.c);  // the first position's values: sums of small differences
  for (int64_t k = 0; k < s.c; ++k) origin[k] = bn_input<kReluFirst>(T::load(x[k]));
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads,
                                                                             positions)));
  std::vector<std::vector<double>> partial(workers, std::vector<double>(2 * s.c, 0.0));
  parallel_ranges(positions, workers, [&](int64_t w, int64_t first, int64_t last) {
    stats_range<T, kReluFirst>(x, s.c, origin.data(), first, last, partial[w].data());
  });
  for (int64_t k = 0; k < s.c; ++k) {
    double s1 = 0.0, s2 = 0.0;
    for (const auto& part : partial) {
      s1 += part[k];
      s2 += part[s.c + k];
    }
    out[k] = origin[k];
    out[s.c + k] = s1;
    out[2 * s.c + k] = s2;
  }
}

// Positions [first, last): the block output.
template <class T, bool kReluFirst>
FER_CPU_CLONES void forward_range(const typename T::type* __restrict x,
                                  typename T::type* __restrict out, int64_t c,
                                  const float* __restrict scale, const float* __restrict shift,
                                  int64_t first, int64_t last) {
  for (int64_t p = first * c; p < last * c; p += c) {
    for (int64_t k = 0; k < c; ++k)
      out[p + k] = T::store(activation<kReluFirst>(T::load(x[p + k]), scale[k], shift[k]));
  }
}

template <class T, bool kReluFirst>
void forward(const void* x, void* out, const Shape& s, const float* scale, const float* shift,
             int threads) {
  parallel_ranges(s.n * s.h * s.w, threads, [&](int64_t, int64_t first, int64_t last) {
    forward_range<T, kReluFirst>(static_cast<const typename T::type*>(x),
                                 static_cast<typename T::type*>(out), s.c, scale, shift, first,
                                 last);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

// dz of one position's channels: the gradient reaching the BatchNorm output (in the bn_relu
// order through the ReLU mask of the block output z, rounded as it was stored).
template <class T, bool kReluFirst>
inline float grad_bn_out(float x, float g, float scale, float shift) {
  if (kReluFirst) return g;
  return rounded<T>(activation<false>(x, scale, shift)) > 0.0f ? g : 0.0f;
}

template <class T, bool kReluFirst>
FER_CPU_CLONES void sums_range(const typename T::type* __restrict dout,
                               const typename T::type* __restrict x, int64_t c,
                               const float* __restrict coef, int64_t first, int64_t last,
                               double* __restrict sums) {
  const float *mean = coef, *rstd = coef + c, *scale = coef + 2 * c, *shift = coef + 3 * c;
  constexpr int64_t kBlock = 64;
  std::vector<float> s0(c), s1(c);
  for (int64_t p0 = first; p0 < last; p0 += kBlock) {
    std::fill(s0.begin(), s0.end(), 0.0f);
    std::fill(s1.begin(), s1.end(), 0.0f);
    const int64_t p1 = std::min(last, p0 + kBlock);
    for (int64_t p = p0 * c; p < p1 * c; p += c) {
      for (int64_t k = 0; k < c; ++k) {
        const float xv = T::load(x[p + k]);
        const float dz = grad_bn_out<T, kReluFirst>(xv, T::load(dout[p + k]), scale[k], shift[k]);
        const float x_hat = (bn_input<kReluFirst>(xv) - mean[k]) * rstd[k];
        s0[k] += dz;
        s1[k] += dz * x_hat;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      sums[k] += s0[k];
      sums[c + k] += s1[k];
    }
  }
}

template <class T, bool kReluFirst>
void backward_sums(const void* dout, const void* x, const Shape& s, const float* coef,
                   double* out, int threads) {
  const int64_t positions = s.n * s.h * s.w;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads,
                                                                             positions)));
  std::vector<std::vector<double>> partial(workers, std::vector<double>(2 * s.c, 0.0));
  parallel_ranges(positions, workers, [&](int64_t w, int64_t first, int64_t last) {
    sums_range<T, kReluFirst>(static_cast<const typename T::type*>(dout),
                              static_cast<const typename T::type*>(x), s.c, coef, first, last,
                              partial[w].data());
  });
  for (int64_t k = 0; k < 2 * s.c; ++k) {
    double total = 0.0;
    for (const auto& part : partial) total += part[k];
    out[k] = total;
  }
}

// dy of positions [first, last): scale * (dz - mean_dz - x_hat * mean_dz_xhat) in training (the
// two means in `means`), scale * dz in eval; relu_bn: masked by the conv output's sign.
template <class T, bool kReluFirst>
FER_CPU_CLONES void dy_range(const typename T::type* __restrict dout,
                             const typename T::type* __restrict x,
                             typename T::type* __restrict dy, int64_t c,
                             const float* __restrict coef, const float* __restrict means,
                             bool training, int64_t first, int64_t last) {
  const float *mean = coef, *rstd = coef + c, *scale = coef + 2 * c, *shift = coef + 3 * c;
  for (int64_t p = first * c; p < last * c; p += c) {
    for (int64_t k = 0; k < c; ++k) {
      const float xv = T::load(x[p + k]);
      const float dz = grad_bn_out<T, kReluFirst>(xv, T::load(dout[p + k]), scale[k], shift[k]);
      float g;
      if (training) {
        const float x_hat = (bn_input<kReluFirst>(xv) - mean[k]) * rstd[k];
        g = scale[k] * ((dz - means[k]) - x_hat * means[c + k]);
      } else {
        g = scale[k] * dz;
      }
      if (kReluFirst) g = xv > 0.0f ? g : 0.0f;
      dy[p + k] = T::store(g);
    }
  }
}

template <class T, bool kReluFirst>
void backward(const void* dout, const void* x, void* dy, const Shape& s, const float* coef,
              const float* means, bool training, int threads) {
  parallel_ranges(s.n * s.h * s.w, threads, [&](int64_t, int64_t first, int64_t last) {
    dy_range<T, kReluFirst>(static_cast<const typename T::type*>(dout),
                            static_cast<const typename T::type*>(x),
                            static_cast<typename T::type*>(dy), s.c, coef, means, training,
                            first, last);
  });
}

// Dispatch on (dtype, order) to fn<T, kReluFirst>(...).
#define FER_DISPATCH(fn, ...)                                                               \
  do {                                                                                     \
    check(s, threads, __func__);                                                           \
    if (s.dtype == kFloat32)                                                               \
      return s.relu_first ? fn<F32, true>(__VA_ARGS__) : fn<F32, false>(__VA_ARGS__);      \
    return s.relu_first ? fn<BF16, true>(__VA_ARGS__) : fn<BF16, false>(__VA_ARGS__);      \
  } while (0)

void check(const Shape& s, int threads, const char* what) {
  const std::string name(what);
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1)
    throw std::invalid_argument(name + ": empty or negative shape");
  if (s.dtype != kFloat32 && s.dtype != kBFloat16)
    throw std::invalid_argument(name + ": dtype must be 0 (float32) or 2 (bfloat16), got " +
                                std::to_string(s.dtype));
  if (threads < 1) throw std::invalid_argument(name + ": threads must be >= 1");
}

}  // namespace

void bn_stats_cpu(const void* x, const Shape& s, double* out, int threads) {
  FER_DISPATCH(stats, x, s, out, threads);
}

void bn_act_forward_cpu(const void* x, void* out, const Shape& s, const float* scale,
                        const float* shift, int threads) {
  FER_DISPATCH(forward, x, out, s, scale, shift, threads);
}

void bn_act_backward_sums_cpu(const void* dout, const void* x, const Shape& s, const float* coef,
                              double* out, int threads) {
  FER_DISPATCH(backward_sums, dout, x, s, coef, out, threads);
}

void bn_act_backward_cpu(const void* dout, const void* x, void* dy, const Shape& s,
                         const float* coef, const float* means, bool training, int threads) {
  FER_DISPATCH(backward, dout, x, dy, s, coef, means, training, threads);
}

}  // namespace fer_fast
