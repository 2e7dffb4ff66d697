// CUDA ten-crop augmentation: one block per (image, crop); the block stages the image's quad
// plane (augment_math.h) and geometry in shared memory, then each thread writes a few output
// pixels with the per-pixel math of augment_math.h (compiled with -fmad=false so that every
// multiply and add is rounded separately, as in the eager reference).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "augment.h"
#include "augment_math.h"

namespace fer_fast {
namespace {

constexpr int kThreads = 320;  // 10 warps; 1600 pixels per crop = 5 per thread

template <class Out>
__global__ void __launch_bounds__(kThreads)
    augment_kernel(const uint8_t* __restrict__ images, const float* __restrict__ geom,
                   const int32_t* __restrict__ erase, typename Out::type* __restrict__ out) {
  __shared__ uint32_t quads[kQuad * kQuad];
  __shared__ float g[kGeomSize];
  const int64_t c = blockIdx.x;  // crop index = image * 10 + k
  const int64_t b = c / kNumCrops;
  const int k = static_cast<int>(c % kNumCrops);
  fill_quads(quads, images + b * kImage * kImage, threadIdx.x, kThreads);
  if (threadIdx.x < kGeomSize) g[threadIdx.x] = geom[b * kGeomSize + threadIdx.x];
  int32_t box[kEraseSize];
  for (int i = 0; i < kEraseSize; ++i) box[i] = erase[c * kEraseSize + i];
  __syncthreads();
  typename Out::type* dst = out + c * kCrop * kCrop;
  for (int p = threadIdx.x; p < kCrop * kCrop; p += kThreads) {
    const int v = p / kCrop, u = p % kCrop;
    const float value = sample_pixel(quads, g, canvas_x(k, u), canvas_y(k, v));
    dst[p] = Out::from(erased(box, u, v) ? 0.0f : value);
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("augment_cuda: ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the launch and restores the caller's current device on every exit
// (the caller is torch, whose current device this module's cudaSetDevice would otherwise change:
// the static runtime linked here and torch's share the thread's current context).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

template <class Out>
void launch(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
            int64_t batch, cudaStream_t stream) {
  augment_kernel<Out><<<static_cast<unsigned>(batch * kNumCrops), kThreads, 0, stream>>>(
      images, geom, erase, static_cast<typename Out::type*>(out));
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace

void augment_cuda(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
                  int64_t batch, int out_dtype, int device, void* stream) {
  if (batch < 0) throw std::invalid_argument("augment_cuda: batch must be >= 0, got " +
                                             std::to_string(batch));
  if (batch * kNumCrops > 0x7fffffff)
    throw std::invalid_argument("augment_cuda: batch too large for one launch: " +
                                std::to_string(batch));
  if (device < 0) throw std::invalid_argument("augment_cuda: device must be >= 0, got " +
                                              std::to_string(device));
  if (out_dtype < kFloat32 || out_dtype > kBFloat16)
    throw std::invalid_argument("augment_cuda: out_dtype must be 0 (float32), 1 (float16) or "
                                "2 (bfloat16), got " + std::to_string(out_dtype));
  if (batch == 0) return;
  if (!images || !geom || !erase || !out)
    throw std::invalid_argument("augment_cuda: null pointer among images, geom, erase, out");
  const DeviceGuard on_device(device);
  auto s = static_cast<cudaStream_t>(stream);  // the caller's current stream of `device`
  switch (out_dtype) {
    case kFloat32: return launch<Float32Out>(images, geom, erase, out, batch, s);
    case kFloat16: return launch<Float16Out>(images, geom, erase, out, batch, s);
    default: return launch<BFloat16Out>(images, geom, erase, out, batch, s);
  }
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error
    return 0;
  }
  return n;
}

}  // namespace fer_fast
