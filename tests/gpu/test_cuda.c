/*
 * The device attention path against the CPU kernels on fresh random data.
 * Exits 77 (skipped) where there is no GPU.
 */
#include <math.h>
#include <string.h>

#include "../check.h"
#include "kernels.h"
#include "mnemo_cuda.h"

int main(void)
{
	int n = mnemo_cuda_device_count();
	if (n <= 0) {
		printf("no CUDA device: skipped\n");
		return 77;
	}
	char name[128];
	uint64_t mem;
	CHECK(mnemo_cuda_device_info(0, name, sizeof(name), &mem) == 0, "device info");
	printf("device 0: %s, %.1f GiB\n", name, mem / 1073741824.0);
	uint64_t seed = check_seed();
	const unsigned G = 4, d = 128;
	const size_t lens[] = { 0, 1, 1000, 65537 };
	for (size_t li = 0; li < 4; li++) {
		size_t N = lens[li];
		float *q = malloc(G * d * 4), *k = malloc(N * d * 4 + 4), *v = malloc(N * d * 4 + 4);
		for (size_t i = 0; i < G * d; i++)
			q[i] = check_uniform(&seed);
		for (size_t i = 0; i < N * d; i++) {
			k[i] = check_uniform(&seed);
			v[i] = check_uniform(&seed);
		}
		float o[4 * 128], lse[4], ro[4 * 128], rl[4], qs[4 * 128], m[4], l[4];
		/* poison: every output must be written */
		memset(o, 0xff, sizeof(o));
		memset(lse, 0xff, sizeof(lse));
		CHECK(mnemo_cuda_attend_f32(q, G, d, k, v, N, o, lse) == 0, "device attend");
		for (size_t i = 0; i < G * d; i++)
			qs[i] = q[i] / sqrtf((float)d);
		const struct attn_kernels *kern = attn_kernels_by_name("scalar");
		attn_state_init(G, d, m, l, ro);
		for (size_t t = 0; t < N; t += 64) {
			unsigned c = (unsigned)(N - t < 64 ? N - t : 64);
			kern->block[KV_F32](qs, G, d, k + t * d, v + t * d, c, m, l, ro);
		}
		attn_state_finish(G, d, m, l, ro, ro, rl);
		double worst = 0;
		for (size_t i = 0; i < G * d; i++)
			worst = fmax(worst, fabs(o[i] - ro[i]));
		CHECK(worst < 1e-4, "N=%zu: o differs by %g", N, worst);
		for (unsigned g = 0; g < G; g++)
			CHECK((isinf(rl[g]) && isinf(lse[g])) || fabs(lse[g] - rl[g]) < 1e-3,
			      "N=%zu lse %g vs %g", N, lse[g], rl[g]);
		free(q);
		free(k);
		free(v);
	}
	return check_exit();
}
