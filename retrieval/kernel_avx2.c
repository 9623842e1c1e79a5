/*
 * AVX2 + FMA + F16C kernels.
 *
 * Only the functions carry the target attribute, so this file builds with
 * the project's plain flags and is entered only after kernels.c has seen
 * the CPU features.
 *
 * The group's queries are handled in query tiles of 4 (then 2, then 1).
 * Shape of a block call, per sub-block of tokens (see attn_sub_tokens()):
 *   1. scores: per query tile, tiles of (queries x tokens) accumulators
 *      held in registers sweep d, so each loaded and converted K vector
 *      feeds several FMAs. Scores are kept token-major within a query tile
 *      (s[j * GT + g]), so a tile's results leave as whole vectors;
 *   2. softmax: new max, rescale factor and p = exp(s - max) for the whole
 *      sub-block at once, with a vector exp;
 *   3. values: tiles of (queries x 8-column chunks) accumulators start from
 *      acc (times the rescale factor) and sweep a group of tokens, so acc
 *      is loaded and stored once per group while each V row is read once
 *      per query tile, from L1 after the first.
 * FMAs have a latency of 4 cycles at two per cycle, so 8 independent
 * accumulators are the bare minimum; the main tiles (4 queries) use 12,
 * which with their operands fill the 16 ymm registers. Columns past the
 * last multiple of 8 are handled in scalar code.
 */
#include "kernel_sets.h"

#if ATTN_HAVE_X86

#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* Eight elements of type t at @p p, as fp32. */
INLINE AVX2 __m256 ld8(enum kv_dtype t, const void *p)
{
	switch (t) {
	case KV_F16:
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
	case KV_BF16:
		/* bf16 is the upper half of an fp32. */
		return _mm256_castsi256_ps(_mm256_slli_epi32(
			_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
	default:
		return _mm256_loadu_ps((const float *)p);
	}
}

INLINE AVX2 float ld1(enum kv_dtype t, const void *base, size_t i)
{
	const uint16_t *h = (const uint16_t *)base + i;

	switch (t) {
	case KV_F16:
		return _cvtsh_ss(*h);
	case KV_BF16:
		return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128((int)((uint32_t)*h << 16))));
	default:
		return ((const float *)base)[i];
	}
}

/* Lane i of the result is the sum of the lanes of the i-th argument. */
INLINE AVX2 __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
	/* Per 128-bit half: pair sums, then the sums of a, b, c, d. */
	__m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));

	return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/*
 * e^x for fp32 lanes, relative error about 1e-7; 0 below -87 (where e^x
 * would be subnormal, far below anything a softmax weight can add), NaN in,
 * NaN out.
 *
 * x = n ln2 + r with |r| <= ln2/2, e^x = 2^n e^r. ln2 is split in two so
 * that r keeps its low bits; e^r is a degree-6 polynomial interpolating e^r
 * at the Chebyshev nodes of [-ln2/2, ln2/2] (truncation error 2e-8, well
 * under the fp32 rounding of the Horner steps).
 */
INLINE AVX2 __m256 exp8(__m256 x)
{
	const __m256 lo = _mm256_set1_ps(-87.0f);
	const __m256 hi = _mm256_set1_ps(88.0f);
	__m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);

	/* max/min return their second operand when one is NaN: keep x. */
	x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0x1.715476p+0f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e43p-1f), x);

	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-0x1.05c61p-29f), r);
	__m256 p = _mm256_set1_ps(0x1.6d7532p-10f);

	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.126fa6p-7f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.5554acp-5f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.5554p-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	/* n is in [-126, 127], so 2^n is a normal number. */
	__m256i e = _mm256_slli_epi32(
		_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);

	return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* Accumulators in a tile: 12 plus the 3 or 4 operands fill the 16 ymm. */
#define TILE_ACC 12

/*
 * Prefetching. The out-of-order window holds only a token or two of FMAs,
 * far too little to hide DRAM latency, and a burst of prefetches stalls on
 * the few miss buffers, so the kernels keep a prefetch cursor pd rows
 * (attn_pf_rows()) ahead of their reads and move it a step per step of
 * their own. Memory must also be read in address order: fetching a line
 * from each of many rows (a column slice of V) runs at a fraction of the
 * streaming rate. So within a sub-block the order is
 *   score pass  K rows, in tiles of TT;
 *   value pass  V rows in groups of V_GROUP, each group swept by all the
 *               column tiles while it sits in L1;
 * the score pass prefetches K row r + pd and past the end the first V
 * rows; the value pass prefetches the next group, and while sweeping the
 * last group, the first K rows of the next sub-block. Only the first query
 * tile prefetches: the others read the same rows from cache.
 */
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
 * Scores of GT queries and TT tokens, GT * TT <= TILE_ACC:
 * st[j * GT + g] = q_g . k_{kr + j}. The TT converted K vectors stay in
 * registers for the GT queries, whose chunks come from L1 as FMA memory
 * operands. @p pf (may be NULL) is TT rows to prefetch, a line of each row
 * as the loads enter the matching line of the tile's rows.
 */
INLINE AVX2 void score_tile(enum kv_dtype t, const float *q, unsigned d,
			    const void *k, size_t kr, unsigned GT, unsigned TT,
			    float *st, const char *pf)
{
	const unsigned na = GT * TT;
	const size_t es = kv_dtype_size(t), rb = d * es;
	/* 8-element steps per 64-byte line */
	const size_t L = 64 / (8 * es);
	const size_t d8 = d & ~7u;
	const char *kj[TILE_ACC];
	const float *qg[TILE_ACC];
	__m256 a[TILE_ACC];
	size_t i = 0;

	/* Row bases, so that each load is base + i * size, no arithmetic. */
ATTN_UNROLL
	for (unsigned j = 0; j < TT; j++)
		kj[j] = (const char *)k + (kr + j) * rb;
ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++)
		qg[g] = q + g * (size_t)d;
ATTN_UNROLL
	for (unsigned x = 0; x < na; x++)
		a[x] = _mm256_setzero_ps();
	while (i < d8) {
		/* A line's worth of steps, or what is left. */
		size_t e = d8 - i >= 8 * L ? i + 8 * L : d8;

		if (pf)
ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				_mm_prefetch(pf + j * rb + i * es, _MM_HINT_T0);
		for (; i < e; i += 8) {
			__m256 kv[TILE_ACC];

ATTN_UNROLL
			for (unsigned j = 0; j < TT; j++)
				kv[j] = ld8(t, kj[j] + i * es);
ATTN_UNROLL
			for (unsigned g = 0; g < GT; g++) {
ATTN_UNROLL
				for (unsigned j = 0; j < TT; j++)
					a[g * TT + j] = _mm256_fmadd_ps(_mm256_loadu_ps(qg[g] + i),
									kv[j], a[g * TT + j]);
			}
		}
	}
	/* Reduce in token-major order, four results per store. */
ATTN_UNROLL
	for (unsigned r = 0; r < na; r += 4) {
		const __m256 z = _mm256_setzero_ps();
		__m256 b[4];

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
	for (i = d8; i < d; i++)
		for (unsigned j = 0; j < TT; j++)
			for (unsigned g = 0; g < GT; g++)
				st[j * GT + g] += q[g * (size_t)d + i] * ld1(t, k, (kr + j) * d + i);
}

/*
 * Scores of tokens kr..kr+nt-1 for GT queries into st (token-major). With
 * @p v set, prefetch as described above.
 */
INLINE AVX2 void score_rows(enum kv_dtype t, const float *q, unsigned d,
			    const void *k, const void *v, size_t kr,
			    unsigned nt, unsigned GT, float *st)
{
	/* Four queries x 3 tokens fill the tile; fewer queries (G = 1, 2, 3,
	 * or the rest of G) are memory-bound anyway and use 8 accumulators. */
	const unsigned TT = GT == 4 ? 3 : 8 / GT;
	const size_t rb = (size_t)d * kv_dtype_size(t);
	const unsigned pd = attn_pf_rows(d, t);
	unsigned j = 0;

	while (j < nt) {
		unsigned tt = nt - j >= TT ? TT : 1;
		const char *pf = NULL;

		if (v) {
			/* Rows j + pd.. in the order K rows, V rows; where
			 * the two meet, the few V rows go at once. */
			unsigned r = j + pd, e = r + tt;

			if (r < nt)
				pf = (const char *)k + (kr + r) * rb;
			else if (r - nt < nt)
				pf = (const char *)v + (kr + r - nt) * rb;
			if (r < nt && e > nt)
				for (size_t x = 0; x < (e - nt) * rb; x += 64)
					_mm_prefetch((const char *)v + kr * rb + x, _MM_HINT_T0);
		}
		if (tt == TT)
			score_tile(t, q, d, k, kr + j, GT, TT, st + j * GT, pf);
		else
			score_tile(t, q, d, k, kr + j, GT, 1, st + j * GT, pf);
		j += tt;
	}
}

/* Lanes 0..GT-1 of the result: max over the lanes l of x with l % GT = g. */
INLINE AVX2 __m128 fold_max(__m256 x, unsigned GT)
{
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));

	if (GT <= 2)
		m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	if (GT == 1)
		m = _mm_max_ss(m, _mm_movehdup_ps(m));
	return m;
}

INLINE AVX2 __m128 fold_add(__m256 x, unsigned GT)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));

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
INLINE AVX2 void softmax_tile(unsigned GT, unsigned nt, float *st, float *m,
			      float *l, float *scale)
{
	unsigned n = nt * GT, n8 = (n + 7) & ~7u;
	__m256 mv = _mm256_set1_ps(-INFINITY);
	__m256 sum = _mm256_setzero_ps();
	float mq[4], sub[4];

	/* Padding comes out of exp as 0. */
	for (unsigned i = n; i < n8; i++)
		st[i] = -INFINITY;
	/* max_ps returns its second operand for a NaN: NaN scores do not
	 * hide the max, and exp8 passes them on into l. */
	for (unsigned i = 0; i < n8; i += 8)
		mv = _mm256_max_ps(_mm256_loadu_ps(st + i), mv);
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
	__m256 mx = GT == 4 ? _mm256_setr_ps(sub[0], sub[1], sub[2], sub[3],
					     sub[0], sub[1], sub[2], sub[3]) :
		    GT == 2 ? _mm256_setr_ps(sub[0], sub[1], sub[0], sub[1],
					     sub[0], sub[1], sub[0], sub[1]) :
			      _mm256_set1_ps(sub[0]);

	for (unsigned i = 0; i < n8; i += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(st + i), mx));

		_mm256_storeu_ps(st + i, e);
		sum = _mm256_add_ps(sum, e);
	}
	_mm_storeu_ps(mq, fold_add(sum, GT));
	for (unsigned g = 0; g < GT; g++)
		l[g] = l[g] * scale[g] + mq[g];
}

/* A byte range to prefetch a line per step; p == end when done. */
struct pf_range {
	const char *p, *end;
};

INLINE AVX2 void pf_step(struct pf_range *r)
{
	if (r->p < r->end) {
		_mm_prefetch(r->p, _MM_HINT_T0);
		r->p += 64;
	}
}

/*
 * acc[g][c0 + 8c ..] = acc * scale[g] + sum_j p[j * GT + g] v_{vr + j}
 * over tokens j in [j0, j1), for GT queries and CT chunks of 8 columns,
 * GT * CT <= TILE_ACC. @p scale is NULL after the first group of tokens.
 */
INLINE AVX2 void v_tile(enum kv_dtype t, const float *p, const float *scale,
			const void *v, size_t vr, unsigned j0, unsigned j1,
			unsigned d, unsigned c0, unsigned GT, unsigned CT,
			float *acc, struct pf_range *pf)
{
	__m256 a[TILE_ACC];

ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++) {
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++) {
			a[g * CT + c] = _mm256_loadu_ps(acc + (size_t)g * d + c0 + 8 * c);
			if (scale)
				a[g * CT + c] = _mm256_mul_ps(a[g * CT + c],
							      _mm256_set1_ps(scale[g]));
		}
	}
	const size_t es = kv_dtype_size(t), rb = d * es;
	const char *vj = (const char *)v + (vr + j0) * rb + c0 * es;
	/* The cursor lives in registers for the loop. */
	struct pf_range r = pf ? *pf : (struct pf_range){ NULL, NULL };

	for (unsigned j = j0; j < j1; j++, vj += rb) {
		__m256 vv[TILE_ACC];

		pf_step(&r);
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++)
			vv[c] = ld8(t, vj + 8 * c * es);
ATTN_UNROLL
		for (unsigned g = 0; g < GT; g++) {
			__m256 pb = _mm256_broadcast_ss(p + j * GT + g);

ATTN_UNROLL
			for (unsigned c = 0; c < CT; c++)
				a[g * CT + c] = _mm256_fmadd_ps(pb, vv[c], a[g * CT + c]);
		}
	}
ATTN_UNROLL
	for (unsigned g = 0; g < GT; g++)
ATTN_UNROLL
		for (unsigned c = 0; c < CT; c++)
			_mm256_storeu_ps(acc + (size_t)g * d + c0 + 8 * c, a[g * CT + c]);
	if (pf)
		*pf = r;
}

/* Widest value tile for GT queries, in 8-column chunks. */
#define V_CT(GT) ((GT) == 4 ? 3u : 8u / (GT))

/*
 * The value pass over tokens [j0, j1) for GT queries and all columns.
 * Prefetches a line of @p pf (may be NULL) per token step.
 */
INLINE AVX2 void v_rows(enum kv_dtype t, const float *p, const float *scale,
			const void *v, size_t vr, unsigned j0, unsigned j1,
			unsigned d, unsigned GT, float *acc, struct pf_range *pf)
{
	unsigned nc = d / 8;
	unsigned c = 0;

	if (GT == 4) {
		/* 3 chunks fill the tile; leave 4 as 2 + 2 rather than
		 * 3 + 1, as a 4-accumulator tile runs at half speed (FMA
		 * latency 4, two per cycle). */
		for (; nc - c >= 3 && nc - c != 4; c += 3)
			v_tile(t, p, scale, v, vr, j0, j1, d, 8 * c, 4, 3, acc, pf);
		for (; nc - c >= 2; c += 2)
			v_tile(t, p, scale, v, vr, j0, j1, d, 8 * c, 4, 2, acc, pf);
	} else {
		for (; nc - c >= V_CT(GT); c += V_CT(GT))
			v_tile(t, p, scale, v, vr, j0, j1, d, 8 * c, GT, V_CT(GT), acc, pf);
	}
	for (; c < nc; c++)
		v_tile(t, p, scale, v, vr, j0, j1, d, 8 * c, GT, 1, acc, pf);
	for (unsigned i = 8 * nc; i < d; i++) {
		for (unsigned g = 0; g < GT; g++) {
			float x = acc[(size_t)g * d + i];

			if (scale)
				x *= scale[g];
			for (unsigned j = j0; j < j1; j++)
				x += p[j * GT + g] * ld1(t, v, (vr + j) * d + i);
			acc[(size_t)g * d + i] = x;
		}
	}
}

/*
 * The row passes as separate functions, one per dtype and query tile
 * width: inlined into one big block function, the compiler ran out of
 * registers in the inner loops and spilled their pointers.
 */
#define ROWS_FNS(name, T, GT)                                                    \
	static AVX2 __attribute__((noinline)) void score_rows_##name##_##GT(    \
		const float *q, unsigned d, const void *k, const void *v,       \
		size_t kr, unsigned nt, float *st)                              \
	{                                                                       \
		score_rows(T, q, d, k, v, kr, nt, GT, st);                      \
	}                                                                       \
	static AVX2 __attribute__((noinline)) void v_rows_##name##_##GT(        \
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

#define PICK(fn, t, GT, ...)                                                     \
	do {                                                                    \
		if ((t) == KV_F32)                                              \
			(GT) == 4 ? fn##_f32_4(__VA_ARGS__) :                   \
			(GT) == 2 ? fn##_f32_2(__VA_ARGS__) : fn##_f32_1(__VA_ARGS__); \
		else if ((t) == KV_F16)                                         \
			(GT) == 4 ? fn##_f16_4(__VA_ARGS__) :                   \
			(GT) == 2 ? fn##_f16_2(__VA_ARGS__) : fn##_f16_1(__VA_ARGS__); \
		else                                                            \
			(GT) == 4 ? fn##_bf16_4(__VA_ARGS__) :                  \
			(GT) == 2 ? fn##_bf16_2(__VA_ARGS__) : fn##_bf16_1(__VA_ARGS__); \
	} while (0)

INLINE AVX2 void block_generic(enum kv_dtype t, const float *q, unsigned G,
			       unsigned d, const void *k, const void *v,
			       unsigned n, float *m, float *l, float *acc)
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
			const float *qg = q + (size_t)g0 * d;
			float *st = s + g0 * ATTN_SUB_MAX;
			/* The first query tile prefetches. */
			const void *pv = x ? NULL : v;

			PICK(score_rows, t, gt[x], qg, d, k, pv, t0, nt, st);
			if (gt[x] == 4)
				softmax_tile(4, nt, st, m + g0, l + g0, scale + g0);
			else if (gt[x] == 2)
				softmax_tile(2, nt, st, m + g0, l + g0, scale + g0);
			else
				softmax_tile(1, nt, st, m + g0, l + g0, scale + g0);
		}

		for (unsigned j0 = 0; j0 < nt; j0 += V_GROUP) {
			unsigned j1 = nt - j0 < V_GROUP ? nt : j0 + V_GROUP;
			/* The score pass fetched the first pd V rows; from
			 * here on, the rows up to the end of the next group,
			 * and at the last group the next sub-block's first K
			 * rows. */
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
			for (unsigned x = 0, g0 = 0; x < nq; g0 += gt[x++]) {
				const float *st = s + g0 * ATTN_SUB_MAX;
				const float *sc = j0 ? NULL : scale + g0;
				struct pf_range *p = x ? NULL : &pf;

				PICK(v_rows, t, gt[x], st, sc, v, t0, j0, j1, d,
				     acc + (size_t)g0 * d, p);
			}
			/* Whatever the steps did not reach. */
			while (pf.p < pf.end)
				pf_step(&pf);
		}
	}
}

INLINE AVX2 void score_generic(enum kv_dtype t, const float *q, unsigned G,
			       unsigned d, const void *k, unsigned n, float *out)
{
	float st[4 * ATTN_SUB_MAX];
	unsigned char gt[MAX_QTILES];
	const unsigned nq = query_tiles(G, gt);
	const unsigned T = attn_sub_tokens(d, t);

	/* Sub-blocks keep the K rows in cache across the query tiles. */
	for (unsigned t0 = 0; t0 < n; t0 += T) {
		unsigned nt = n - t0 < T ? n - t0 : T;

		for (unsigned x = 0, g0 = 0; x < nq; g0 += gt[x++]) {
			const float *qg = q + (size_t)g0 * d;

			PICK(score_rows, t, gt[x], qg, d, k, NULL, t0, nt, st);
			for (unsigned j = 0; j < nt; j++)
				for (unsigned g = 0; g < gt[x]; g++)
					out[(size_t)(g0 + g) * n + t0 + j] = st[j * gt[x] + g];
		}
	}
}

#define AVX2_DTYPE(name, T)                                                     \
	static AVX2 void block_##name(const float *q, unsigned G, unsigned d,  \
				      const void *k, const void *v, unsigned n, \
				      float *m, float *l, float *acc)           \
	{                                                                       \
		block_generic(T, q, G, d, k, v, n, m, l, acc);                  \
	}                                                                       \
	static AVX2 void score_##name(const float *q, unsigned G, unsigned d,  \
				      const void *k, unsigned n, float *out)    \
	{                                                                       \
		score_generic(T, q, G, d, k, n, out);                           \
	}

AVX2_DTYPE(f32, KV_F32)
AVX2_DTYPE(f16, KV_F16)
AVX2_DTYPE(bf16, KV_BF16)

const struct attn_kernels attn_kernels_avx2 = {
	.name = "avx2",
	.block = { [KV_F32] = block_f32, [KV_F16] = block_f16, [KV_BF16] = block_bf16 },
	.score = { [KV_F32] = score_f32, [KV_F16] = score_f16, [KV_BF16] = score_bf16 },
};

#endif
