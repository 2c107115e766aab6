// Device discovery for the CUDA backend. The op table itself is the CUDA
// backend issue's work; until it lands, a context can be asked for and the
// answer says plainly whether a device exists and that the ops are missing.
#include <cuda_runtime.h>

extern "C" {
#include "base/error.h"
#include "gpu/backend_impl.h"
}

extern "C" int st__backend_cuda_new(const st_backend_options *opts,
                                    st_backend **out) {
  *out = NULL;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess)
    return st_error_set(ST_ENODEV, "cudaGetDeviceCount: %s",
                        cudaGetErrorString(err));
  if (opts->device < 0 || opts->device >= count)
    return st_error_set(ST_ENODEV, "CUDA device %d requested, %d present",
                        opts->device, count);
  return st_error_set(ST_ENOTSUP,
                      "CUDA device %d found, but this build has no CUDA op "
                      "table yet (CUDA backend issue)",
                      opts->device);
}
