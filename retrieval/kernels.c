/*
 * Element conversions, softmax state helpers and the run-time choice of a
 * kernel set. The kernels themselves live in kernel_<isa>.c.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_sets.h"

#if ATTN_HAVE_X86
#include <cpuid.h>
#endif

size_t kv_dtype_size(enum kv_dtype t)
{
	switch (t) {
	case KV_F32:
		return 4;
	case KV_F16:
	case KV_BF16:
		return 2;
	default:
		return 0;
	}
}

static inline uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float kv_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t kv_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	/*
	 * Rounding a NaN could carry into the exponent and turn it into an
	 * infinity (or truncate the payload to zero); keep it a quiet NaN.
	 */
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x0040u);
	/* Adding 0x7fff plus the lowest kept bit rounds half to even; a carry
	 * out of the mantissa correctly bumps the exponent, up to infinity. */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

float kv_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0) {
		/* Zero or subnormal: man * 2^-24 is exact in fp32. */
		float f = (float)man * 0x1p-24f;

		return sign ? -f : f;
	}
	if (exp == 31)
		return bits_f32(sign | 0x7f800000u | (man << 13));
	return bits_f32(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

/* Shift right by s (1..31) rounding half to even. */
static inline uint32_t shr_rne(uint32_t x, unsigned s)
{
	uint32_t r = x >> s;
	uint32_t rem = x & ((1u << s) - 1);
	uint32_t half = 1u << (s - 1);

	if (rem > half || (rem == half && (r & 1u)))
		r++;
	return r;
}

uint16_t kv_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;
	uint32_t e = a >> 23;

	if (a > 0x7f800000u)
		return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);
	/* 65520 is halfway between 65504 (largest f16) and 2^16; ties go to
	 * the even neighbour, which is the infinity. */
	if (a >= 0x477ff000u)
		return sign | 0x7c00u;
	if (e >= 113)
		/* Normal f16. A round-up carry out of the mantissa lands in the
		 * exponent, which is the right encoding. */
		return sign | (uint16_t)shr_rne(((e - 112) << 23 | (a & 0x7fffffu)), 13);
	if (e < 102)
		/* Below half the smallest subnormal (2^-25): rounds to zero. */
		return sign;
	/* Subnormal f16: count units of 2^-24. A result of 0x400 is the
	 * smallest normal, again the right encoding. */
	return sign | (uint16_t)shr_rne((a & 0x7fffffu) | 0x800000u, 126 - e);
}

float kv_load(enum kv_dtype t, const void *p, size_t i)
{
	switch (t) {
	case KV_F32:
		return ((const float *)p)[i];
	case KV_F16:
		return kv_f16_to_f32(((const uint16_t *)p)[i]);
	case KV_BF16:
		return kv_bf16_to_f32(((const uint16_t *)p)[i]);
	default:
		return NAN;
	}
}

void attn_state_init(unsigned G, unsigned d, float *m, float *l, float *acc)
{
	for (unsigned g = 0; g < G; g++) {
		m[g] = -INFINITY;
		l[g] = 0.0f;
	}
	memset(acc, 0, (size_t)G * d * sizeof(*acc));
}

void attn_state_finish(unsigned G, unsigned d, const float *m, const float *l,
		       const float *acc, float *o, float *lse)
{
	for (unsigned g = 0; g < G; g++) {
		const float *a = acc + (size_t)g * d;
		float *og = o + (size_t)g * d;

		if (m[g] == -INFINITY || l[g] == 0.0f) {
			memset(og, 0, (size_t)d * sizeof(*og));
			lse[g] = -INFINITY;
			continue;
		}
		float inv = 1.0f / l[g];

		for (unsigned i = 0; i < d; i++)
			og[i] = a[i] * inv;
		lse[g] = m[g] + logf(l[g]);
	}
}

void attn_merge(unsigned d, float *o1, float *lse1, const float *o2, float lse2)
{
	float a = *lse1;

	if (lse2 == -INFINITY)
		return;
	if (a == -INFINITY) {
		memcpy(o1, o2, (size_t)d * sizeof(*o1));
		*lse1 = lse2;
		return;
	}
	/* Weights relative to the larger side, so the exponent is <= 0 and
	 * nothing overflows however large the scores are. */
	float mx = a > lse2 ? a : lse2;
	float w1 = expf(a - mx);
	float w2 = expf(lse2 - mx);
	float s = w1 + w2;

	w1 /= s;
	w2 /= s;
	for (unsigned i = 0; i < d; i++)
		o1[i] = w1 * o1[i] + w2 * o2[i];
	*lse1 = mx + logf(s);
}

/* ---- choosing a kernel set ---- */

#if ATTN_HAVE_X86
static int cpu_has_f16c(void)
{
	unsigned a, b, c, d;

	/* Not every compiler's __builtin_cpu_supports() knows "f16c". */
	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_has_avx2(void)
{
	/* The AVX2 check includes the OS saving the YMM state, which F16C
	 * needs too. */
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	       cpu_has_f16c();
}

static int cpu_has_avx512(void)
{
	/* __builtin_cpu_supports() also checks that the OS saves the ZMM
	 * state (XCR0). */
	return __builtin_cpu_supports("avx512f") &&
	       __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vl") &&
	       __builtin_cpu_supports("avx512dq") && cpu_has_avx2();
}

static const struct attn_kernels *avx512_set(void)
{
	if (__builtin_cpu_supports("avx512bf16"))
		return &attn_kernels_avx512_bf16;
	return &attn_kernels_avx512;
}
#endif

const struct attn_kernels *attn_kernels_by_name(const char *name)
{
	if (!name)
		return NULL;
#if ATTN_HAVE_X86
	__builtin_cpu_init();
	if (!strcmp(name, "avx512"))
		return cpu_has_avx512() ? avx512_set() : NULL;
	if (!strcmp(name, "avx2"))
		return cpu_has_avx2() ? &attn_kernels_avx2 : NULL;
#endif
	if (!strcmp(name, "scalar"))
		return &attn_kernels_scalar;
	return NULL;
}

static const struct attn_kernels *best_set;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void choose_best(void)
{
	const struct attn_kernels *k = NULL;
	/* An override names a set to use, but never one this CPU would fault
	 * on: an unknown or unsupported name falls back to the automatic
	 * choice. */
	const char *env = getenv("MNEMO_KERNELS");

	if (env && *env)
		k = attn_kernels_by_name(env);
#if ATTN_HAVE_X86
	if (!k)
		k = attn_kernels_by_name("avx512");
	if (!k)
		k = attn_kernels_by_name("avx2");
#endif
	if (!k)
		k = &attn_kernels_scalar;
	best_set = k;
}

const struct attn_kernels *attn_kernels_best(void)
{
	/* pthread_once orders the write of best_set before every return. */
	pthread_once(&best_once, choose_best);
	return best_set;
}
