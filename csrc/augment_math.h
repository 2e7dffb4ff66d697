// Per-pixel math of the ten-crop augmentation, shared by the CPU (augment_cpu.cpp) and CUDA
// (augment_cuda.cu) kernels so that both evaluate every output pixel with the same arithmetic
// as the eager reference fer_fast.augmentation.augment_ref (layouts: see that module's docstring).
//
// Bit-exactness with the reference needs every multiply and add rounded separately: compile
// users with -ffp-contract=off (host) and -fmad=false (nvcc).
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"

namespace fer_fast {

constexpr int kImage = 48;     // source images are kImage x kImage uint8
constexpr int kCrop = 40;      // output crops are kCrop x kCrop
constexpr int kNumCrops = 10;  // crops 0..4 at kCorners, 5..9 the same corners on the mirror image
constexpr int kGeomSize = 16;  // floats per image in params.geom
constexpr int kEraseSize = 4;  // int32 per crop in params.erase: top, left, height, width

// Top-left corner (row, col) of crop k: (0,0), (0,8), (8,0), (8,8), (4,4), repeated for k >= 5.
FER_HD int crop_row(int k) { const int j = k % 5; return j == 4 ? 4 : (j >> 1) * 8; }
FER_HD int crop_col(int k) { const int j = k % 5; return j == 4 ? 4 : (j & 1) * 8; }

// Canvas position (pixel-centre coordinates) of output pixel (u, v) of crop k; crops 5..9 are
// read from the horizontally mirrored canvas, so their x runs backwards from 47. Written without
// a branch on u so that the CPU loop over u vectorises.
FER_HD float canvas_x(int k, int u) {
  const int mirrored = k >= 5;
  const int start = mirrored ? (kImage - 1) - crop_col(k) : crop_col(k);
  return static_cast<float>(start + (1 - 2 * mirrored) * u);
}
FER_HD float canvas_y(int k, int v) { return static_cast<float>(crop_row(k) + v); }

// The source image is read through a "quad plane": entry (y0, x0), for -kPad <= y0, x0 <= kImage,
// packs the four bilinear taps (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1) as bytes,
// zero outside the image. One unconditional 32-bit load (a gather on the CPU, a shared-memory
// read on the GPU) then yields all four taps of a pixel.
constexpr int kPad = 2;
constexpr int kQuad = kImage + kPad + 1;  // quad plane row length and height: y0, x0 = -2 .. 48

FER_HD uint32_t image_byte(const uint8_t* img, int y, int x) {
  const bool ok = (x >= 0) & (x < kImage) & (y >= 0) & (y < kImage);
  return ok ? img[y * kImage + x] : 0u;
}

// Fill quads[kQuad * kQuad] from one uint8 image; `first`/`step` split the work over threads.
FER_HD void fill_quads(uint32_t* quads, const uint8_t* img, int first, int step) {
  for (int i = first; i < kQuad * kQuad; i += step) {
    const int y = i / kQuad - kPad, x = i % kQuad - kPad;
    quads[i] = image_byte(img, y, x) | image_byte(img, y, x + 1) << 8 |
               image_byte(img, y + 1, x) << 16 | image_byte(img, y + 1, x + 1) << 24;
  }
}

// An integral source coordinate clamped to [-kPad, kImage]: both taps of a clamped coordinate
// are zero, exactly like those of the unclamped one (which lie outside the image); nan maps
// to -kPad.
FER_HD float clamp_to_plane(float f) {
  const float lo = -static_cast<float>(kPad), hi = static_cast<float>(kImage);
  const float c = f > lo ? f : lo;
  return c < hi ? c : hi;
}

// Quad-plane index of source pixel (y0, x0), both integral floats. Computed in float (exact for
// these small integers) and converted once: that form lets GCC vectorise the loads as gathers.
FER_HD int quad_index(float y0, float x0) {
  const float pad = static_cast<float>(kPad), row = static_cast<float>(kQuad);
  return static_cast<int>((clamp_to_plane(y0) + pad) * row + (clamp_to_plane(x0) + pad));
}

// Value in [0, 1] of the augmented image at canvas position (x, y), before erasing.
// g: the 16 geometry floats of the image (affine p4 -> source, rotation p4 -> p3, window).
FER_HD float sample_pixel(const uint32_t* quads, const float* g, float x, float y) {
  const float x3 = (g[6] * x + g[7] * y) + g[8];
  const float y3 = (g[9] * x + g[10] * y) + g[11];
  const bool inside = (x3 >= g[12]) & (x3 <= g[13]) & (y3 >= g[14]) & (y3 <= g[15]);
  const float sx = (g[0] * x + g[1] * y) + g[2];
  const float sy = (g[3] * x + g[4] * y) + g[5];
  const float x0 = floorf(sx), y0 = floorf(sy);
  const float fx = sx - x0, fy = sy - y0;
  const uint32_t q = quads[quad_index(y0, x0)];
  const float p00 = static_cast<float>(static_cast<int>(q & 0xffu));
  const float p01 = static_cast<float>(static_cast<int>((q >> 8) & 0xffu));
  const float p10 = static_cast<float>(static_cast<int>((q >> 16) & 0xffu));
  const float p11 = static_cast<float>(static_cast<int>(q >> 24));
  const float top = (1.0f - fx) * p00 + fx * p01;
  const float bottom = (1.0f - fx) * p10 + fx * p11;
  const float value = (1.0f - fy) * top + fy * bottom;
  return inside ? value / 255.0f : 0.0f;
}

// Whether pixel (u, v) of a crop lies in its erase box (top, left, height, width).
FER_HD bool erased(const int32_t* box, int u, int v) {
  return (v >= box[0]) & (v < box[0] + box[2]) & (u >= box[1]) & (u < box[1] + box[3]);
}

}  // namespace fer_fast
