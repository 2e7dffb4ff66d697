// Launchers of the native BatchNorm + ReLU CPU kernels (fer_fast._C), the "native" block
// backend of fer_fast/block.py. Pointers are host addresses of contiguous tensors whose dtypes
// and shapes fer_fast/block.py has checked:
//   x, dout, dy, out: channels_last [n, c, h, w] (memory order n, h, w, c) of dtype `dtype`;
//   scale, shift fp32 [c]; coef fp32 [4, c] rows mean, rstd, scale, shift; means fp32 [2, c]
//   (sum dz / count, sum dz * x_hat / count).
// Each launcher throws std::invalid_argument naming what is wrong.
#pragma once

#include <cstdint>

namespace fer_fast {

struct Shape {
  int64_t n, c, h, w;
  int dtype;        // OutDtype: kFloat32, kFloat16 or kBFloat16
  bool relu_first;  // block order "relu_bn" (conv -> ReLU -> BN), else "bn_relu"
};

// out fp64 [3, c]: per channel an origin o (the BatchNorm input at the first position), the sum
// of (input - o) and the sum of (input - o)^2 over the n * h * w positions.
void bn_stats_cpu(const void* x, const Shape& s, double* out, int threads);
// The block output: the activation in the block's order with the BN scale and shift.
void bn_act_forward_cpu(const void* x, void* out, const Shape& s, const float* scale,
                        const float* shift, int threads);
// out fp64 [2, c]: sum of dz and of dz * x_hat (dz: gradient of the BatchNorm output).
void bn_act_backward_sums_cpu(const void* dout, const void* x, const Shape& s, const float* coef,
                              double* out, int threads);
// dy, the gradient of the conv output (same shape and dtype as x).
void bn_act_backward_cpu(const void* dout, const void* x, void* dy, const Shape& s,
                         const float* coef, const float* means, bool training, int threads);

}  // namespace fer_fast
