/*
 * CPU attention kernels: the inner loop of every ATTEND.
 *
 * Glossary
 *   group    the G query heads that share one KV head (GQA); one pass over a
 *            block of K/V serves all of them.
 *   state    the running online-softmax state of a group: per query the
 *            running max m (in scaled-score units), the running denominator
 *            l = sum exp(s - m), and the running numerator acc[d] =
 *            sum exp(s - m) * v.
 *   partial  (o, lse) over a token set S: o = acc / l, lse = m + log(l)
 *            (natural log). An empty set has lse = -INFINITY and o = 0.
 *
 * Scores are s = q.k / sqrt(d). Callers pass q already multiplied by
 * 1/sqrt(d) so that a kernel never rescales.
 *
 * A kernel set is chosen once at run time from what the CPU supports
 * (scalar, AVX2+F16C+FMA, AVX-512F with AVX512-BF16 where present); shipped
 * binaries never assume an instruction set at compile time.
 */
#ifndef MNEMO_RETRIEVAL_KERNELS_H
#define MNEMO_RETRIEVAL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/** Element type of stored keys and values. Values match the wire protocol. */
enum kv_dtype {
	KV_F32 = 0,
	KV_F16 = 1,
	KV_BF16 = 2,
	KV_DTYPE_COUNT
};

/** Bytes per element of @p t, or 0 for an unknown type. */
size_t kv_dtype_size(enum kv_dtype t);

/** Upper bounds the kernels are written for. */
#define ATTN_MAX_GROUP 64   /* query heads per KV head */
#define ATTN_MAX_DIM 1024   /* head_dim */
#define ATTN_MAX_BLOCK 256  /* tokens per call of a block kernel */

/**
 * Fold @p n consecutive tokens into the running state of a group.
 *
 * @param q    [G][d] fp32 queries, pre-scaled by 1/sqrt(d)
 * @param G    queries in the group, 1..ATTN_MAX_GROUP
 * @param d    head_dim, 1..ATTN_MAX_DIM (any value; fast paths for multiples of 8/16)
 * @param k    [n][d] keys of type dtype, contiguous
 * @param v    [n][d] values of type dtype, contiguous
 * @param n    tokens, 0..ATTN_MAX_BLOCK
 * @param m    [G] running max, updated
 * @param l    [G] running denominator, updated
 * @param acc  [G][d] running numerator, updated
 * No allocation, no failure: arguments are trusted (checked by the caller).
 * Uses up to about 36 KiB of stack.
 */
typedef void (*attn_block_fn)(const float *q, unsigned G, unsigned d,
			      const void *k, const void *v, unsigned n,
			      float *m, float *l, float *acc);

/**
 * Scores of @p n consecutive keys for a group: out[g*n + t] = q_g . k_t
 * (q pre-scaled). Used by policies that rank tokens before attending.
 */
typedef void (*attn_score_fn)(const float *q, unsigned G, unsigned d,
			      const void *k, unsigned n, float *out);

/** One kernel set, one entry per dtype. */
struct attn_kernels {
	const char *name;                    /* "scalar", "avx2", "avx512" */
	attn_block_fn block[KV_DTYPE_COUNT];
	attn_score_fn score[KV_DTYPE_COUNT];
};

/** The fastest set this CPU runs. Never NULL. Thread-safe, cached. */
const struct attn_kernels *attn_kernels_best(void);

/**
 * The set called @p name if this build has it and this CPU can run it,
 * else NULL. Tests use it to check every set against the reference.
 */
const struct attn_kernels *attn_kernels_by_name(const char *name);

/** Reset a group's state to the empty set. */
void attn_state_init(unsigned G, unsigned d, float *m, float *l, float *acc);

/**
 * Turn a state into partials: o[g] = acc[g] / l[g], lse[g] = m[g] + log l[g].
 * An empty state gives o = 0 and lse = -INFINITY.
 */
void attn_state_finish(unsigned G, unsigned d, const float *m, const float *l,
		       const float *acc, float *o, float *lse);

/**
 * Merge partial (o2, lse2) into (o1, lse1) in place, for one query head:
 * lse = logaddexp(lse1, lse2), o = e^(lse1-lse) o1 + e^(lse2-lse) o2.
 * Either side may be empty (lse = -INFINITY).
 */
void attn_merge(unsigned d, float *o1, float *lse1, const float *o2, float lse2);

/** Conversions used by kernels, tests and tools. */
float kv_bf16_to_f32(uint16_t h);
uint16_t kv_f32_to_bf16(float f);   /* round to nearest even */
float kv_f16_to_f32(uint16_t h);
uint16_t kv_f32_to_f16(float f);    /* round to nearest even */

/** Read element @p i of a dtype array as fp32. */
float kv_load(enum kv_dtype t, const void *p, size_t i);

#endif
