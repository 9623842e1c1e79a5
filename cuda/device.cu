// Device queries and a reference attention kernel; CUDA types stay here.
#include "mnemo_cuda.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <cuda_runtime.h>

// The one place CUDA errors become ours.
static int cuda_error(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return 0;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorInvalidDevice: return -ENODEV;
	case cudaErrorMemoryAllocation: return -ENOMEM;
	case cudaErrorInvalidValue: return -EINVAL;
	default: return -EIO;
	}
}

extern "C" int mnemo_cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();   // clear the sticky "no driver" error
		return 0;
	}
	return n;
}

extern "C" int mnemo_cuda_device_info(int dev, char *name, size_t name_cap, uint64_t *total_mem)
{
	cudaDeviceProp p;
	int rc = cuda_error(cudaGetDeviceProperties(&p, dev));
	if (rc)
		return rc;
	if (name && name_cap) {
		strncpy(name, p.name, name_cap - 1);
		name[name_cap - 1] = 0;
	}
	if (total_mem)
		*total_mem = p.totalGlobalMem;
	return 0;
}

// One block per query; threads stride over tokens, then over d.
// Two passes over the scores (max, then sum) keep it simple and exact enough
// to serve as the device-side reference.
__global__ void attend_ref_kernel(const float *q, unsigned d, const float *k, const float *v,
				  size_t n, float scale, float *scores, float *o, float *lse)
{
	const unsigned g = blockIdx.x;
	const float *qg = q + (size_t)g * d;
	float *sg = scores + (size_t)g * n;
	__shared__ float red[256];
	float mx = -INFINITY;
	for (size_t t = threadIdx.x; t < n; t += blockDim.x) {
		float s = 0.f;
		for (unsigned i = 0; i < d; i++)
			s += qg[i] * k[t * d + i];
		s *= scale;
		sg[t] = s;
		mx = fmaxf(mx, s);
	}
	red[threadIdx.x] = mx;
	__syncthreads();
	for (unsigned w = blockDim.x / 2; w; w /= 2) {
		if (threadIdx.x < w)
			red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
		__syncthreads();
	}
	mx = red[0];
	__syncthreads();
	float sum = 0.f;
	for (size_t t = threadIdx.x; t < n; t += blockDim.x)
		sum += expf(sg[t] - mx);
	red[threadIdx.x] = sum;
	__syncthreads();
	for (unsigned w = blockDim.x / 2; w; w /= 2) {
		if (threadIdx.x < w)
			red[threadIdx.x] += red[threadIdx.x + w];
		__syncthreads();
	}
	sum = red[0];
	for (unsigned i = threadIdx.x; i < d; i += blockDim.x) {
		float acc = 0.f;
		for (size_t t = 0; t < n; t++)
			acc += expf(sg[t] - mx) * v[t * d + i];
		o[(size_t)g * d + i] = n ? acc / sum : 0.f;
	}
	if (threadIdx.x == 0)
		lse[g] = n ? mx + logf(sum) : -INFINITY;
}

extern "C" int mnemo_cuda_attend_f32(const float *q, unsigned G, unsigned d, const float *k,
				     const float *v, size_t n, float *o, float *lse)
{
	if (!G || !d)
		return -EINVAL;
	float *dq = nullptr, *dk = nullptr, *dv = nullptr, *ds = nullptr, *dout = nullptr, *dl = nullptr;
	int rc = 0;
	size_t kv = n * d * sizeof(float);
	if ((rc = cuda_error(cudaMalloc(&dq, (size_t)G * d * sizeof(float)))) ||
	    (rc = cuda_error(cudaMalloc(&dk, kv ? kv : 4))) ||
	    (rc = cuda_error(cudaMalloc(&dv, kv ? kv : 4))) ||
	    (rc = cuda_error(cudaMalloc(&ds, (size_t)G * (n ? n : 1) * sizeof(float)))) ||
	    (rc = cuda_error(cudaMalloc(&dout, (size_t)G * d * sizeof(float)))) ||
	    (rc = cuda_error(cudaMalloc(&dl, G * sizeof(float)))))
		goto out;
	if ((rc = cuda_error(cudaMemcpy(dq, q, (size_t)G * d * sizeof(float), cudaMemcpyHostToDevice))) ||
	    (kv && (rc = cuda_error(cudaMemcpy(dk, k, kv, cudaMemcpyHostToDevice)))) ||
	    (kv && (rc = cuda_error(cudaMemcpy(dv, v, kv, cudaMemcpyHostToDevice)))))
		goto out;
	attend_ref_kernel<<<G, 256>>>(dq, d, dk, dv, n, 1.0f / sqrtf((float)d), ds, dout, dl);
	if ((rc = cuda_error(cudaGetLastError())) ||
	    (rc = cuda_error(cudaMemcpy(o, dout, (size_t)G * d * sizeof(float), cudaMemcpyDeviceToHost))) ||
	    (rc = cuda_error(cudaMemcpy(lse, dl, G * sizeof(float), cudaMemcpyDeviceToHost))))
		goto out;
out:
	cudaFree(dq);
	cudaFree(dk);
	cudaFree(dv);
	cudaFree(ds);
	cudaFree(dout);
	cudaFree(dl);
	return rc;
}
