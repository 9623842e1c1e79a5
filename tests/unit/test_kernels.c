/*
 * Attention kernels against a double-precision reference.
 *
 * Every kernel set this CPU runs is fed fresh random inputs and compared
 * with a plain (not online) softmax computed here in double from the same
 * rounded K/V values the kernel reads, so what is left to measure is the
 * kernels' own fp32 arithmetic. The seed is printed; MNEMO_TEST_SEED=<n>
 * repeats a run.
 *
 * Prints one line per check and a closing "N passed, N failed, N skipped".
 * Exit status: 0 all passed, 1 a check failed, 77 nothing could be tested.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"

static unsigned n_pass, n_fail, n_skip;

__attribute__((format(printf, 2, 3)))
static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	printf("%s ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	if (ok)
		n_pass++;
	else
		n_fail++;
}

/* ---- random inputs ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	/* splitmix64: tiny, and good enough to scatter test inputs. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double rng_uniform(void)
{
	return (double)(rng_next() >> 11) * 0x1p-53;
}

static double rng_normal(void)
{
	double u = rng_uniform(), w = rng_uniform();

	return sqrt(-2.0 * log(u + 0x1p-60)) * cos(2.0 * M_PI * w);
}

static void *xmalloc(size_t n)
{
	/* Exact sizes, so that a kernel reading past an array trips ASan. */
	void *p = malloc(n ? n : 1);

	if (!p) {
		perror("malloc");
		exit(1);
	}
	return p;
}

static void store(enum kv_dtype t, void *p, size_t i, float f)
{
	switch (t) {
	case KV_F32:
		((float *)p)[i] = f;
		break;
	case KV_F16:
		((uint16_t *)p)[i] = kv_f32_to_f16(f);
		break;
	default:
		((uint16_t *)p)[i] = kv_f32_to_bf16(f);
		break;
	}
}

static void *rand_kv(enum kv_dtype t, size_t count)
{
	void *p = xmalloc(count * kv_dtype_size(t));

	for (size_t i = 0; i < count; i++)
		store(t, p, i, (float)rng_normal());
	return p;
}

/* Queries as a caller passes them: pre-scaled by 1/sqrt(d). */
static float *rand_q(unsigned G, unsigned d)
{
	float *q = xmalloc((size_t)G * d * sizeof(*q));

	for (size_t i = 0; i < (size_t)G * d; i++)
		q[i] = (float)(rng_normal() / sqrt(d));
	return q;
}

/* ---- reference ---- */

struct ref {
	double *o;    /* [G][d] */
	double *lse;  /* [G] */
	double *mag;  /* [G]: norm of sum_t w_t |v_t|, the scale o is summed at */
	double smax;  /* largest sum |q_i k_i| over all (g, t): fp32 dot error scale */
};

static void ref_free(struct ref *r)
{
	free(r->o);
	free(r->lse);
	free(r->mag);
}

/* Plain softmax over tokens [t0, t1) in double. */
static struct ref reference(enum kv_dtype t, const float *q, unsigned G,
			    unsigned d, const void *k, const void *v,
			    size_t t0, size_t t1)
{
	struct ref r = {
		.o = xmalloc((size_t)G * d * sizeof(double)),
		.lse = xmalloc(G * sizeof(double)),
		.mag = xmalloc(G * sizeof(double)),
	};
	size_t n = t1 - t0;
	double *s = xmalloc((n ? n : 1) * sizeof(double));
	double *ab = xmalloc(((size_t)d ? d : 1) * sizeof(double));

	for (unsigned g = 0; g < G; g++) {
		const float *qg = q + (size_t)g * d;
		double *og = r.o + (size_t)g * d;
		double mx = -INFINITY, sum = 0.0;

		for (size_t j = 0; j < n; j++) {
			double dot = 0.0, mag = 0.0;

			for (unsigned i = 0; i < d; i++) {
				double x = (double)qg[i] * kv_load(t, k, (t0 + j) * d + i);

				dot += x;
				mag += fabs(x);
			}
			s[j] = dot;
			if (dot > mx)
				mx = dot;
			if (mag > r.smax)
				r.smax = mag;
		}
		for (unsigned i = 0; i < d; i++)
			og[i] = ab[i] = 0.0;
		r.mag[g] = 0.0;
		if (n == 0) {
			r.lse[g] = -INFINITY;
			continue;
		}
		for (size_t j = 0; j < n; j++) {
			double w = exp(s[j] - mx);

			sum += w;
			for (unsigned i = 0; i < d; i++) {
				double x = kv_load(t, v, (t0 + j) * d + i);

				og[i] += w * x;
				ab[i] += w * fabs(x);
			}
		}
		for (unsigned i = 0; i < d; i++) {
			og[i] /= sum;
			r.mag[g] += (ab[i] / sum) * (ab[i] / sum);
		}
		r.mag[g] = sqrt(r.mag[g]);
		r.lse[g] = mx + log(sum);
	}
	free(s);
	free(ab);
	return r;
}

/* ---- running kernels ---- */

struct partial {
	float *o;    /* [G][d] */
	float *lse;  /* [G] */
};

static void partial_free(struct partial *p)
{
	free(p->o);
	free(p->lse);
}

/* Attend tokens [t0, t1) fed in calls of at most @p chunk tokens. */
static struct partial run_block(const struct attn_kernels *ks, enum kv_dtype t,
				const float *q, unsigned G, unsigned d,
				const void *k, const void *v, size_t t0,
				size_t t1, unsigned chunk)
{
	size_t es = kv_dtype_size(t);
	float *m = xmalloc(G * sizeof(*m));
	float *l = xmalloc(G * sizeof(*l));
	float *acc = xmalloc((size_t)G * d * sizeof(*acc));
	struct partial p = {
		.o = xmalloc((size_t)G * d * sizeof(float)),
		.lse = xmalloc(G * sizeof(float)),
	};

	attn_state_init(G, d, m, l, acc);
	/* An empty range still makes one call: n = 0 must be a no-op. */
	for (size_t j = t0;; j += chunk) {
		unsigned nt = t1 - j < chunk ? (unsigned)(t1 - j) : chunk;

		ks->block[t](q, G, d, (const char *)k + j * d * es,
			     (const char *)v + j * d * es, nt, m, l, acc);
		if (j + nt >= t1)
			break;
	}
	attn_state_finish(G, d, m, l, acc, p.o, p.lse);
	free(m);
	free(l);
	free(acc);
	return p;
}

struct err {
	double o;    /* worst |o - o_ref| / |o_ref| over the heads */
	double lse;  /* worst |lse - lse_ref| / max(1, |lse_ref|) */
	int bad;     /* an empty set not reported as one, or a NaN */
};

static void err_max(struct err *a, struct err b)
{
	if (b.o > a->o || isnan(b.o))
		a->o = b.o;
	if (b.lse > a->lse || isnan(b.lse))
		a->lse = b.lse;
	a->bad |= b.bad;
}

static struct err compare(const struct partial *p, const struct ref *r,
			  unsigned G, unsigned d)
{
	struct err e = { 0 };

	for (unsigned g = 0; g < G; g++) {
		const float *o = p->o + (size_t)g * d;
		const double *ro = r->o + (size_t)g * d;
		double num = 0.0, den = 0.0;

		if (r->lse[g] == -INFINITY) {
			/* The empty set: exactly -inf and zeros. */
			if (p->lse[g] != -INFINITY)
				e.bad = 1;
			for (unsigned i = 0; i < d; i++)
				if (o[i] != 0.0f)
					e.bad = 1;
			continue;
		}
		for (unsigned i = 0; i < d; i++) {
			num += (o[i] - ro[i]) * (o[i] - ro[i]);
			den += ro[i] * ro[i];
		}
		/*
		 * o can come out near zero when values cancel (d = 1, long
		 * sequences), while the rounding is that of the terms summed:
		 * floor the norm at a sixteenth of the terms' weighted size.
		 */
		double rel = sqrt(num) / fmax(sqrt(den), r->mag[g] / 16.0);
		double dl = fabs(p->lse[g] - r->lse[g]) / fmax(1.0, fabs(r->lse[g]));

		if (isnan(rel) || isnan(dl))
			e.bad = 1;
		if (rel > e.o)
			e.o = rel;
		if (dl > e.lse)
			e.lse = dl;
	}
	return e;
}

/*
 * Error of a score relative to sum |q_i k_i|. fp32 dot products stay far
 * below 2^-21 for d <= 1024; for bf16 keys a kernel may score against the
 * query split into two bf16 halves (VDPBF16PS), which carry q to 2^-16.
 */
static double score_eps(enum kv_dtype t)
{
	return t == KV_BF16 ? 0x1p-16 : 0x1p-21;
}

/*
 * Tolerances. The f16/bf16 bound on o is looser by request of the spec
 * even though K/V rounding is shared with the reference; the extra term
 * covers the error of the scores, which grows with sum |q_i k_i|.
 */
static double tol_o(enum kv_dtype t, double smax)
{
	return (t == KV_F32 ? 1e-5 : 2e-3) + score_eps(t) * smax;
}

static double tol_lse(enum kv_dtype t, double smax)
{
	return 1e-5 + score_eps(t) * smax;
}

static int err_ok(struct err e, enum kv_dtype t, double smax)
{
	return !e.bad && e.o <= tol_o(t, smax) && e.lse <= tol_lse(t, smax);
}

/* ---- checks ---- */

static const char *dtype_name[KV_DTYPE_COUNT] = { "f32", "f16", "bf16" };

#define MAX_SETS 3
static const char *set_names[MAX_SETS] = { "scalar", "avx2", "avx512" };
static const struct attn_kernels *sets[MAX_SETS];

static unsigned bits_equal(float a, float b)
{
	return memcmp(&a, &b, sizeof(a)) == 0;
}

/* Distance of x to the value of encoding h; +inf for a NaN encoding. */
static double enc_dist(float (*dec)(uint16_t), uint16_t h, float x)
{
	float f = dec(h);

	return isnan(f) ? INFINITY : fabs((double)f - (double)x);
}

/*
 * h must be a nearest encoding of x, and the even one on a tie. Encodings
 * of one sign are ordered like their values, so h's neighbours are h +- 1.
 * From @p halfway (the largest finite value plus half its ulp) on, x
 * rounds to infinity: that largest value has an odd mantissa.
 */
static int rounds_right(float (*dec)(uint16_t), uint16_t h, float x,
			float halfway)
{
	double dh = enc_dist(dec, h, x);

	if (isinf(dec(h)))
		return fabsf(x) >= halfway;
	if (fabsf(x) >= halfway)
		return 0;

	double up = enc_dist(dec, (uint16_t)(h + 1), x);

	if (up < dh || (up == dh && (h & 1)))
		return 0;
	if (h & 0x7fff) {
		double down = enc_dist(dec, (uint16_t)(h - 1), x);

		if (down < dh || (down == dh && (h & 1)))
			return 0;
	}
	return 1;
}

static void check_conversions(void)
{
	unsigned bad_rt16 = 0, bad_rtb = 0, bad_r16 = 0, bad_rb = 0;

	/* Every encoding survives decode + encode (NaN stays NaN). */
	for (uint32_t h = 0; h <= 0xffff; h++) {
		float f = kv_f16_to_f32((uint16_t)h);
		float b = kv_bf16_to_f32((uint16_t)h);

		if (isnan(f) ? !isnan(kv_f16_to_f32(kv_f32_to_f16(f)))
			     : kv_f32_to_f16(f) != h)
			bad_rt16++;
		if (isnan(b) ? !isnan(kv_bf16_to_f32(kv_f32_to_bf16(b)))
			     : kv_f32_to_bf16(b) != h)
			bad_rtb++;
	}
	check(!bad_rt16, "convert f16 round trip of all 65536 encodings (%u bad)", bad_rt16);
	check(!bad_rtb, "convert bf16 round trip of all 65536 encodings (%u bad)", bad_rtb);

	/* Random bit patterns, then patterns near f16 range ends. */
	for (unsigned i = 0; i < 400000; i++) {
		uint32_t u = (uint32_t)rng_next();
		float x;

		if (i & 1)
			/* Exponents around the f16 range: subnormals to overflow. */
			u = (u & 0x807fffffu) | ((uint32_t)(97 + (u >> 8) % 48) << 23);
		memcpy(&x, &u, sizeof(x));
		if (isnan(x)) {
			bad_r16 += !isnan(kv_f16_to_f32(kv_f32_to_f16(x)));
			bad_rb += !isnan(kv_bf16_to_f32(kv_f32_to_bf16(x)));
			continue;
		}
		bad_r16 += !rounds_right(kv_f16_to_f32, kv_f32_to_f16(x), x, 65520.0f);
		bad_rb += !rounds_right(kv_bf16_to_f32, kv_f32_to_bf16(x), x, 0x1.ffp127f);
	}
	check(!bad_r16, "convert f32->f16 rounds to nearest even on 400000 inputs (%u bad)", bad_r16);
	check(!bad_rb, "convert f32->bf16 rounds to nearest even on 400000 inputs (%u bad)", bad_rb);

	static const struct {
		float x;
		uint16_t f16, bf16;
	} cases[] = {
		{ 0.0f, 0x0000, 0x0000 },
		{ -0.0f, 0x8000, 0x8000 },
		{ 1.0f, 0x3c00, 0x3f80 },
		{ -2.0f, 0xc000, 0xc000 },
		{ INFINITY, 0x7c00, 0x7f80 },
		{ -INFINITY, 0xfc00, 0xff80 },
		{ 65504.0f, 0x7bff, 0x4780 },
		{ 65519.0f, 0x7bff, 0x4780 },
		{ 65520.0f, 0x7c00, 0x4780 },            /* f16 tie goes to inf */
		{ 0x1p-24f, 0x0001, 0x3380 },            /* smallest f16 subnormal */
		{ 0x1p-25f, 0x0000, 0x3300 },            /* tie to even: 0 */
		{ 0x1.8p-24f, 0x0002, 0x33c0 },          /* tie to even: 2 units */
		{ 0x1p-14f, 0x0400, 0x3880 },            /* smallest f16 normal */
		{ 0x1.ffcp-15f, 0x0400, 0x3880 },        /* rounds up into normals */
		{ 0x1.002p+0f, 0x3c00, 0x3f80 },         /* f16 tie to even, down */
		{ 0x1.006p+0f, 0x3c02, 0x3f80 },         /* f16 tie to even, up */
		{ 0x1.01p+0f, 0x3c04, 0x3f80 },          /* bf16 tie to even, down */
		{ 0x1.03p+0f, 0x3c0c, 0x3f82 },          /* bf16 tie to even, up */
		{ 0x1.fffffep127f, 0x7c00, 0x7f80 },     /* FLT_MAX overflows bf16 */
		{ 0x1p-149f, 0x0000, 0x0000 },           /* fp32 subnormal */
		{ 0x1p-133f, 0x0000, 0x0001 },           /* bf16 subnormal */
	};
	unsigned bad = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint16_t h = kv_f32_to_f16(cases[i].x);
		uint16_t b = kv_f32_to_bf16(cases[i].x);

		if (h != cases[i].f16 || b != cases[i].bf16) {
			printf("     %a: f16 %04x (want %04x) bf16 %04x (want %04x)\n",
			       cases[i].x, h, cases[i].f16, b, cases[i].bf16);
			bad++;
		}
	}
	check(!bad, "convert special values and ties (%u bad)", bad);

	int nan_ok = isnan(kv_f16_to_f32(kv_f32_to_f16(NAN))) &&
		     isnan(kv_bf16_to_f32(kv_f32_to_bf16(NAN))) &&
		     isnan(kv_bf16_to_f32(kv_f32_to_bf16(-NAN))) &&
		     kv_f16_to_f32(0x7c00) == INFINITY &&
		     kv_f16_to_f32(0xfc00) == -INFINITY &&
		     kv_f16_to_f32(0x0001) == 0x1p-24f &&
		     kv_f16_to_f32(0x83ff) == -0x1.ff8p-15f &&
		     bits_equal(kv_f16_to_f32(0x8000), -0.0f) &&
		     kv_bf16_to_f32(0x7f80) == INFINITY;
	check(nan_ok, "convert NaN, infinities, subnormals and -0 decode");

	float f32v[3] = { 1.5f, -2.25f, 3.0f };
	uint16_t f16v[3] = { 0x3e00, 0xc080, 0x4200 };
	uint16_t bfv[3] = { 0x3fc0, 0xc010, 0x4040 };
	int load_ok = 1;

	for (size_t i = 0; i < 3; i++)
		load_ok &= kv_load(KV_F32, f32v, i) == f32v[i] &&
			   kv_load(KV_F16, f16v, i) == f32v[i] &&
			   kv_load(KV_BF16, bfv, i) == f32v[i];
	load_ok &= kv_dtype_size(KV_F32) == 4 && kv_dtype_size(KV_F16) == 2 &&
		   kv_dtype_size(KV_BF16) == 2 && kv_dtype_size(KV_DTYPE_COUNT) == 0;
	check(load_ok, "kv_load and kv_dtype_size for every dtype");
}

/* Checks of the state helpers and merge that do not involve a kernel. */
static void check_state(void)
{
	float m[2], l[2], acc[6], o[6] = { 1, 1, 1, 1, 1, 1 }, lse[2];
	int ok;

	attn_state_init(2, 3, m, l, acc);
	attn_state_finish(2, 3, m, l, acc, o, lse);
	ok = lse[0] == -INFINITY && lse[1] == -INFINITY;
	for (int i = 0; i < 6; i++)
		ok &= o[i] == 0.0f;
	check(ok, "state: init then finish is the empty partial");

	float a[3] = { 1, 2, 3 }, b[3] = { 4, 5, 6 }, z[3] = { 0, 0, 0 };
	float la = 2.5f, lz = -INFINITY;

	attn_merge(3, a, &la, z, -INFINITY);
	ok = la == 2.5f && a[0] == 1 && a[1] == 2 && a[2] == 3;
	attn_merge(3, z, &lz, b, 7.0f);
	ok &= lz == 7.0f && z[0] == 4 && z[1] == 5 && z[2] == 6;
	check(ok, "merge: an empty side leaves the other side exact");

	float e1[2] = { 0, 0 }, l1 = -INFINITY, e2[2] = { 0, 0 };

	attn_merge(2, e1, &l1, e2, -INFINITY);
	check(l1 == -INFINITY && e1[0] == 0 && e1[1] == 0, "merge: empty with empty stays empty");

	/* Equal lse: o is the mean and lse grows by log 2; huge lse values
	 * must not overflow. */
	float c[2] = { 2, 4 }, lc = 1e30f, dd[2] = { 4, 0 };

	attn_merge(2, c, &lc, dd, 1e30f);
	check(c[0] == 3.0f && c[1] == 2.0f && lc == 1e30f && isfinite(lc),
	      "merge: huge equal lse does not overflow");
}

static const unsigned dims[] = { 1, 7, 8, 40, 64, 96, 100, 128, 256 };
static const unsigned groups[] = { 1, 2, 3, 4, 7, 8 };
static const unsigned lengths[] = { 0, 1, 63, 64, 65, 1000 };
static const unsigned chunks[] = { 64, 37, 256, 1 };
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void check_blocks(void)
{
	for (unsigned t = 0; t < KV_DTYPE_COUNT; t++) {
		for (size_t di = 0; di < COUNT(dims); di++) {
			for (size_t gi = 0; gi < COUNT(groups); gi++) {
				unsigned d = dims[di], G = groups[gi];
				struct err worst[MAX_SETS] = { { 0 } };
				double smax = 0.0;

				for (size_t ni = 0; ni < COUNT(lengths); ni++) {
					unsigned n = lengths[ni];
					float *q = rand_q(G, d);
					void *k = rand_kv(t, (size_t)n * d);
					void *v = rand_kv(t, (size_t)n * d);
					struct ref r = reference(t, q, G, d, k, v, 0, n);

					if (r.smax > smax)
						smax = r.smax;
					for (int s = 0; s < MAX_SETS; s++) {
						if (!sets[s])
							continue;
						for (size_t ci = 0; ci < COUNT(chunks); ci++) {
							struct partial p = run_block(sets[s], t, q, G, d, k, v,
										     0, n, chunks[ci]);

							err_max(&worst[s], compare(&p, &r, G, d));
							partial_free(&p);
						}
					}
					ref_free(&r);
					free(q);
					free(k);
					free(v);
				}
				for (int s = 0; s < MAX_SETS; s++) {
					if (!sets[s])
						continue;
					check(err_ok(worst[s], t, smax),
					      "block %-6s %-4s d=%-3u G=%u: o %.1e (tol %.0e) lse %.1e%s",
					      set_names[s], dtype_name[t], d, G, worst[s].o,
					      tol_o(t, smax), worst[s].lse,
					      worst[s].bad ? " EMPTY/NaN MISMATCH" : "");
				}
			}
		}
	}
}

static void check_scores(void)
{
	static const unsigned sg[] = { 1, 3, 4, 8 };
	static const unsigned sn[] = { 1, 7, 64, 200, 256 };

	for (int s = 0; s < MAX_SETS; s++) {
		if (!sets[s])
			continue;
		for (unsigned t = 0; t < KV_DTYPE_COUNT; t++) {
			double worst = 0.0;

			for (size_t di = 0; di < COUNT(dims); di++)
				for (size_t gi = 0; gi < COUNT(sg); gi++)
					for (size_t ni = 0; ni < COUNT(sn); ni++) {
						unsigned d = dims[di], G = sg[gi], n = sn[ni];
						float *q = rand_q(G, d);
						void *k = rand_kv(t, (size_t)n * d);
						float *out = xmalloc((size_t)G * n * sizeof(float));

						sets[s]->score[t](q, G, d, k, n, out);
						for (unsigned g = 0; g < G; g++)
							for (unsigned j = 0; j < n; j++) {
								double dot = 0.0, mag = 0.0;

								for (unsigned i = 0; i < d; i++) {
									double x = (double)q[g * d + i] *
										   kv_load(t, k, (size_t)j * d + i);
									dot += x;
									mag += fabs(x);
								}
								/* Relative to the rounding scale of the sum. */
								double e = fabs(out[(size_t)g * n + j] - dot) /
									   fmax(mag, 1e-30);
								if (e > worst || isnan(e))
									worst = e;
							}
						free(q);
						free(k);
						free(out);
					}
			double tol = fmax(1e-5, score_eps(t));

			check(worst <= tol, "score %-6s %-4s: |err| / sum|q k| %.1e (tol %.1e)",
			      set_names[s], dtype_name[t], worst, tol);
		}
	}
}

/* Two partials over a split of the tokens merge into the partial of all. */
static void check_merge(void)
{
	const unsigned G = 4, d = 96, n = 300;

	for (int s = 0; s < MAX_SETS; s++) {
		if (!sets[s])
			continue;
		for (unsigned t = 0; t < KV_DTYPE_COUNT; t++) {
			float *q = rand_q(G, d);
			void *k = rand_kv(t, (size_t)n * d);
			void *v = rand_kv(t, (size_t)n * d);
			size_t cut = 1 + rng_next() % (n - 1);
			struct ref r = reference(t, q, G, d, k, v, 0, n);
			struct partial a = run_block(sets[s], t, q, G, d, k, v, 0, cut, 64);
			struct partial b = run_block(sets[s], t, q, G, d, k, v, cut, n, 64);
			struct partial ba = run_block(sets[s], t, q, G, d, k, v, cut, n, 64);
			struct partial a2 = run_block(sets[s], t, q, G, d, k, v, 0, cut, 64);
			struct partial all = run_block(sets[s], t, q, G, d, k, v, 0, n, 64);
			struct partial none = run_block(sets[s], t, q, G, d, k, v, 0, 0, 64);
			struct partial keep = run_block(sets[s], t, q, G, d, k, v, 0, n, 64);
			struct err e = { 0 };
			int exact = 1;
			double dev = 0.0;

			for (unsigned g = 0; g < G; g++) {
				size_t off = (size_t)g * d;

				attn_merge(d, a.o + off, &a.lse[g], b.o + off, b.lse[g]);
				attn_merge(d, ba.o + off, &ba.lse[g], a2.o + off, a2.lse[g]);
				/* An empty side on either end changes nothing. */
				attn_merge(d, keep.o + off, &keep.lse[g], none.o + off, none.lse[g]);
				attn_merge(d, none.o + off, &none.lse[g], all.o + off, all.lse[g]);
				exact &= keep.lse[g] == all.lse[g] && none.lse[g] == all.lse[g] &&
					 !memcmp(keep.o + off, all.o + off, d * sizeof(float)) &&
					 !memcmp(none.o + off, all.o + off, d * sizeof(float));
				for (unsigned i = 0; i < d; i++)
					dev = fmax(dev, fabs(a.o[off + i] - all.o[off + i]));
			}
			err_max(&e, compare(&a, &r, G, d));
			err_max(&e, compare(&ba, &r, G, d));
			check(err_ok(e, t, r.smax),
			      "merge %-6s %-4s: split at %zu of %u vs reference: o %.1e lse %.1e, vs one pass %.1e",
			      set_names[s], dtype_name[t], cut, n, e.o, e.lse, dev);
			check(exact, "merge %-6s %-4s: with an empty partial, both orders", set_names[s],
			      dtype_name[t]);
			partial_free(&a);
			partial_free(&b);
			partial_free(&ba);
			partial_free(&a2);
			partial_free(&all);
			partial_free(&none);
			partial_free(&keep);
			ref_free(&r);
			free(q);
			free(k);
			free(v);
		}
	}
}

/*
 * Scores far from zero: exp(q.k) would overflow fp32 without the running
 * max. Row 0 scores +target exactly along q; the others spread around it,
 * and later chunks raise the max, exercising the rescale.
 */
static void check_large(void)
{
	static const float targets[] = { 80.0f, -80.0f, 1000.0f };
	const unsigned G = 2, d = 64, n = 200;

	for (int s = 0; s < MAX_SETS; s++) {
		if (!sets[s])
			continue;
		for (unsigned t = 0; t < KV_DTYPE_COUNT; t++) {
			struct err e = { 0 };
			double smax = 0.0;

			for (size_t ti = 0; ti < COUNT(targets); ti++) {
				float *q = xmalloc((size_t)G * d * sizeof(float));
				void *k = xmalloc((size_t)n * d * kv_dtype_size(t));
				void *v = rand_kv(t, (size_t)n * d);

				/* k rows: a common direction u plus noise, scores
				 * increasing along the sequence. */
				for (unsigned j = 0; j < n; j++)
					for (unsigned i = 0; i < d; i++)
						store(t, k, (size_t)j * d + i,
						      (float)(1.0 + 0.3 * j / n + 0.05 * rng_normal()));
				for (unsigned g = 0; g < G; g++)
					for (unsigned i = 0; i < d; i++)
						q[g * d + i] = targets[ti] / d * (g ? 1.0f : 0.9f);

				struct ref r = reference(t, q, G, d, k, v, 0, n);

				if (r.smax > smax)
					smax = r.smax;
				for (size_t ci = 0; ci < COUNT(chunks); ci++) {
					struct partial p = run_block(sets[s], t, q, G, d, k, v, 0, n,
								     chunks[ci]);

					for (unsigned g = 0; g < G; g++)
						e.bad |= !isfinite(p.lse[g]);
					err_max(&e, compare(&p, &r, G, d));
					partial_free(&p);
				}
				ref_free(&r);
				free(q);
				free(k);
				free(v);
			}
			check(err_ok(e, t, smax),
			      "large  %-6s %-4s: scores up to +-1000: o %.1e (tol %.0e) lse %.1e%s",
			      set_names[s], dtype_name[t], e.o, tol_o(t, smax), e.lse,
			      e.bad ? " NOT FINITE" : "");
		}
	}
}

/* The largest shapes the kernels are written for, in one call and in chunks. */
static void check_limits(void)
{
	const unsigned G = ATTN_MAX_GROUP, d = ATTN_MAX_DIM, n = ATTN_MAX_BLOCK;

	for (unsigned t = 0; t < KV_DTYPE_COUNT; t++) {
		float *q = rand_q(G, d);
		void *k = rand_kv(t, (size_t)n * d);
		void *v = rand_kv(t, (size_t)n * d);
		struct ref r = reference(t, q, G, d, k, v, 0, n);

		for (int s = 0; s < MAX_SETS; s++) {
			if (!sets[s])
				continue;
			struct err e = { 0 };
			struct partial p1 = run_block(sets[s], t, q, G, d, k, v, 0, n, n);
			struct partial p2 = run_block(sets[s], t, q, G, d, k, v, 0, n, 61);

			err_max(&e, compare(&p1, &r, G, d));
			err_max(&e, compare(&p2, &r, G, d));
			check(err_ok(e, t, r.smax), "limits %-6s %-4s: G=%u d=%u n=%u: o %.1e lse %.1e",
			      set_names[s], dtype_name[t], G, d, n, e.o, e.lse);
			partial_free(&p1);
			partial_free(&p2);
		}
		ref_free(&r);
		free(q);
		free(k);
		free(v);
	}
}

static void *best_thread(void *arg)
{
	(void)arg;
	return (void *)attn_kernels_best();
}

/*
 * In a child, so that each run sees a fresh cached choice: with
 * MNEMO_KERNELS=@p env (NULL: unset), attn_kernels_best() from several
 * threads at once returns @p want everywhere.
 */
static int best_with_env(const char *env, const struct attn_kernels *want)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return 0;
	if (pid == 0) {
		pthread_t th[4];
		void *got[4];
		int ok = 1;

		if (env)
			setenv("MNEMO_KERNELS", env, 1);
		else
			unsetenv("MNEMO_KERNELS");
		for (int i = 0; i < 4; i++)
			if (pthread_create(&th[i], NULL, best_thread, NULL))
				_exit(2);
		for (int i = 0; i < 4; i++) {
			pthread_join(th[i], &got[i]);
			ok &= got[i] == want;
		}
		_exit(ok ? 0 : 1);
	}
	if (waitpid(pid, &status, 0) != pid)
		return 0;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void check_dispatch(void)
{
	const struct attn_kernels *autobest = NULL;

	for (int s = MAX_SETS - 1; s >= 0 && !autobest; s--)
		autobest = sets[s];
	check(attn_kernels_by_name(NULL) == NULL && attn_kernels_by_name("sse9") == NULL,
	      "dispatch: unknown names give NULL");
	check(best_with_env(NULL, autobest), "dispatch: best is %s without override",
	      autobest->name);
	for (int s = 0; s < MAX_SETS; s++)
		check(best_with_env(set_names[s], sets[s] ? sets[s] : autobest),
		      "dispatch: MNEMO_KERNELS=%s gives %s", set_names[s],
		      sets[s] ? set_names[s] : autobest->name);
	check(best_with_env("bogus", autobest), "dispatch: MNEMO_KERNELS=bogus is ignored");
}

int main(void)
{
	const char *seed_env = getenv("MNEMO_TEST_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0)
				 : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	int any = 0;

	/* Line-buffer so lines and child processes do not interleave. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("# seed %llu (MNEMO_TEST_SEED=%llu repeats this run)\n",
	       (unsigned long long)seed, (unsigned long long)seed);
	rng_state = seed;

	for (int s = 0; s < MAX_SETS; s++) {
		sets[s] = attn_kernels_by_name(set_names[s]);
		if (sets[s]) {
			any = 1;
			printf("# kernel set %s: testing\n", set_names[s]);
		} else {
			printf("skip %s: not built or not supported by this CPU\n", set_names[s]);
			n_skip++;
		}
	}
	if (!any) {
		printf("0 passed, 0 failed, %u skipped\n", n_skip);
		return 77;
	}

	check_conversions();
	check_state();
	check_dispatch();
	check_scores();
	check_blocks();
	check_merge();
	check_large();
	check_limits();

	printf("%u passed, %u failed, %u skipped\n", n_pass, n_fail, n_skip);
	return n_fail ? 1 : 0;
}
