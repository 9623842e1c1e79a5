/*
 * The GPU side of mnemo behind a plain C header: no CUDA type crosses it, and
 * no file outside cuda/ includes a CUDA header. Built only when nvcc is found
 * (meson option cuda=auto); code that uses it checks MNEMO_HAVE_CUDA.
 */
#ifndef MNEMO_CUDA_H
#define MNEMO_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Devices this process can use; 0 when there is no driver or no device. */
int mnemo_cuda_device_count(void);

/**
 * Describe device @p dev: its name and memory.
 * @return 0, -ENODEV (no such device), -EIO (any other CUDA failure)
 */
int mnemo_cuda_device_info(int dev, char *name, size_t name_cap, uint64_t *total_mem);

/**
 * Exact partial attention of @p G queries over @p n keys/values on the
 * device, from host memory (f32), for checking the device path against the
 * CPU one. o [G][d], lse [G] as in DESIGN.md §1; q is not pre-scaled.
 * @return 0, -ENODEV, -ENOMEM, -EINVAL, -EIO
 */
int mnemo_cuda_attend_f32(const float *q, unsigned G, unsigned d, const float *k,
			  const float *v, size_t n, float *o, float *lse);

#ifdef __cplusplus
}
#endif

#endif
