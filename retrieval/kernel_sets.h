/*
 * Private to retrieval/: the kernel sets each instruction-set file defines,
 * and the few helpers they share. Callers outside retrieval/ go through
 * attn_kernels_best() and attn_kernels_by_name() in kernels.h.
 */
#ifndef MNEMO_RETRIEVAL_KERNEL_SETS_H
#define MNEMO_RETRIEVAL_KERNEL_SETS_H

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define ATTN_HAVE_X86 1
#else
#define ATTN_HAVE_X86 0
#endif

/*
 * Before a loop over a tile's registers (a constant, small count): unroll
 * it fully, or the arrays of vectors it indexes stay in memory. Compilers
 * differ in the pragma they honour.
 */
#if defined(__clang__)
#define ATTN_UNROLL _Pragma("clang loop unroll(full)")
#else
#define ATTN_UNROLL _Pragma("GCC unroll 16")
#endif

extern const struct attn_kernels attn_kernels_scalar;
#if ATTN_HAVE_X86
extern const struct attn_kernels attn_kernels_avx2;
extern const struct attn_kernels attn_kernels_avx512;
/* Same as attn_kernels_avx512 but bf16 scores use VDPBF16PS. */
extern const struct attn_kernels attn_kernels_avx512_bf16;
#endif

/*
 * Tokens a SIMD block kernel handles between two softmax updates: at most
 * ATTN_SUB_MAX, which bounds the score buffer on the stack to
 * ATTN_MAX_GROUP * ATTN_SUB_MAX floats (16 KiB). A sub-block's K rows are
 * read once per query tile, so large rows get fewer tokens (about 32 KiB
 * of K, from L2 after the first tile), but at least 16, as each sub-block
 * also costs a pass of loads and stores over acc.
 */
#define ATTN_SUB_MAX 64u

static inline unsigned attn_sub_tokens(unsigned d, enum kv_dtype t)
{
	size_t n = (32u * 1024u) / ((size_t)d * kv_dtype_size(t));

	if (n > ATTN_SUB_MAX)
		n = ATTN_SUB_MAX;
	n &= ~(size_t)7;
	return n < 16 ? 16 : (unsigned)n;
}

/*
 * How many rows ahead of its reads a SIMD kernel prefetches: about 8 KiB,
 * a little more than DRAM latency times one core's streaming rate.
 */
static inline unsigned attn_pf_rows(unsigned d, enum kv_dtype t)
{
	size_t n = (8u * 1024u) / ((size_t)d * kv_dtype_size(t));

	return n < 2 ? 2 : n > 32 ? 32 : (unsigned)n;
}

#endif
