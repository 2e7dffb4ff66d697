// CPU ten-crop augmentation: (image, crop) pairs split over std::threads, one crop row at a time
// with an inner loop over u that the compiler vectorises. Compiled with -ffp-contract=off so that
// fp32 results equal the eager reference bit for bit.
//
// std::thread rather than OpenMP: torch ships its own OpenMP runtime, and a second one in the
// same process would compete with it for cores.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "augment.h"
#include "augment_math.h"

namespace fer_fast {
namespace {

// The per-thread loop is compiled for AVX2 (8 lanes), for SSE4.1 (4 lanes; the first x86 level
// with a vector floor) and for the x86-64 baseline (SSE2, scalar floor), and the loader picks
// one per CPU: the build stays portable across x86-64 machines.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FER_CPU_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define FER_CPU_CLONES
#endif

// Row v of one crop; xs[u] = canvas_x(k, u). The x positions come from a table rather than
// from u: GCC does not turn loads whose index derives from the loop counter through float math
// into gathers. Restrict pointers: the output never overlaps the inputs.
template <class Out>
inline void augment_row(const uint32_t* __restrict quads, const float* __restrict g,
                 const int32_t* __restrict box, const float* __restrict xs, float y, int v,
                 typename Out::type* __restrict row) {
  for (int u = 0; u < kCrop; ++u) {
    const float value = sample_pixel(quads, g, xs[u], y);
    row[u] = Out::from(erased(box, u, v) ? 0.0f : value);
  }
}

// Crops [first, last) of the batch (crop index = image * 10 + k).
template <class Out>
FER_CPU_CLONES void augment_range(const uint8_t* images, const float* geom, const int32_t* erase,
                   typename Out::type* out, int64_t first, int64_t last) {
  uint32_t quads[kQuad * kQuad];
  int64_t quads_image = -1;
  float xs[kCrop];
  for (int64_t c = first; c < last; ++c) {
    const int64_t b = c / kNumCrops;
    if (b != quads_image) {
      fill_quads(quads, images + b * kImage * kImage, 0, 1);
      quads_image = b;
    }
    const int k = static_cast<int>(c % kNumCrops);
    for (int u = 0; u < kCrop; ++u) xs[u] = canvas_x(k, u);
    for (int v = 0; v < kCrop; ++v) {
      augment_row<Out>(quads, geom + b * kGeomSize, erase + c * kEraseSize, xs, canvas_y(k, v), v,
                       out + (c * kCrop + v) * kCrop);
    }
  }
}

template <class Out>
void augment_threads(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
                     int64_t batch, int num_threads) {
  auto* dst = static_cast<typename Out::type*>(out);
  const int64_t crops = batch * kNumCrops;
  const int64_t workers = std::min<int64_t>(num_threads, crops);
  if (workers <= 1) {
    augment_range<Out>(images, geom, erase, dst, 0, crops);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  // Worker w takes crops [w * crops / workers, (w + 1) * crops / workers); the caller does w = 0.
  for (int64_t w = 1; w < workers; ++w) {
    pool.emplace_back(augment_range<Out>, images, geom, erase, dst, w * crops / workers,
                      (w + 1) * crops / workers);
  }
  augment_range<Out>(images, geom, erase, dst, 0, crops / workers);
  for (auto& t : pool) t.join();
}

}  // namespace

void augment_cpu(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
                 int64_t batch, int out_dtype, int num_threads) {
  if (batch < 0) throw std::invalid_argument("augment_cpu: batch must be >= 0, got " +
                                             std::to_string(batch));
  if (num_threads < 1) throw std::invalid_argument("augment_cpu: num_threads must be >= 1, got " +
                                                   std::to_string(num_threads));
  if (batch == 0) return;
  if (!images || !geom || !erase || !out)
    throw std::invalid_argument("augment_cpu: null pointer among images, geom, erase, out");
  switch (out_dtype) {
    case kFloat32: return augment_threads<Float32Out>(images, geom, erase, out, batch, num_threads);
    case kFloat16: return augment_threads<Float16Out>(images, geom, erase, out, batch, num_threads);
    case kBFloat16: return augment_threads<BFloat16Out>(images, geom, erase, out, batch, num_threads);
    default:
      throw std::invalid_argument("augment_cpu: out_dtype must be 0 (float32), 1 (float16) or "
                                  "2 (bfloat16), got " + std::to_string(out_dtype));
  }
}

}  // namespace fer_fast
