// Launchers of the ten-crop augmentation (fer_fast._C). Pointers are raw device or host
// addresses of contiguous tensors whose dtypes and shapes fer_fast/augmentation.py has checked:
//   images uint8 [batch, 48, 48], geom float32 [batch, 16], erase int32 [batch, 10, 4],
//   out [batch * 10, 1, 40, 40] of dtype out_dtype (fer_fast::OutDtype).
// Each launcher re-checks what it can cheaply (null pointers, sizes) and throws
// std::invalid_argument naming the bad argument.
#pragma once

#include <cstdint>

namespace fer_fast {

// CPU: splits the batch's (image, crop) pairs over num_threads threads (>= 1).
void augment_cpu(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
                 int64_t batch, int out_dtype, int num_threads);

#if defined(FER_FAST_WITH_CUDA)
// CUDA: enqueues one kernel on `stream` (a cudaStream_t) of device `device`; the calling
// thread's current device is the same before and after the call.
void augment_cuda(const uint8_t* images, const float* geom, const int32_t* erase, void* out,
                  int64_t batch, int out_dtype, int device, void* stream);

// Number of CUDA devices usable by this module's runtime (0 without a driver or GPU).
int cuda_device_count();
#endif

}  // namespace fer_fast
