/*
 * Portable kernels: the set every CPU runs and the one the SIMD sets are
 * checked against. Each K/V row is converted to fp32 once and then used for
 * all queries of the group.
 */
#include <math.h>
#include <string.h>

#include "kernel_sets.h"

/* Tokens per softmax update; bounds the score buffer to 16 KiB. */
#define SCALAR_SUB 64u

/* Row @p r of a [.][d] array as fp32: in place for f32, else via @p buf. */
static inline const float *row_f32(enum kv_dtype t, const void *base, size_t r,
				   unsigned d, float *buf)
{
	const uint16_t *h = (const uint16_t *)base + r * d;

	switch (t) {
	case KV_F16:
		for (unsigned i = 0; i < d; i++)
			buf[i] = kv_f16_to_f32(h[i]);
		return buf;
	case KV_BF16:
		for (unsigned i = 0; i < d; i++)
			buf[i] = kv_bf16_to_f32(h[i]);
		return buf;
	default:
		return (const float *)base + r * d;
	}
}

static inline float dot(const float *a, const float *b, unsigned d)
{
	float s = 0.0f;

	for (unsigned i = 0; i < d; i++)
		s += a[i] * b[i];
	return s;
}

static inline void block_generic(enum kv_dtype t, const float *q, unsigned G,
				 unsigned d, const void *k, const void *v,
				 unsigned n, float *m, float *l, float *acc)
{
	float s[ATTN_MAX_GROUP * SCALAR_SUB];
	float buf[ATTN_MAX_DIM];

	for (unsigned t0 = 0; t0 < n; t0 += SCALAR_SUB) {
		unsigned nt = n - t0 < SCALAR_SUB ? n - t0 : SCALAR_SUB;

		for (unsigned j = 0; j < nt; j++) {
			const float *kr = row_f32(t, k, t0 + j, d, buf);

			for (unsigned g = 0; g < G; g++)
				s[g * SCALAR_SUB + j] = dot(q + (size_t)g * d, kr, d);
		}

		for (unsigned g = 0; g < G; g++) {
			float *sg = s + g * SCALAR_SUB;
			float *ag = acc + (size_t)g * d;
			float mx = m[g];

			for (unsigned j = 0; j < nt; j++)
				if (sg[j] > mx)
					mx = sg[j];
			if (mx == -INFINITY) {
				/* Only -inf scores so far: they weigh nothing. */
				memset(sg, 0, nt * sizeof(*sg));
				continue;
			}
			/* exp(-inf) = 0 drops an empty state's zeros. */
			float scale = expf(m[g] - mx);
			float sum = 0.0f;

			for (unsigned j = 0; j < nt; j++) {
				sg[j] = expf(sg[j] - mx);
				sum += sg[j];
			}
			l[g] = l[g] * scale + sum;
			m[g] = mx;
			if (scale != 1.0f)
				for (unsigned i = 0; i < d; i++)
					ag[i] *= scale;
		}

		for (unsigned j = 0; j < nt; j++) {
			const float *vr = row_f32(t, v, t0 + j, d, buf);

			for (unsigned g = 0; g < G; g++) {
				float p = s[g * SCALAR_SUB + j];
				float *ag = acc + (size_t)g * d;

				for (unsigned i = 0; i < d; i++)
					ag[i] += p * vr[i];
			}
		}
	}
}

static inline void score_generic(enum kv_dtype t, const float *q, unsigned G,
				 unsigned d, const void *k, unsigned n, float *out)
{
	float buf[ATTN_MAX_DIM];

	for (unsigned j = 0; j < n; j++) {
		const float *kr = row_f32(t, k, j, d, buf);

		for (unsigned g = 0; g < G; g++)
			out[(size_t)g * n + j] = dot(q + (size_t)g * d, kr, d);
	}
}

#define SCALAR_DTYPE(name, T)                                                   \
	static void block_##name(const float *q, unsigned G, unsigned d,       \
				 const void *k, const void *v, unsigned n,     \
				 float *m, float *l, float *acc)               \
	{                                                                      \
		block_generic(T, q, G, d, k, v, n, m, l, acc);                 \
	}                                                                      \
	static void score_##name(const float *q, unsigned G, unsigned d,       \
				 const void *k, unsigned n, float *out)        \
	{                                                                      \
		score_generic(T, q, G, d, k, n, out);                          \
	}

SCALAR_DTYPE(f32, KV_F32)
SCALAR_DTYPE(f16, KV_F16)
SCALAR_DTYPE(bf16, KV_BF16)

const struct attn_kernels attn_kernels_scalar = {
	.name = "scalar",
	.block = { [KV_F32] = block_f32, [KV_F16] = block_f16, [KV_BF16] = block_bf16 },
	.score = { [KV_F32] = score_f32, [KV_F16] = score_f16, [KV_BF16] = score_bf16 },
};
