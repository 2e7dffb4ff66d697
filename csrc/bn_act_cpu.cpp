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
// are reduced per thread and merged in thread order. Inner loops run over spans of whole
// positions with the per-channel values repeated along them, so they vectorise for any C. Compiled with -ffp-contract=off: every
// multiply and add rounds as in the eager reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bn_act.h"
#include "dtypes.h"

namespace fer_fast {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FER_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FER_CPU_CLONES
#endif

struct F32 {
  using type = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct F16 {
  using type = uint16_t;
  static float load(uint16_t v) { return half_value(v); }
  static uint16_t store(float v) { return half_bits(v); }
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

// Per-channel values repeated over a "period" of whole positions holding at least kPeriod
// elements, so that every inner loop runs over a long contiguous span whatever C is (with C = 8,
// a loop over the channels of one position would leave 16- and 32-lane vectors idle).
constexpr int64_t kPeriod = 128;

inline int64_t period_positions(int64_t c) { return std::max<int64_t>(1, kPeriod / c); }

struct Repeated {
  std::vector<float> values;  // rows of period_positions(c) * c floats
  int64_t length;
  const float* row(int r) const { return values.data() + r * length; }
};

// rows[i] (each [c]) repeated over a period.
inline Repeated repeat(std::initializer_list<const float*> rows, int64_t c) {
  const int64_t per = period_positions(c);
  Repeated out{std::vector<float>(rows.size() * per * c), per * c};
  int r = 0;
  for (const float* row : rows) {
    for (int64_t j = 0; j < per * c; ++j) out.values[r * per * c + j] = row[j % c];
    ++r;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Positions [first, last) of x [P, C]: per channel, sums of (bn_in - origin) and its square, in
// float per block of periods (span positions each), accumulated in double.
template <class T, bool kReluFirst>
FER_CPU_CLONES void stats_range(const typename T::type* __restrict x, int64_t c,
                                const float* __restrict origin, int64_t span, int64_t first,
                                int64_t last, double* __restrict sums) {
  constexpr int64_t kBlock = 32;  // periods summed in float before the double accumulation
  const int64_t length = span * c;
  std::vector<float> s1(length), s2(length);
  for (int64_t b0 = first; b0 < last; b0 += kBlock * span) {
    std::fill(s1.begin(), s1.end(), 0.0f);
    std::fill(s2.begin(), s2.end(), 0.0f);
    const int64_t b1 = std::min(last, b0 + kBlock * span);
    for (int64_t p = b0; p < b1; p += span) {
      const int64_t len = std::min(span, b1 - p) * c;
      const typename T::type* xp = x + p * c;
      for (int64_t j = 0; j < len; ++j) {
        const float d = bn_input<kReluFirst>(T::load(xp[j])) - origin[j];
        s1[j] += d;
        s2[j] += d * d;
      }
    }
    for (int64_t j = 0; j < length; ++j) {
      sums[j % c] += s1[j];
      sums[c + j % c] += s2[j];
    }
  }
}

template <class T, bool kReluFirst>
void stats(const void* x_, const Shape& s, double* out, int threads) {
  const auto* x = static_cast<const typename T::type*>(x_);
  const int64_t positions = s.n * s.h * s.w;
  std::vector<float> origin(s.c);  // the first position's values: sums of small differences
  for (int64_t k = 0; k < s.c; ++k) origin[k] = bn_input<kReluFirst>(T::load(x[k]));
  const Repeated rep = repeat({origin.data()}, s.c);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads,
                                                                             positions)));
  std::vector<std::vector<double>> partial(workers, std::vector<double>(2 * s.c, 0.0));
  parallel_ranges(positions, workers, [&](int64_t w, int64_t first, int64_t last) {
    stats_range<T, kReluFirst>(x, s.c, rep.row(0), period_positions(s.c), first, last,
                               partial[w].data());
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
                                  int64_t span, int64_t first, int64_t last) {
  for (int64_t p = first; p < last; p += span) {
    const int64_t len = std::min(span, last - p) * c;
    const typename T::type* xp = x + p * c;
    typename T::type* op = out + p * c;
    for (int64_t j = 0; j < len; ++j)
      op[j] = T::store(activation<kReluFirst>(T::load(xp[j]), scale[j], shift[j]));
  }
}

template <class T, bool kReluFirst>
void forward(const void* x, void* out, const Shape& s, const float* scale, const float* shift,
             int threads) {
  const Repeated rep = repeat({scale, shift}, s.c);
  parallel_ranges(s.n * s.h * s.w, threads, [&](int64_t, int64_t first, int64_t last) {
    forward_range<T, kReluFirst>(static_cast<const typename T::type*>(x),
                                 static_cast<typename T::type*>(out), s.c, rep.row(0),
                                 rep.row(1), period_positions(s.c), first, last);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

// dz of one element: the gradient reaching the BatchNorm output (in the bn_relu order through
// the ReLU mask of the block output z, rounded as it was stored).
template <class T, bool kReluFirst>
inline float grad_bn_out(float x, float g, float scale, float shift) {
  if (kReluFirst) return g;
  return rounded<T>(activation<false>(x, scale, shift)) > 0.0f ? g : 0.0f;
}

// coef rows mean, rstd, scale, shift repeated over a period (rows 0..3), then means (rows 4, 5).
template <class T, bool kReluFirst>
FER_CPU_CLONES void sums_range(const typename T::type* __restrict dout,
                               const typename T::type* __restrict x, int64_t c,
                               const Repeated& rep, int64_t span, int64_t first, int64_t last,
                               double* __restrict sums) {
  const float* __restrict mean = rep.row(0);
  const float* __restrict rstd = rep.row(1);
  const float* __restrict scale = rep.row(2);
  const float* __restrict shift = rep.row(3);
  constexpr int64_t kBlock = 32;
  const int64_t length = span * c;
  std::vector<float> s0(length), s1(length);
  for (int64_t b0 = first; b0 < last; b0 += kBlock * span) {
    std::fill(s0.begin(), s0.end(), 0.0f);
    std::fill(s1.begin(), s1.end(), 0.0f);
    const int64_t b1 = std::min(last, b0 + kBlock * span);
    for (int64_t p = b0; p < b1; p += span) {
      const int64_t len = std::min(span, b1 - p) * c;
      const typename T::type* xp = x + p * c;
      const typename T::type* gp = dout + p * c;
      for (int64_t j = 0; j < len; ++j) {
        const float xv = T::load(xp[j]);
        const float dz = grad_bn_out<T, kReluFirst>(xv, T::load(gp[j]), scale[j], shift[j]);
        const float x_hat = (bn_input<kReluFirst>(xv) - mean[j]) * rstd[j];
        s0[j] += dz;
        s1[j] += dz * x_hat;
      }
    }
    for (int64_t j = 0; j < length; ++j) {
      sums[j % c] += s0[j];
      sums[c + j % c] += s1[j];
    }
  }
}

template <class T, bool kReluFirst>
void backward_sums(const void* dout, const void* x, const Shape& s, const float* coef,
                   double* out, int threads) {
  const int64_t positions = s.n * s.h * s.w, c = s.c;
  const Repeated rep = repeat({coef, coef + c, coef + 2 * c, coef + 3 * c}, c);
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads,
                                                                             positions)));
  std::vector<std::vector<double>> partial(workers, std::vector<double>(2 * c, 0.0));
  parallel_ranges(positions, workers, [&](int64_t w, int64_t first, int64_t last) {
    sums_range<T, kReluFirst>(static_cast<const typename T::type*>(dout),
                              static_cast<const typename T::type*>(x), c, rep,
                              period_positions(c), first, last, partial[w].data());
  });
  for (int64_t k = 0; k < 2 * c; ++k) {
    double total = 0.0;
    for (const auto& part : partial) total += part[k];
    out[k] = total;
  }
}

// dy of positions [first, last): scale * (dz - mean_dz - x_hat * mean_dz_xhat) in training (the
// two means in rows 4 and 5), scale * dz in eval; relu_bn: masked by the conv output's sign.
template <class T, bool kReluFirst, bool kTraining>
FER_CPU_CLONES void dy_range(const typename T::type* __restrict dout,
                             const typename T::type* __restrict x,
                             typename T::type* __restrict dy, int64_t c, const Repeated& rep,
                             int64_t span, int64_t first, int64_t last) {
  const float* __restrict mean = rep.row(0);
  const float* __restrict rstd = rep.row(1);
  const float* __restrict scale = rep.row(2);
  const float* __restrict shift = rep.row(3);
  const float* __restrict mean_dz = rep.row(4);
  const float* __restrict mean_dz_xhat = rep.row(5);
  for (int64_t p = first; p < last; p += span) {
    const int64_t len = std::min(span, last - p) * c;
    const typename T::type* xp = x + p * c;
    const typename T::type* gp = dout + p * c;
    typename T::type* op = dy + p * c;
    for (int64_t j = 0; j < len; ++j) {
      const float xv = T::load(xp[j]);
      const float dz = grad_bn_out<T, kReluFirst>(xv, T::load(gp[j]), scale[j], shift[j]);
      float g;
      if (kTraining) {
        const float x_hat = (bn_input<kReluFirst>(xv) - mean[j]) * rstd[j];
        g = scale[j] * ((dz - mean_dz[j]) - x_hat * mean_dz_xhat[j]);
      } else {
        g = scale[j] * dz;
      }
      if (kReluFirst) g = xv > 0.0f ? g : 0.0f;
      op[j] = T::store(g);
    }
  }
}

template <class T, bool kReluFirst>
void backward(const void* dout, const void* x, void* dy, const Shape& s, const float* coef,
              const float* means, bool training, int threads) {
  const int64_t c = s.c;
  const Repeated rep = repeat({coef, coef + c, coef + 2 * c, coef + 3 * c, means, means + c}, c);
  parallel_ranges(s.n * s.h * s.w, threads, [&](int64_t, int64_t first, int64_t last) {
    const auto* g = static_cast<const typename T::type*>(dout);
    const auto* xv = static_cast<const typename T::type*>(x);
    auto* out = static_cast<typename T::type*>(dy);
    if (training)
      dy_range<T, kReluFirst, true>(g, xv, out, c, rep, period_positions(c), first, last);
    else
      dy_range<T, kReluFirst, false>(g, xv, out, c, rep, period_positions(c), first, last);
  });
}

// Dispatch on (dtype, order) to fn<T, kReluFirst>(...).
#define FER_DISPATCH(fn, ...)                                                               \
  do {                                                                                     \
    check(s, threads, __func__);                                                           \
    if (s.dtype == kFloat32)                                                               \
      return s.relu_first ? fn<F32, true>(__VA_ARGS__) : fn<F32, false>(__VA_ARGS__);      \
    if (s.dtype == kFloat16)                                                               \
      return s.relu_first ? fn<F16, true>(__VA_ARGS__) : fn<F16, false>(__VA_ARGS__);      \
    return s.relu_first ? fn<BF16, true>(__VA_ARGS__) : fn<BF16, false>(__VA_ARGS__);      \
  } while (0)

void check(const Shape& s, int threads, const char* what) {
  const std::string name(what);
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1)
    throw std::invalid_argument(name + ": empty or negative shape");
  if (s.dtype != kFloat32 && s.dtype != kFloat16 && s.dtype != kBFloat16)
    throw std::invalid_argument(name + ": dtype must be 0 (float32), 1 (float16) or 2 "
                                "(bfloat16), got " + std::to_string(s.dtype));
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
