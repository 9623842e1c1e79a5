/* Attention over a gathered token set plus estimated clusters. */
#include "sparse.h"

#include <math.h>
#include <string.h>

/* Tokens gathered per kernel call: a tile of K and V stays in L1/L2. */
#define TILE 32u

void attend_sparse(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		   const struct kv_rows *rows, const uint64_t *ids, uint64_t n,
		   const struct kv_estimates *est, float *o, float *lse)
{
	const size_t es = kv_dtype_size(rows->dtype), row = (size_t)d * es;
	/* per thread, not on the stack: a tile of f32 rows at d = 1024 is 128 KiB each */
	static _Thread_local _Alignas(64) uint8_t kt[TILE * ATTN_MAX_DIM * 4], vt[TILE * ATTN_MAX_DIM * 4];
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
	attn_state_init(G, d, m, l, o);
	attn_block_fn fn = kern->block[rows->dtype];
	for (uint64_t i = 0; i < n; i += TILE) {
		unsigned t = (unsigned)(n - i < TILE ? n - i : TILE);
		for (unsigned j = 0; j < t; j++) {
			memcpy(kt + j * row, (const uint8_t *)rows->k + ids[i + j] * rows->stride, row);
			memcpy(vt + j * row, (const uint8_t *)rows->v + ids[i + j] * rows->stride, row);
		}
		fn(q, G, d, kt, vt, t, m, l, o);
	}
	/* an estimated cluster: score q.c + log n_j, value vsum / n_j */
	for (unsigned c = 0; est && c < est->n; c++) {
		if (!(est->count[c] > 0))
			continue;
		const float *key = est->key + (size_t)c * d, *vs = est->vsum + (size_t)c * d;
		for (unsigned g = 0; g < G; g++) {
			float s = 0;
			for (unsigned j = 0; j < d; j++)
				s += q[(size_t)g * d + j] * key[j];
			s += logf(est->count[c]);
			float mn = s > m[g] ? s : m[g];
			float a = m[g] == -INFINITY ? 0.0f : expf(m[g] - mn), p = expf(s - mn);
			float *acc = o + (size_t)g * d;
			float inv = 1.0f / est->count[c];
			for (unsigned j = 0; j < d; j++)
				acc[j] = acc[j] * a + p * vs[j] * inv;
			l[g] = l[g] * a + p;
			m[g] = mn;
		}
	}
	attn_state_finish(G, d, m, l, o, o, lse);
}
