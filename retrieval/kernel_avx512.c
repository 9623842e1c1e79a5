/*
 * AVX-512 kernels (F, BW, VL, DQ), with a bf16 score path using
 * VDPBF16PS where the CPU has AVX512-BF16.
 *
 * The shape is that of kernel_avx2.c (read its header first): query tiles
 * of 4/2/1, a score pass over K rows, a softmax over the sub-block, a value
 * pass over groups of V rows, and the same prefetch order. What differs:
 *   - 16 lanes, and 32 registers, so tiles hold 16 accumulators;
 *   - a head_dim that is not a multiple of 16 ends in a masked chunk (masked
 *     loads do not fault past the end), so there is no scalar tail;
 *   - with AVX512-BF16, bf16 scores are dot products of bf16 pairs. A query
 *     rounded to bf16 would be off by up to 2^-8 relative, far more than
 *     fp32 kernels give, so each query is split into q_hi + q_lo, both
 *     bf16, and scored against both: q is then represented within 2^-16
 *     relative (the products are exact and the sums fp32). The value pass
 *     stays fp32: weights rounded to bf16 would cost the same 2^-8.
 *
 * Only the functions carry target attributes, so the file builds with plain
 * flags; kernels.c selects it only when the CPU (and OS) support it.
 */
#include "kernel_sets.h"

#if ATTN_HAVE_X86

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define AVX512BF16 \
	__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* Sixteen elements of type t at @p p, as fp32. */
INLINE AVX512 __m512 ld16(enum kv_dtype t, const void *p)
{
	switch (t) {
	case KV_F16:
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
	case KV_BF16:
		/* bf16 is the upper half of an fp32. */
		return _mm512_castsi512_ps(_mm512_slli_epi32(
			_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
	default:
		return _mm512_loadu_ps(p);
	}
}

/* ld16() of the lanes in @p m only; the others read 0 and do not fault. */
INLINE AVX512 __m512 ld16m(enum kv_dtype t, const void *p, __mmask16 m)
{
	switch (t) {
	case KV_F16:
		return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
	case KV_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(
			_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
	default:
		return _mm512_maskz_loadu_ps(m, p);
	}
}

/* Lanes 0..7 of the result: x's lanes i + x's lanes i + 8. */
INLINE AVX512 __m256 half_add(__m512 x)
{
	return _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
}

/* Lane i of the result is the sum of the lanes of the i-th argument. */
INLINE AVX512 __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
	__m256 u = _mm256_hadd_ps(_mm256_hadd_ps(half_add(a), half_add(b)),
				  _mm256_hadd_ps(half_add(c), half_add(d)));

	return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/*
 * e^x for fp32 lanes: the method and constants of exp8() in kernel_avx2.c,
 * 16 lanes wide. 0 below -87, NaN in, NaN out.
 */
INLINE AVX512 __m512 exp16(__m512 x)
{
	const __m512 lo = _mm512_set1_ps(-87.0f);
	const __m512 hi = _mm512_set1_ps(88.0f);
	__mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);

	/* max/min return their second operand when one is NaN: keep x. */
	x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(0x1.715476p+0f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e43p-1f), x);

	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-0x1.05c61p-29f), r);
	__m512 p = _mm512_set1_ps(0x1.6d7532p-10f);

	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.126fa6p-7f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.5554acp-5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.5554p-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	/* n is in [-126, 127], so 2^n is a normal number. */
	__m512i e = _mm512_slli_epi32(
		_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);

	return _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}

/* Mask of the first @p r lanes, r <= 16. */
INLINE __mmask16 lanes16(unsigned r)
{
	return (__mmask16)((1u << r) - 1);
}

/* 32 registers: 16 accumulators leave room for up to 16 operands. */
#define TILE_ACC 16

/* Value-pass token groups: see kernel_avx2.c. */
#define V_GROUP 32

/* Query tiles of a group: 4s while they fit, then a 2, then a 1. */
INLINE unsigned query_tiles(unsigned G, unsigned char *gt)
{
	unsigned n = 0;

	for (; G >= 4; G -= 4)
		gt[n++] = 4;
	if (G >= 2) {
		gt[n++] = 2;
		G -= 2;
	}
	if (G)
		gt[n++] = 1;
	return n;
}

#define MAX_QTILES (ATTN_MAX_GROUP / 4 + 2)

/*
 * Store the dot products a[g * TT + j] (16-lane partial sums) as
 * st[j * GT + g], four per store.
 */
INLINE AVX512 void store_scores(const __m512 *a, unsigned GT, unsigned TT, float *st)
{
	const unsigned na = GT * TT;

ATTN_UNROLL
	for (unsigned r = 0; r < na; r += 4) {
		const __m512 z = _mm512_setzero_ps();
		__m512 b[4];

ATTN_UNROLL
		for (unsigned x = 0; x < 4; x++) {
			unsigned o = r + x;

			b[x] = o < na ? a[(o % GT) * TT + o / GT] : z;
		}
		__m128 h = hsum4(b[0], b[1], b[2], b[3]);

		if (na - r >= 4)
			_mm_storeu_ps(st + r, h);
		else if (na - r == 2)
			_mm_storel_pi((__m64 *)(st + r), h);
		else
			_mm_store_ss(st + r, h);
	}
}

/*
 * Scores of GT queries and TT tokens, GT * TT <= TILE_ACC:
 * st[j * GT + g] = q_g . k_{kr + j}. @p pf (may be NULL) is TT rows to
 * prefetch a line at a time, as the loads walk the tile's rows.
 */
INLINE AVX512 void score_tile(enum kv_dtype t, const float *q, unsigned d,
			      const void *k, size_t kr, unsigned GT, unsigned TT,
			      float *st, const char *pf)
{
	const unsigned na = GT * TT;
	const size_t es = kv_dtype_size(t), rb = d * es;
	/* 16-element steps per 64-byte line */
	const size_t L = 64 / (16 * es);
	const size_t d16 = d & ~15u;
	const char *kj[TILE_ACC];
	const float *qg[TILE_ACC];
	__m512 a[TILE_ACC];
	size_t i = 0;

ATTN_UNROLL
	for (unsigned j = 0; j < TT; j++)
		kj[j] = (const char *)k + (kr + j) * rb;
ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++)
		qg[g] = q + g * (size_t)d;
ATTN_UNROLL
	for (unsigned x = 0; x < na; x++)
		a[x] = _mm512_setzero_ps();
	while (i < d16) {
		size_t e = d16 - i >= 16 * L ? i + 16 * L : d16;

		if (pf)
ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				_mm_prefetch(pf + j * rb + i * es, _MM_HINT_T0);
		for (; i < e; i += 16) {
			__m512 kv[TILE_ACC];

ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				kv[j] = ld16(t, kj[j] + i * es);
ATTN_UNROLL
			for (unsigned g = 0; g < GT; g++) {
ATTN_UNROLL
				for (unsigned j = 0; j < TT; j++)
					a[g * TT + j] = _mm512_fmadd_ps(_mm512_loadu_ps(qg[g] + i),
									kv[j], a[g * TT + j]);
			}
		}
	}
	if (d16 < d) {
		__mmask16 m = lanes16(d - d16);

ATTN_UNROLL
		for (unsigned j = 0; j < TT; j++) {
			__m512 kv = ld16m(t, kj[j] + d16 * es, m);

ATTN_UNROLL
			for (unsigned g = 0; g < GT; g++)
				a[g * TT + j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qg[g] + d16),
								kv, a[g * TT + j]);
		}
	}
	store_scores(a, GT, TT, st);
}

/*
 * The prefetch row for the score tile at token j of a sub-block of nt:
 * rows j + pd.. in the order K rows, V rows. Where the two meet, the
 * few V rows are prefetched at once and K is returned.
 */
INLINE AVX512 const char *score_pf(const void *k, const void *v, size_t kr,
				   unsigned j, unsigned tt, unsigned nt, size_t rb,
				   unsigned pd)
{
	unsigned r = j + pd, e = r + tt;

	if (!v)
		return NULL;
	if (r < nt && e > nt)
		for (size_t x = 0; x < (e - nt) * rb; x += 64)
			_mm_prefetch((const char *)v + kr * rb + x, _MM_HINT_T0);
	if (r < nt)
		return (const char *)k + (kr + r) * rb;
	if (r - nt < nt)
		return (const char *)v + (kr + r - nt) * rb;
	return NULL;
}

/* Scores of tokens kr..kr+nt-1 for GT queries into st (token-major). */
INLINE AVX512 void score_rows(enum kv_dtype t, const float *q, unsigned d,
			      const void *k, const void *v, size_t kr,
			      unsigned nt, unsigned GT, float *st)
{
	/* 16 accumulators, but 1 query x 8 tokens: 16 tokens would need
	 * 16 more registers for their K. */
	const unsigned TT = GT == 1 ? 8 : TILE_ACC / GT;
	const size_t rb = (size_t)d * kv_dtype_size(t);
	const unsigned pd = attn_pf_rows(d, t);
	unsigned j = 0;

	while (j < nt) {
		unsigned tt = nt - j >= TT ? TT : 1;
		const char *pf = score_pf(k, v, kr, j, tt, nt, rb, pd);

		if (tt == TT)
			score_tile(t, q, d, k, kr + j, GT, TT, st + j * GT, pf);
		else
			score_tile(t, q, d, k, kr + j, GT, 1, st + j * GT, pf);
		j += tt;
	}
}

/* ---- bf16 scores with VDPBF16PS ---- */

/* Queries as bf16 pairs: hi and lo, [GT][dp] each, dp = d rounded up to 32. */
struct q_bf16 {
	uint16_t hi[4 * ATTN_MAX_DIM];
	uint16_t lo[4 * ATTN_MAX_DIM];
	size_t dp;
};

/* Round fp32 lanes to bf16, to nearest even, in the low half of each lane. */
INLINE AVX512 __m256i bf16_rne(__m512 x)
{
	__m512i u = _mm512_castps_si512(x);
	__m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));

	u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
	return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

/* q_hi = bf16(q), q_lo = bf16(q - q_hi), zero-padded to dp. */
INLINE AVX512 void split_q(const float *q, unsigned GT, unsigned d, struct q_bf16 *s)
{
	s->dp = (d + 31) & ~(size_t)31;
	for (unsigned g = 0; g < GT; g++) {
		const float *qg = q + (size_t)g * d;

		for (size_t i = 0; i < s->dp; i += 16) {
			__mmask16 m = i + 16 <= d ? 0xffff : i < d ? lanes16(d - i) : 0;
			__m512 x = _mm512_maskz_loadu_ps(m, qg + i);
			__m256i h = bf16_rne(x);
			__m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));

			_mm256_storeu_si256((__m256i *)(s->hi + g * s->dp + i), h);
			_mm256_storeu_si256((__m256i *)(s->lo + g * s->dp + i),
					    bf16_rne(_mm512_sub_ps(x, hf)));
		}
	}
}

INLINE AVX512 __m512bh as_bh(__m512i x)
{
	__m512bh r;

	memcpy(&r, &x, sizeof(r));
	return r;
}

/* score_tile() with bf16 pair dot products, 32 elements per step. */
INLINE AVX512BF16 void score_tile_bh(const struct q_bf16 *qs, unsigned d,
				     const void *k, size_t kr, unsigned GT,
				     unsigned TT, float *st, const char *pf)
{
	const unsigned na = GT * TT;
	const size_t rb = (size_t)d * 2;
	const char *kj[TILE_ACC];
	__m512 a[TILE_ACC];

ATTN_UNROLL
	for (unsigned j = 0; j < TT; j++)
		kj[j] = (const char *)k + (kr + j) * rb;
ATTN_UNROLL
	for (unsigned x = 0; x < na; x++)
		a[x] = _mm512_setzero_ps();
	for (size_t i = 0; i < d; i += 32) {
		/* The last step may be partial: masked K, zero-padded q. */
		__mmask32 m = i + 32 <= d ? 0xffffffffu : (__mmask32)((1ull << (d - i)) - 1);
		__m512bh kv[TILE_ACC];

		/* Each 32-element step covers one 64-byte line per row. */
		if (pf)
ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				_mm_prefetch(pf + j * rb + i * 2, _MM_HINT_T0);
ATTN_UNROLL
		for (unsigned j = 0; j < TT; j++)
			kv[j] = as_bh(_mm512_maskz_loadu_epi16(m, kj[j] + i * 2));
ATTN_UNROLL
		for (unsigned g = 0; g < GT; g++) {
			__m512bh hi = as_bh(_mm512_loadu_si512(qs->hi + g * qs->dp + i));
			__m512bh lo = as_bh(_mm512_loadu_si512(qs->lo + g * qs->dp + i));

ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				a[g * TT + j] = _mm512_dpbf16_ps(
					_mm512_dpbf16_ps(a[g * TT + j], lo, kv[j]), hi, kv[j]);
		}
	}
	store_scores(a, GT, TT, st);
}

INLINE AVX512BF16 void score_rows_bh(const float *q, unsigned d, const void *k,
				     const void *v, size_t kr, unsigned nt,
				     unsigned GT, float *st)
{
	const unsigned TT = GT == 1 ? 8 : TILE_ACC / GT;
	const size_t rb = (size_t)d * 2;
	const unsigned pd = attn_pf_rows(d, KV_BF16);
	struct q_bf16 qs;
	unsigned j = 0;

	split_q(q, GT, d, &qs);
	while (j < nt) {
		unsigned tt = nt - j >= TT ? TT : 1;
		const char *pf = score_pf(k, v, kr, j, tt, nt, rb, pd);

		if (tt == TT)
			score_tile_bh(&qs, d, k, kr + j, GT, TT, st + j * GT, pf);
		else
			score_tile_bh(&qs, d, k, kr + j, GT, 1, st + j * GT, pf);
		j += tt;
	}
}

/* ---- softmax and values ---- */

/* Lanes 0..GT-1 of the result: max over the lanes l of x with l % GT = g. */
INLINE AVX512 __m128 fold_max(__m512 x, unsigned GT)
{
	__m256 y = _mm256_max_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));

	if (GT <= 2)
		m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	if (GT == 1)
		m = _mm_max_ss(m, _mm_movehdup_ps(m));
	return m;
}

INLINE AVX512 __m128 fold_add(__m512 x, unsigned GT)
{
	__m256 y = half_add(x);
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));

	if (GT <= 2)
		s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	if (GT == 1)
		s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return s;
}

/*
 * Turn the scores of a query tile, st[j * GT + g] for j < nt, into weights
 * p = exp(s - m_new) in place and update m and l; scale[g] gets
 * exp(m_old - m_new).
 */
INLINE AVX512 void softmax_tile(unsigned GT, unsigned nt, float *st, float *m,
				float *l, float *scale)
{
	unsigned n = nt * GT, n16 = (n + 15) & ~15u;
	__m512 mv = _mm512_set1_ps(-INFINITY);
	__m512 sum = _mm512_setzero_ps();
	float mq[4], sub[4];

	/* Padding comes out of exp as 0. */
	for (unsigned i = n; i < n16; i++)
		st[i] = -INFINITY;
	/* max_ps returns its second operand for a NaN: NaN scores do not
	 * hide the max, and exp16 passes them on into l. */
	for (unsigned i = 0; i < n16; i += 16)
		mv = _mm512_max_ps(_mm512_loadu_ps(st + i), mv);
	_mm_storeu_ps(mq, fold_max(mv, GT));
	for (unsigned g = 0; g < GT; g++) {
		float mx = mq[g] > m[g] ? mq[g] : m[g];

		if (mx == -INFINITY) {
			/* Only -inf scores so far: they weigh nothing, and
			 * subtracting 0 keeps them -inf instead of NaN. */
			sub[g] = 0.0f;
			scale[g] = 1.0f;
			continue;
		}
		/* exp(-inf) = 0 drops an empty state's zeros. */
		scale[g] = expf(m[g] - mx);
		sub[g] = m[g] = mx;
	}
	float pat[16];

	for (unsigned i = 0; i < 16; i++)
		pat[i] = sub[i % GT];
	__m512 mx = _mm512_loadu_ps(pat);

	for (unsigned i = 0; i < n16; i += 16) {
		__m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(st + i), mx));

		_mm512_storeu_ps(st + i, e);
		sum = _mm512_add_ps(sum, e);
	}
	_mm_storeu_ps(mq, fold_add(sum, GT));
	for (unsigned g = 0; g < GT; g++)
		l[g] = l[g] * scale[g] + mq[g];
}

/* A byte range to prefetch a line per step; p == end when done. */
struct pf_range {
	const char *p, *end;
};

INLINE AVX512 void pf_step(struct pf_range *r)
{
	if (r->p < r->end) {
		_mm_prefetch(r->p, _MM_HINT_T0);
		r->p += 64;
	}
}

/*
 * acc[g][c0 + 16c ..] = acc * scale[g] + sum_j p[j * GT + g] v_{vr + j}
 * over tokens j in [j0, j1), for GT queries and CT chunks of 16 columns,
 * GT * CT <= TILE_ACC; the last chunk only for the lanes in @p last.
 * @p scale is NULL after the first group of tokens.
 */
INLINE AVX512 void v_tile(enum kv_dtype t, const float *p, const float *scale,
			  const void *v, size_t vr, unsigned j0, unsigned j1,
			  unsigned d, unsigned c0, unsigned GT, unsigned CT,
			  __mmask16 last, float *acc, struct pf_range *pf)
{
	const size_t es = kv_dtype_size(t), rb = d * es;
	const char *vj = (const char *)v + (vr + j0) * rb + c0 * es;
	struct pf_range r = pf ? *pf : (struct pf_range){ NULL, NULL };
	__m512 a[TILE_ACC];

ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++) {
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++) {
			__mmask16 m = c + 1 == CT ? last : 0xffff;

			a[g * CT + c] = _mm512_maskz_loadu_ps(m, acc + (size_t)g * d + c0 + 16 * c);
			if (scale)
				a[g * CT + c] = _mm512_mul_ps(a[g * CT + c],
							      _mm512_set1_ps(scale[g]));
		}
	}
	for (unsigned j = j0; j < j1; j++, vj += rb) {
		__m512 vv[TILE_ACC];

		pf_step(&r);
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++)
			vv[c] = c + 1 == CT ? ld16m(t, vj + 16 * c * es, last) :
					      ld16(t, vj + 16 * c * es);
ATTN_UNROLL
		for (unsigned g = 0; g < GT; g++) {
			__m512 pb = _mm512_set1_ps(p[j * GT + g]);

ATTN_UNROLL
			for (unsigned c = 0; c < CT; c++)
				a[g * CT + c] = _mm512_fmadd_ps(pb, vv[c], a[g * CT + c]);
		}
	}
ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++)
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++)
			_mm512_mask_storeu_ps(acc + (size_t)g * d + c0 + 16 * c,
					      c + 1 == CT ? last : 0xffff, a[g * CT + c]);
	if (pf)
		*pf = r;
}

/* Widest value tile for GT queries, in 16-column chunks. */
#define V_CT(GT) ((GT) == 4 ? 4u : 8u)

/*
 * The value pass over tokens [j0, j1) for GT queries and all columns.
 * Prefetches a line of @p pf (may be NULL) per token step.
 */
INLINE AVX512 void v_rows(enum kv_dtype t, const float *p, const float *scale,
			  const void *v, size_t vr, unsigned j0, unsigned j1,
			  unsigned d, unsigned GT, float *acc, struct pf_range *pf)
{
	unsigned nc = d / 16;
	unsigned c = 0;

	for (; nc - c >= V_CT(GT); c += V_CT(GT))
		v_tile(t, p, scale, v, vr, j0, j1, d, 16 * c, GT, V_CT(GT), 0xffff, acc, pf);
	for (; c < nc; c++)
		v_tile(t, p, scale, v, vr, j0, j1, d, 16 * c, GT, 1, 0xffff, acc, pf);
	if (d % 16)
		v_tile(t, p, scale, v, vr, j0, j1, d, 16 * c, GT, 1, lanes16(d % 16), acc, pf);
}

/*
 * The row passes as separate functions per dtype and query tile width, so
 * that each inner loop gets the registers to itself.
 */
#define ROWS_FNS(name, T, GT)                                                    \
	static AVX512 __attribute__((noinline)) void score_rows_##name##_##GT(  \
		const float *q, unsigned d, const void *k, const void *v,       \
		size_t kr, unsigned nt, float *st)                              \
	{                                                                       \
		score_rows(T, q, d, k, v, kr, nt, GT, st);                      \
	}                                                                       \
	static AVX512 __attribute__((noinline)) void v_rows_##name##_##GT(      \
		const float *p, const float *scale, const void *v, size_t vr,   \
		unsigned j0, unsigned j1, unsigned d, float *acc,               \
		struct pf_range *pf)                                            \
	{                                                                       \
		v_rows(T, p, scale, v, vr, j0, j1, d, GT, acc, pf);             \
	}
#define ROWS_DTYPE(name, T) ROWS_FNS(name, T, 4) ROWS_FNS(name, T, 2) ROWS_FNS(name, T, 1)

ROWS_DTYPE(f32, KV_F32)
ROWS_DTYPE(f16, KV_F16)
ROWS_DTYPE(bf16, KV_BF16)

#define BH_FNS(GT)                                                               \
	static AVX512BF16 __attribute__((noinline)) void score_rows_bh_##GT(    \
		const float *q, unsigned d, const void *k, const void *v,       \
		size_t kr, unsigned nt, float *st)                              \
	{                                                                       \
		score_rows_bh(q, d, k, v, kr, nt, GT, st);                      \
	}
BH_FNS(4)
BH_FNS(2)
BH_FNS(1)

/* The score rows for dtype t, or VDPBF16PS for bf16 when @p bh is set. */
typedef void (*score_rows_fn)(const float *q, unsigned d, const void *k,
			      const void *v, size_t kr, unsigned nt, float *st);
typedef void (*v_rows_fn)(const float *p, const float *scale, const void *v,
			  size_t vr, unsigned j0, unsigned j1, unsigned d,
			  float *acc, struct pf_range *pf);

static const score_rows_fn score_rows_tab[2][KV_DTYPE_COUNT][5] = {
	{
		[KV_F32] = { [1] = score_rows_f32_1, [2] = score_rows_f32_2, [4] = score_rows_f32_4 },
		[KV_F16] = { [1] = score_rows_f16_1, [2] = score_rows_f16_2, [4] = score_rows_f16_4 },
		[KV_BF16] = { [1] = score_rows_bf16_1, [2] = score_rows_bf16_2, [4] = score_rows_bf16_4 },
	},
	{
		[KV_F32] = { [1] = score_rows_f32_1, [2] = score_rows_f32_2, [4] = score_rows_f32_4 },
		[KV_F16] = { [1] = score_rows_f16_1, [2] = score_rows_f16_2, [4] = score_rows_f16_4 },
		[KV_BF16] = { [1] = score_rows_bh_1, [2] = score_rows_bh_2, [4] = score_rows_bh_4 },
	},
};

static const v_rows_fn v_rows_tab[KV_DTYPE_COUNT][5] = {
	[KV_F32] = { [1] = v_rows_f32_1, [2] = v_rows_f32_2, [4] = v_rows_f32_4 },
	[KV_F16] = { [1] = v_rows_f16_1, [2] = v_rows_f16_2, [4] = v_rows_f16_4 },
	[KV_BF16] = { [1] = v_rows_bf16_1, [2] = v_rows_bf16_2, [4] = v_rows_bf16_4 },
};

INLINE AVX512 void block_generic(enum kv_dtype t, int bh, const float *q,
				 unsigned G, unsigned d, const void *k,
				 const void *v, unsigned n, float *m, float *l,
				 float *acc)
{
	/* Query tile x at g0 keeps its weights at s + g0 * ATTN_SUB_MAX. */
	float s[ATTN_MAX_GROUP * ATTN_SUB_MAX];
	float scale[ATTN_MAX_GROUP];
	unsigned char gt[MAX_QTILES];
	const unsigned nq = query_tiles(G, gt);
	const unsigned T = attn_sub_tokens(d, t);
	const unsigned pd = attn_pf_rows(d, t);
	const size_t rb = (size_t)d * kv_dtype_size(t);

	for (unsigned t0 = 0; t0 < n; t0 += T) {
		unsigned nt = n - t0 < T ? n - t0 : T;

		for (unsigned x = 0, g0 = 0; x < nq; g0 += gt[x++]) {
			float *st = s + g0 * ATTN_SUB_MAX;

			/* The first query tile prefetches. */
			score_rows_tab[bh][t][gt[x]](q + (size_t)g0 * d, d, k, x ? NULL : v,
						     t0, nt, st);
			if (gt[x] == 4)
				softmax_tile(4, nt, st, m + g0, l + g0, scale + g0);
			else if (gt[x] == 2)
				softmax_tile(2, nt, st, m + g0, l + g0, scale + g0);
			else
				softmax_tile(1, nt, st, m + g0, l + g0, scale + g0);
		}

		for (unsigned j0 = 0; j0 < nt; j0 += V_GROUP) {
			unsigned j1 = nt - j0 < V_GROUP ? nt : j0 + V_GROUP;
			/* As in kernel_avx2.c: the rows up to the end of the
			 * next group, then the next sub-block's first K rows. */
			unsigned r0 = j0 == 0 && pd > j1 ? pd : j1;
			unsigned r1 = j1 + V_GROUP;
			struct pf_range pf = { NULL, NULL };

			if (r0 < nt) {
				pf.p = (const char *)v + (t0 + r0) * rb;
				pf.end = (const char *)v + (t0 + (r1 < nt ? r1 : nt)) * rb;
			} else if (j1 == nt) {
				unsigned nx = n - t0 - nt < pd ? n - t0 - nt : pd;

				pf.p = (const char *)k + (t0 + nt) * rb;
				pf.end = pf.p + nx * rb;
			}
			for (unsigned x = 0, g0 = 0; x < nq; g0 += gt[x++])
				v_rows_tab[t][gt[x]](s + g0 * ATTN_SUB_MAX, j0 ? NULL : scale + g0,
						     v, t0, j0, j1, d, acc + (size_t)g0 * d,
						     x ? NULL : &pf);
			while (pf.p < pf.end)
				pf_step(&pf);
		}
	}
}

INLINE AVX512 void score_generic(enum kv_dtype t, int bh, const float *q,
				 unsigned G, unsigned d, const void *k,
				 unsigned n, float *out)
{
	float st[4 * ATTN_SUB_MAX];
	unsigned char gt[MAX_QTILES];
	const unsigned nq = query_tiles(G, gt);
	const unsigned T = attn_sub_tokens(d, t);

	for (unsigned t0 = 0; t0 < n; t0 += T) {
		unsigned nt = n - t0 < T ? n - t0 : T;

		for (unsigned x = 0, g0 = 0; x < nq; g0 += gt[x++]) {
			score_rows_tab[bh][t][gt[x]](q + (size_t)g0 * d, d, k, NULL, t0, nt, st);
			for (unsigned j = 0; j < nt; j++)
				for (unsigned g = 0; g < gt[x]; g++)
					out[(size_t)(g0 + g) * n + t0 + j] = st[j * gt[x] + g];
		}
	}
}

#define AVX512_DTYPE(name, T, BH)                                                \
	static AVX512 void block_##name(const float *q, unsigned G, unsigned d, \
					const void *k, const void *v, unsigned n, \
					float *m, float *l, float *acc)         \
	{                                                                       \
		block_generic(T, BH, q, G, d, k, v, n, m, l, acc);              \
	}                                                                       \
	static AVX512 void score_##name(const float *q, unsigned G, unsigned d, \
					const void *k, unsigned n, float *out)  \
	{                                                                       \
		score_generic(T, BH, q, G, d, k, n, out);                       \
	}

AVX512_DTYPE(f32, KV_F32, 0)
AVX512_DTYPE(f16, KV_F16, 0)
AVX512_DTYPE(bf16, KV_BF16, 0)
AVX512_DTYPE(bf16_dp, KV_BF16, 1)

const struct attn_kernels attn_kernels_avx512 = {
	.name = "avx512",
	.block = { [KV_F32] = block_f32, [KV_F16] = block_f16, [KV_BF16] = block_bf16 },
	.score = { [KV_F32] = score_f32, [KV_F16] = score_f16, [KV_BF16] = score_bf16 },
};

const struct attn_kernels attn_kernels_avx512_bf16 = {
	.name = "avx512",
	.block = { [KV_F32] = block_f32, [KV_F16] = block_f16, [KV_BF16] = block_bf16_dp },
	.score = { [KV_F32] = score_f32, [KV_F16] = score_f16, [KV_BF16] = score_bf16_dp },
};

#endif
