/*
 * Attention over a chosen set of tokens: the exact partial over the tokens a
 * policy picked, plus the clusters it estimates (each a pseudo-key of
 * weight n_j, see index/policy.h). The rows are gathered into small
 * contiguous tiles so that the same block kernels as exact attention run.
 */
#ifndef MNEMO_RETRIEVAL_SPARSE_H
#define MNEMO_RETRIEVAL_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/** Where the rows of one KV head live: row t at base + t * stride bytes. */
struct kv_rows {
	const void *k, *v;
	size_t stride;            /* bytes between consecutive tokens */
	enum kv_dtype dtype;
};

/** Clusters standing in for their members (may be empty). */
struct kv_estimates {
	unsigned n;
	const float *key;         /* [n][d] */
	const float *count;       /* [n] n_j */
	const float *vsum;        /* [n][d] */
};

/**
 * Partial (o, lse) of @p G queries (pre-scaled by 1/sqrt(d)) over the
 * tokens @p ids (any order, no duplicates) and the estimates.
 * @param o    [G][d] output
 * @param lse  [G] output
 * No allocation: tiles live on the stack.
 */
void attend_sparse(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		   const struct kv_rows *rows, const uint64_t *ids, uint64_t n,
		   const struct kv_estimates *est, float *o, float *lse);

/** Fold the rows at @p krows / @p vrows into a group's running state. */
void sparse_fold_rows(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		      enum kv_dtype dtype, const uint8_t *const *krows, const uint8_t *const *vrows,
		      uint64_t n, float *m, float *l, float *acc);

/**
 * Fold runs of contiguous rows into a group's running state: run i covers
 * rows runs[2i] .. runs[2i] + runs[2i+1] - 1 of @p rows (a policy's own
 * row order, index_result.runs). The block kernels read each run in place.
 */
void sparse_fold_runs(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		      const struct kv_rows *rows, const uint32_t *runs, uint64_t n_runs,
		      float *m, float *l, float *acc);

/** attend_sparse() over runs of rows instead of token ids. */
void attend_runs(const struct attn_kernels *kern, const float *q, unsigned G, unsigned d,
		 const struct kv_rows *rows, const uint32_t *runs, uint64_t n_runs,
		 const struct kv_estimates *est, float *o, float *lse);

/** Fold estimated clusters into a group's running state. */
void sparse_fold_estimates(const float *q, unsigned G, unsigned d, const struct kv_estimates *est,
			   float *m, float *l, float *acc);

#endif
