/* Attention over a gathered token set plus estimated clusters. */
#include "sparse.h"

#include <math.h>
#include <string.h>

/* Tokens gathered per kernel call: a tile of K and V stays in L1/L2. */
#define TILE 32u
/* Bytes of K and of V of the next run prefetched before a run is folded. */
#define RUN_PREFETCH 2048u

/* Start the reads of @p t scattered rows of @p row bytes. */
static inline void prefetch_rows(const uint8_t *const *rows, unsigned t, size_t row)
{
	for (unsigned j = 0; j < t; j++)
		for (size_t c = 0; c < row; c += 64)
			__builtin_prefetch(rows[j] + c);
}

/* A row into a tile: the common sizes (d 64 and 128 in 16 bits) as fixed-size copies, inlined. */
static inline void copy_row(uint8_t *dst, const uint8_t *src, size_t row)
{
	if (row == 128)
		memcpy(dst, src, 128);
	else if (row == 256)
		memcpy(dst, src, 256);
	else
		memcpy(dst, src, row);
}

void sparse_fold_rows(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		      enum kv_dtype dtype, const uint8_t *const *krows, const uint8_t *const *vrows,
		      uint64_t n, float *m, float *l, float *acc)
{
	const size_t row = (size_t)d * kv_dtype_size(dtype);
	/* per thread, not on the stack: a tile of f32 rows at d = 1024 is 128 KiB each */
	static _Thread_local _Alignas(64) uint8_t kt[TILE * ATTN_MAX_DIM * 4], vt[TILE * ATTN_MAX_DIM * 4];
	attn_block_fn fn = kern->block[dtype];
	for (uint64_t i = 0; i < n; i += TILE) {
		unsigned t = (unsigned)(n - i < TILE ? n - i : TILE);
		/* the rows are random reads: the next tile's start while this one is copied and scored */
		if (i + TILE < n) {
			const unsigned t2 = (unsigned)(n - i - TILE < TILE ? n - i - TILE : TILE);
			prefetch_rows(krows + i + TILE, t2, row);
			prefetch_rows(vrows + i + TILE, t2, row);
		}
		for (unsigned j = 0; j < t; j++) {
			copy_row(kt + j * row, krows[i + j], row);
			copy_row(vt + j * row, vrows[i + j], row);
		}
		fn(q, G, d, kt, vt, t, m, l, acc);
	}
}

void sparse_fold_estimates(const float *q, unsigned G, unsigned d, const struct kv_estimates *est,
			   float *m, float *l, float *acc)
{
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
			float *ag = acc + (size_t)g * d;
			float inv = 1.0f / est->count[c];
			for (unsigned j = 0; j < d; j++)
				ag[j] = ag[j] * a + p * vs[j] * inv;
			l[g] = l[g] * a + p;
			m[g] = mn;
		}
	}
}

void attend_sparse(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		   const struct kv_rows *rows, const uint64_t *ids, uint64_t n,
		   const struct kv_estimates *est, float *o, float *lse)
{
	enum { BATCH = 8 * TILE }; /* several tiles a call, so each reads the next one ahead */
	const uint8_t *kp[BATCH], *vp[BATCH];
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
	attn_state_init(G, d, m, l, o);
	for (uint64_t i = 0; i < n; i += BATCH) {
		unsigned t = (unsigned)(n - i < BATCH ? n - i : BATCH);
		for (unsigned j = 0; j < t; j++) {
			kp[j] = (const uint8_t *)rows->k + ids[i + j] * rows->stride;
			vp[j] = (const uint8_t *)rows->v + ids[i + j] * rows->stride;
		}
		sparse_fold_rows(kern, q, G, d, rows->dtype, kp, vp, t, m, l, o);
	}
	sparse_fold_estimates(q, G, d, est, m, l, o);
	attn_state_finish(G, d, m, l, o, o, lse);
}

void sparse_fold_runs(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		      const struct kv_rows *rows, const uint32_t *runs, uint64_t n_runs,
		      float *m, float *l, float *acc)
{
	attn_block_fn fn = kern->block[rows->dtype];
	for (uint64_t r = 0; r < n_runs; r++) {
		const uint64_t first = runs[2 * r], count = runs[2 * r + 1];
		/*
		 * The kernel prefetches within a run only; start the next run's
		 * first rows now, so a short run does not begin on a cold miss.
		 */
		if (r + 1 < n_runs) {
			size_t at = (size_t)runs[2 * r + 2] * rows->stride;
			size_t len = (size_t)runs[2 * r + 3] * rows->stride;
			len = len < RUN_PREFETCH ? len : RUN_PREFETCH;
			for (size_t c = 0; c < len; c += 64) {
				__builtin_prefetch((const uint8_t *)rows->k + at + c);
				__builtin_prefetch((const uint8_t *)rows->v + at + c);
			}
		}
		for (uint64_t i = 0; i < count; i += ATTN_MAX_BLOCK) {
			unsigned t = (unsigned)(count - i < ATTN_MAX_BLOCK ? count - i : ATTN_MAX_BLOCK);
			size_t at = (first + i) * rows->stride;
			fn(q, G, d, (const uint8_t *)rows->k + at, (const uint8_t *)rows->v + at, t, m, l, acc);
		}
	}
}

void attend_runs(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		 const struct kv_rows *rows, const uint32_t *runs, uint64_t n_runs,
		 const struct kv_estimates *est, float *o, float *lse)
{
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
	attn_state_init(G, d, m, l, o);
	sparse_fold_runs(kern, q, G, d, rows, runs, n_runs, m, l, o);
	sparse_fold_estimates(q, G, d, est, m, l, o);
	attn_state_finish(G, d, m, l, o, o, lse);
}
