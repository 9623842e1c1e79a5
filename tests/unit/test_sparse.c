/*
 * Attention over a gathered token set against a double-precision softmax
 * over the same tokens, for every kernel set, dtype and several sizes; and
 * the estimate contract: a cluster whose members share one key c, estimated
 * by (c, n_j, sum of values), gives exactly the attention over its members.
 */
#include <math.h>
#include <string.h>

#include "../check.h"
#include "kernels.h"
#include "sparse.h"

static uint64_t seed;

static void reference(const float *q, unsigned G, unsigned d, const float *k, const float *v,
		      const uint64_t *ids, uint64_t n, double *o, double *lse)
{
	for (unsigned g = 0; g < G; g++) {
		double mx = -INFINITY, sum = 0;
		for (uint64_t i = 0; i < n; i++) {
			double s = 0;
			for (unsigned j = 0; j < d; j++)
				s += (double)q[g * d + j] * k[ids[i] * d + j];
			mx = fmax(mx, s);
		}
		for (unsigned j = 0; j < d; j++)
			o[g * d + j] = 0;
		for (uint64_t i = 0; i < n; i++) {
			double s = 0;
			for (unsigned j = 0; j < d; j++)
				s += (double)q[g * d + j] * k[ids[i] * d + j];
			double p = exp(s - mx);
			sum += p;
			for (unsigned j = 0; j < d; j++)
				o[g * d + j] += p * v[ids[i] * d + j];
		}
		for (unsigned j = 0; j < d; j++)
			o[g * d + j] = n ? o[g * d + j] / sum : 0;
		lse[g] = n ? mx + log(sum) : -INFINITY;
	}
}

static void run(const struct attn_kernels *kern, enum kv_dtype dt, unsigned G, unsigned d, uint64_t N,
		uint64_t n)
{
	size_t es = kv_dtype_size(dt);
	float *kf = malloc(N * d * 4), *vf = malloc(N * d * 4), *q = malloc(G * d * 4);
	uint8_t *k = malloc(N * d * es), *v = malloc(N * d * es);
	for (uint64_t i = 0; i < N * d; i++) {
		float a = check_uniform(&seed) * 2, b = check_uniform(&seed);
		if (dt == KV_F32) {
			memcpy(k + i * 4, &a, 4);
			memcpy(v + i * 4, &b, 4);
		} else {
			uint16_t ha = dt == KV_BF16 ? kv_f32_to_bf16(a) : kv_f32_to_f16(a);
			uint16_t hb = dt == KV_BF16 ? kv_f32_to_bf16(b) : kv_f32_to_f16(b);
			memcpy(k + i * 2, &ha, 2);
			memcpy(v + i * 2, &hb, 2);
		}
		kf[i] = kv_load(dt, k, i);
		vf[i] = kv_load(dt, v, i);
	}
	for (unsigned i = 0; i < G * d; i++)
		q[i] = check_uniform(&seed) / sqrtf((float)d);
	/* a random subset, in random order */
	uint64_t *ids = malloc((n + 1) * 8);
	uint8_t *used = calloc(N, 1);
	for (uint64_t i = 0; i < n;) {
		uint64_t t = check_rand(&seed) % N;
		if (!used[t]) {
			used[t] = 1;
			ids[i++] = t;
		}
	}
	struct kv_rows rows = { .k = k, .v = v, .stride = d * es, .dtype = dt };
	float *o = malloc(G * d * 4), lse[64];
	double *ro = malloc(G * d * 8), rl[64];
	attend_sparse(kern, q, G, d, &rows, ids, n, NULL, o, lse);
	reference(q, G, d, kf, vf, ids, n, ro, rl);
	double tol = dt == KV_F32 ? 1e-5 : 2e-3, worst = 0, num = 0, den = 0;
	for (unsigned g = 0; g < G; g++) {
		num = den = 0;
		for (unsigned j = 0; j < d; j++) {
			num += pow(o[g * d + j] - ro[g * d + j], 2);
			den += ro[g * d + j] * ro[g * d + j];
		}
		worst = fmax(worst, sqrt(num) / (sqrt(den) + 1e-9));
		CHECK(n ? fabs(lse[g] - rl[g]) < 1e-4 : isinf(lse[g]), "%s dt%d n=%llu lse %g vs %g", kern->name, dt,
		      (unsigned long long)n, lse[g], rl[g]);
	}
	CHECK(worst <= tol, "%s dtype %d G%u d%u n=%llu: error %g", kern->name, dt, G, d, (unsigned long long)n, worst);
	free(kf); free(vf); free(q); free(k); free(v); free(ids); free(used); free(o); free(ro);
}

static void estimates(void)
{
	/* 50 members share key c; the rest differ. Exact over all = exact over
	 * the others + the cluster estimated as (c, 50, sum of values). */
	enum { D = 16, N = 200, M = 50 };
	float k[N * D], v[N * D], q[D], c[D];
	for (int j = 0; j < D; j++) {
		c[j] = check_uniform(&seed);
		q[j] = check_uniform(&seed);
	}
	for (int i = 0; i < N; i++)
		for (int j = 0; j < D; j++) {
			k[i * D + j] = i < M ? c[j] : check_uniform(&seed);
			v[i * D + j] = check_uniform(&seed);
		}
	float vsum[D] = { 0 }, count = M;
	for (int i = 0; i < M; i++)
		for (int j = 0; j < D; j++)
			vsum[j] += v[i * D + j];
	uint64_t all[N], rest[N - M];
	for (int i = 0; i < N; i++)
		all[i] = (uint64_t)i;
	for (int i = 0; i < N - M; i++)
		rest[i] = (uint64_t)(M + i);
	struct kv_rows rows = { .k = k, .v = v, .stride = D * 4, .dtype = KV_F32 };
	struct kv_estimates est = { .n = 1, .key = c, .count = &count, .vsum = vsum };
	float o1[D], l1, o2[D], l2;
	const struct attn_kernels *kern = attn_kernels_best();
	attend_sparse(kern, q, 1, D, &rows, all, N, NULL, o1, &l1);
	attend_sparse(kern, q, 1, D, &rows, rest, N - M, &est, o2, &l2);
	double e = 0;
	for (int j = 0; j < D; j++)
		e = fmax(e, fabs(o1[j] - o2[j]));
	CHECK(e < 1e-5 && fabs(l1 - l2) < 1e-5, "estimate differs: o %g, lse %g vs %g", e, l1, l2);
	/* only the estimate */
	float vs_only[D];
	attend_sparse(kern, q, 1, D, &rows, NULL, 0, &est, o2, &l2);
	for (int j = 0; j < D; j++)
		vs_only[j] = vsum[j] / M;
	e = 0;
	for (int j = 0; j < D; j++)
		e = fmax(e, fabs(o2[j] - vs_only[j]));
	CHECK(e < 1e-6, "estimate alone is not the mean value (%g)", e);
}

int main(void)
{
	seed = check_seed();
	const char *sets[] = { "scalar", "avx2", "avx512" };
	for (int s = 0; s < 3; s++) {
		const struct attn_kernels *kern = attn_kernels_by_name(sets[s]);
		if (!kern) {
			printf("skip %s: not on this CPU\n", sets[s]);
			continue;
		}
		for (int dt = 0; dt < 3; dt++) {
			run(kern, (enum kv_dtype)dt, 4, 128, 5000, 0);
			run(kern, (enum kv_dtype)dt, 4, 128, 5000, 1);
			run(kern, (enum kv_dtype)dt, 4, 128, 5000, 100);
			run(kern, (enum kv_dtype)dt, 1, 7, 300, 299);
			run(kern, (enum kv_dtype)dt, 8, 64, 20000, 1777);
		}
	}
	estimates();
	return check_exit();
}
