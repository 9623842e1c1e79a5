/*
 * ATTEND's request path over the block store, against a double-precision
 * softmax computed here from the same stored values: every KV head and its
 * GQA group, token sub-ranges that start and end inside blocks, the split
 * across a real worker pool (several chunks per head, merged), an empty
 * range, and the merge contract: attention over [a, b) merged with [b, c)
 * equals attention over [a, c).
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "../check.h"
#include "attend.h"
#include "kernels.h"
#include "pool.h"
#include "store.h"
#include "tier.h"

static uint64_t seed;

struct fixture {
	struct tier *host;
	struct store *st;
	struct kv_ctx *c;
	struct kv_geometry g;
	uint64_t n;
	float *kf, *vf;           /* [H][n][d] the stored values, as fp32 */
};

static void make(struct fixture *f, uint32_t H, uint32_t G, uint32_t d, uint32_t dtype, uint64_t n, uint32_t B)
{
	memset(f, 0, sizeof(*f));
	struct tier_config tc = { .budget_bytes = 8ull << 30 };
	tier_host_ops.open(&tc, &f->host);
	struct store_config sc = { .block_tokens = B, .host_ops = &tier_host_ops, .host = f->host };
	const char *why;
	store_open(&sc, &f->st, &why);
	f->g = (struct kv_geometry){ .n_layers = 2, .n_kv_heads = H, .n_q_heads = H * G, .head_dim = d,
				     .dtype = dtype, .elem_size = (uint32_t)kv_dtype_size(dtype) };
	f->n = n;
	store_ctx_create(f->st, "t", 1, &f->g, 0, &f->c);
	f->kf = malloc(sizeof(float) * H * n * d + 4);
	f->vf = malloc(sizeof(float) * H * n * d + 4);
	/* append both layers in chunks; layer 1 gets the interesting data */
	const size_t es = f->g.elem_size;
	uint64_t t = 0;
	while (t < n) {
		uint32_t chunk = (uint32_t)(n - t < 1000 ? n - t : 1000);
		size_t per = (size_t)H * chunk * d;
		uint8_t *buf = malloc(2 * 2 * per * es);
		for (uint32_t l = 0; l < 2; l++)
			for (uint32_t kv = 0; kv < 2; kv++)
				for (uint32_t h = 0; h < H; h++)
					for (uint32_t i = 0; i < chunk; i++)
						for (uint32_t j = 0; j < d; j++) {
							/* keys with a shared offset and scale, like real models */
							float x = kv == 0 ? 2.0f * check_uniform(&seed) + 0.5f
									  : check_uniform(&seed);
							size_t at = (((size_t)l * 2 + kv) * H + h) * chunk * d + (size_t)i * d + j;
							uint8_t *dst = buf + at * es;
							if (dtype == KV_F32) {
								memcpy(dst, &x, 4);
							} else {
								uint16_t hb = dtype == KV_BF16 ? kv_f32_to_bf16(x) : kv_f32_to_f16(x);
								memcpy(dst, &hb, 2);
								x = dtype == KV_BF16 ? kv_bf16_to_f32(hb) : kv_f16_to_f32(hb);
							}
							if (l == 1)
								(kv ? f->vf : f->kf)[((size_t)h * n + t + i) * d + j] = x;
						}
		uint64_t lt, ct;
		int rc = kv_ctx_append(f->c, 0, 2, t, chunk, buf, 2 * 2 * per * es, &lt, &ct, &why);
		if (rc) {
			fprintf(stderr, "append: %s\n", why);
			abort();
		}
		free(buf);
		t += chunk;
	}
}

static void destroy(struct fixture *f)
{
	kv_ctx_put(f->c);
	store_destroy(f->st);
	tier_host_ops.close(f->host);
	free(f->kf);
	free(f->vf);
}

/* Reference partial of one query over [a, b) of head h, in double. */
static void reference(const struct fixture *f, uint32_t h, const float *q, uint64_t a, uint64_t b,
		      double *o, double *lse)
{
	const uint32_t d = f->g.head_dim;
	double mx = -INFINITY;
	double *s = malloc(sizeof(double) * (b - a + 1));
	for (uint64_t t = a; t < b; t++) {
		double acc = 0;
		for (uint32_t j = 0; j < d; j++)
			acc += (double)q[j] * f->kf[((size_t)h * f->n + t) * d + j];
		s[t - a] = acc / sqrt((double)d);
		if (s[t - a] > mx)
			mx = s[t - a];
	}
	double sum = 0;
	for (uint32_t j = 0; j < d; j++)
		o[j] = 0;
	for (uint64_t t = a; t < b; t++) {
		double p = exp(s[t - a] - mx);
		sum += p;
		for (uint32_t j = 0; j < d; j++)
			o[j] += p * f->vf[((size_t)h * f->n + t) * d + j];
	}
	for (uint32_t j = 0; j < d; j++)
		o[j] = b > a ? o[j] / sum : 0;
	*lse = b > a ? mx + log(sum) : -INFINITY;
	free(s);
}

static void check_range(const struct fixture *f, const struct attend_exec *ex, uint64_t a, uint64_t b,
			double tol, const char *what)
{
	const struct kv_geometry *g = &f->g;
	const uint32_t d = g->head_dim, G = g->n_q_heads / g->n_kv_heads;
	size_t nq = (size_t)g->n_q_heads * d;
	float *q = malloc(nq * 4), *o = malloc(nq * 4), *lse = malloc(g->n_q_heads * 4);
	for (size_t i = 0; i < nq; i++)
		q[i] = 1.5f * check_uniform(&seed);
	struct attend_request req = { .layer = 1, .token_begin = a, .token_end = b, .q = q };
	struct attend_result res = { .o = o, .lse = lse };
	int rc = attend_exact(f->c, &req, &res, ex);
	CHECK(rc == 0, "%s: attend_exact [%llu,%llu): %d", what, (unsigned long long)a, (unsigned long long)b, rc);
	uint64_t end = b == UINT64_MAX ? f->n : b;
	CHECK(res.scanned == (end - a) * g->n_kv_heads, "%s: scanned %llu", what, (unsigned long long)res.scanned);
	double *ro = malloc(sizeof(double) * d);
	double worst = 0, worst_lse = 0;
	for (uint32_t hq = 0; hq < g->n_q_heads; hq++) {
		double rl;
		reference(f, hq / G, q + (size_t)hq * d, a, end, ro, &rl);
		double num = 0, den = 0;
		for (uint32_t j = 0; j < d; j++) {
			num += (o[(size_t)hq * d + j] - ro[j]) * (o[(size_t)hq * d + j] - ro[j]);
			den += ro[j] * ro[j];
		}
		double rel = sqrt(num) / (sqrt(den) + 1e-6);
		if (rel > worst)
			worst = rel;
		if (isinf(rl)) {
			CHECK(isinf(lse[hq]) && lse[hq] < 0, "%s: empty range lse %g", what, lse[hq]);
		} else if (fabs(lse[hq] - rl) > worst_lse) {
			worst_lse = fabs(lse[hq] - rl);
		}
	}
	CHECK(worst <= tol, "%s [%llu,%llu): o relative error %.3g > %.3g", what,
	      (unsigned long long)a, (unsigned long long)end, worst, tol);
	CHECK(worst_lse <= 1e-4, "%s: lse error %.3g", what, worst_lse);
	free(q);
	free(o);
	free(lse);
	free(ro);
}

static void check_merge(const struct fixture *f, const struct attend_exec *ex)
{
	const struct kv_geometry *g = &f->g;
	const uint32_t d = g->head_dim;
	size_t nq = (size_t)g->n_q_heads * d;
	float *q = malloc(nq * 4), *o1 = malloc(nq * 4), *o2 = malloc(nq * 4), *o = malloc(nq * 4);
	float *l1 = malloc(g->n_q_heads * 4), *l2 = malloc(g->n_q_heads * 4), *l = malloc(g->n_q_heads * 4);
	for (size_t i = 0; i < nq; i++)
		q[i] = check_uniform(&seed);
	uint64_t cut = f->n / 3 + 5;
	struct attend_request r1 = { .layer = 1, .token_begin = 0, .token_end = cut, .q = q };
	struct attend_request r2 = { .layer = 1, .token_begin = cut, .token_end = f->n, .q = q };
	struct attend_request r = { .layer = 1, .token_begin = 0, .token_end = UINT64_MAX, .q = q };
	struct attend_result a1 = { .o = o1, .lse = l1 }, a2 = { .o = o2, .lse = l2 }, a = { .o = o, .lse = l };
	CHECK(attend_exact(f->c, &r1, &a1, ex) == 0 && attend_exact(f->c, &r2, &a2, ex) == 0 &&
	      attend_exact(f->c, &r, &a, ex) == 0, "merge: attends");
	double worst = 0;
	for (uint32_t h = 0; h < g->n_q_heads; h++) {
		attn_merge(d, o1 + (size_t)h * d, &l1[h], o2 + (size_t)h * d, l2[h]);
		for (uint32_t j = 0; j < d; j++) {
			double e = fabs(o1[(size_t)h * d + j] - o[(size_t)h * d + j]);
			if (e > worst)
				worst = e;
		}
		CHECK(fabs(l1[h] - l[h]) < 1e-4, "merged lse %g vs %g", l1[h], l[h]);
	}
	CHECK(worst < 1e-5, "merged o differs by %g", worst);
	free(q); free(o1); free(o2); free(o); free(l1); free(l2); free(l);
}

int main(void)
{
	seed = check_seed();
	struct pool *pool;
	if (pool_start(3, &pool))
		return 1;
	struct attend_exec par = { .parallel = pool_parallel, .pool = pool, .workers = 3 };
	printf("kernels: %s\n", attn_kernels_best()->name);

	struct {
		uint32_t H, G, d, dtype, B;
		uint64_t n;
		double tol;
	} cases[] = {
		{ 2, 4, 128, KV_BF16, 64, 40000, 2e-3 },
		{ 1, 1, 64, KV_F32, 64, 20000, 1e-5 },
		{ 3, 2, 96, KV_F16, 16, 5000, 2e-3 },
		{ 2, 8, 7, KV_F32, 5, 777, 1e-5 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fixture f;
		make(&f, cases[i].H, cases[i].G, cases[i].d, cases[i].dtype, cases[i].n, cases[i].B);
		char what[64];
		snprintf(what, sizeof(what), "H%u G%u d%u dtype%u B%u", cases[i].H, cases[i].G, cases[i].d,
			 cases[i].dtype, cases[i].B);
		check_range(&f, &attend_exec_serial, 0, UINT64_MAX, cases[i].tol, what);
		check_range(&f, &par, 0, UINT64_MAX, cases[i].tol, what);
		check_range(&f, &par, 3, f.n - 2, cases[i].tol, what);
		check_range(&f, &attend_exec_serial, 1, 2, cases[i].tol, what);
		check_range(&f, &par, f.n / 2, f.n / 2 + 1000 < f.n ? f.n / 2 + 1000 : f.n, cases[i].tol, what);
		check_range(&f, &par, 5, 5, cases[i].tol, what);
		check_merge(&f, &par);

		/* refusals */
		float *q = calloc((size_t)f.g.n_q_heads * f.g.head_dim, 4);
		float *o = malloc((size_t)f.g.n_q_heads * f.g.head_dim * 4), *l = malloc(f.g.n_q_heads * 4);
		struct attend_result res = { .o = o, .lse = l };
		struct attend_request bad = { .layer = 1, .token_begin = 0, .token_end = f.n + 1, .q = q };
		CHECK(attend_exact(f.c, &bad, &res, &par) == -ERANGE, "range past the end");
		bad.token_begin = 10;
		bad.token_end = 5;
		CHECK(attend_exact(f.c, &bad, &res, &par) == -ERANGE, "inverted range");
		bad.layer = 2;
		bad.token_begin = 0;
		bad.token_end = 1;
		CHECK(attend_exact(f.c, &bad, &res, &par) == -EINVAL, "bad layer");
		free(q); free(o); free(l);
		destroy(&f);
	}
	pool_stop(pool);
	return check_exit();
}
