/*
 * Retrieval policies (index/policy.h) on fresh random data with structure:
 * keys lie around a few cluster directions (each with sub-directions) in
 * runs of consecutive tokens, and every query head looks towards one of
 * the clusters. For every policy and both selection modes:
 *   - a budget of every token returns every token (attention is exact);
 *   - results are sorted, unique, within the budget (and fill it where the
 *     policy promises to);
 *   - the attention mass of the result, against the best set of the same
 *     size, stays above a floor measured on this (fixed) data;
 *   - save -> load gives identical searches;
 *   - truncated, foreign and garbage blobs are refused, bit-flipped ones
 *     are refused or, when they still decode, searched without harm.
 *   - two threads searching one index at once get what one thread gets.
 * And Quest's page bound is >= every key's score in its page (many small
 * random cases); an estimate's count, centroid and value sum agree (built
 * with values = keys, a cluster's value sum is n_j times its centroid);
 * and centroids2 scans far fewer centroids than centroids at a comparable
 * attention mass. (ann's graph has its own tests in test_ann.c.)
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"
#include "index.h"
#include "ix.h"
#include "policy.h"

enum {
	N = 9000,         /* not a multiple of pages, blocks or chunks */
	D = 64,
	G = 4,
	C = 24,           /* cluster directions */
	SUB = 8,          /* sub-directions per cluster */
	NQ = 12,          /* decode queries */
	P = 64,           /* prefill queries */
	EST_CAP = 64,
	FLIPS = 120,
	CUTS = 60,
};

static uint64_t seed;

/* The seed of the keys and queries every floor below was measured on. */
#define DATA_SEED 0x6d6e656d6f2d3034ull
static float keys[N * D], vals[N * D], dirs[C * D], subs[C * SUB * D];
static float qd[NQ * G * D], qp[P * G * D];
static uint64_t toks[N], toks2[N];
static float est_key[EST_CAP * D], est_cnt[EST_CAP], est_vsum[EST_CAP * D];
static float est_key2[EST_CAP * D], est_cnt2[EST_CAP], est_vsum2[EST_CAP * D];

static float gauss(void)
{
	double u = (check_uniform(&seed) + 1) / 2, v = (check_uniform(&seed) + 1) / 2;
	return (float)(sqrt(-2 * log(u + 1e-12)) * cos(2 * M_PI * v));
}

static void unit(float *x, unsigned d)
{
	double s = 0;
	for (unsigned i = 0; i < d; i++) {
		x[i] = gauss();
		s += (double)x[i] * x[i];
	}
	for (unsigned i = 0; i < d; i++)
		x[i] /= (float)sqrt(s);
}

/* A query row (pre-scaled, as search() takes it) towards cluster c. */
static void query(float *q, unsigned c)
{
	unsigned s = (unsigned)(check_rand(&seed) % SUB);
	for (unsigned i = 0; i < D; i++)
		q[i] = 2.0f * dirs[c * D + i] + 1.5f * subs[(c * SUB + s) * D + i] + 0.1f * gauss();
}

static void make_data(void)
{
	for (unsigned c = 0; c < C; c++) {
		unit(dirs + c * D, D);
		for (unsigned s = 0; s < SUB; s++)
			unit(subs + (c * SUB + s) * D, D);
	}
	for (unsigned t = 0; t < N;) {
		unsigned c = (unsigned)(check_rand(&seed) % C);
		unsigned len = 16 + (unsigned)(check_rand(&seed) % 240);
		for (unsigned e = 0; e < len && t < N; e++, t++) {
			unsigned s = (unsigned)(check_rand(&seed) % SUB);
			for (unsigned i = 0; i < D; i++) {
				keys[t * D + i] = 3.0f * dirs[c * D + i] + 1.0f * subs[(c * SUB + s) * D + i] +
						  0.15f * gauss();
				vals[t * D + i] = gauss();
			}
		}
	}
	/* each query: two clusters, every head looks at one of them */
	for (unsigned t = 0; t < NQ + P; t++) {
		unsigned c0 = (unsigned)(check_rand(&seed) % C), c1 = (unsigned)(check_rand(&seed) % C);
		float *row = t < NQ ? qd + t * G * D : qp + (t - NQ) * G * D;
		for (unsigned g = 0; g < G; g++)
			query(row + g * D, g & 1 ? c1 : c0);
	}
}

static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* The group's attention mass on tokens[0..m) over the mass of the best m tokens. */
static double mass_ratio(const float *q, const uint64_t *tokens, uint64_t m)
{
	static double p[G][N], sum[N];
	for (unsigned g = 0; g < G; g++) {
		double mx = -INFINITY, z = 0;
		for (unsigned t = 0; t < N; t++) {
			double s = 0;
			for (unsigned i = 0; i < D; i++)
				s += (double)q[g * D + i] * keys[t * D + i];
			p[g][t] = s;
			mx = fmax(mx, s);
		}
		for (unsigned t = 0; t < N; t++)
			z += (p[g][t] = exp(p[g][t] - mx));
		for (unsigned t = 0; t < N; t++)
			p[g][t] /= z;
	}
	double got = 0;
	for (unsigned t = 0; t < N; t++) {
		sum[t] = 0;
		for (unsigned g = 0; g < G; g++)
			sum[t] += p[g][t];
	}
	for (uint64_t i = 0; i < m; i++)
		got += sum[tokens[i]];
	qsort(sum, N, sizeof(double), cmp_desc);
	double best = 0;
	for (uint64_t i = 0; i < m; i++)
		best += sum[i];
	return best > 0 ? got / best : 1;
}

static int valid(const struct index_result *r, uint64_t budget)
{
	if (r->n_tokens > budget || r->n_est > r->est_cap)
		return 0;
	for (uint64_t i = 0; i < r->n_tokens; i++)
		if (r->tokens[i] >= N || (i && r->tokens[i] <= r->tokens[i - 1]))
			return 0;
	return 1;
}

static struct index_result result(uint64_t *tokens, int second)
{
	return (struct index_result){
		.tokens = tokens,
		.est_cap = EST_CAP,
		.est_key = second ? est_key2 : est_key,
		.est_count = second ? est_cnt2 : est_cnt,
		.est_vsum = second ? est_vsum2 : est_vsum,
	};
}

struct config {
	const char *policy;
	const char *label;
	int prefill, values;
	enum index_select select;
	unsigned chunk;
	int fills;            /* budget mode: n_tokens == budget */
	double floor;         /* mean mass ratio at 5 % */
	float rerank;         /* quest: index_build_params.rerank */
};

/*
 * Floors: the mean, over NQ queries, of the group's attention mass on the
 * result over the mass of the best set of the same size, at a budget of
 * 5 % (450 tokens), on the fixed data of DATA_SEED with build seed 1.
 * Measured: quest 0.887 (0.888 with bf16 bounds), quest rerank 4 0.996, blocks medoids 0.769, blocks received 0.618,
 * centroids 0.981, centroids threshold 0.981, centroids2 0.966,
 * centroids2 threshold 0.913, faiss-ivf 0.914, faiss-hnsw 0.908, ann 0.946. Each floor
 * sits 0.03 under, room for another CPU's BLAS rounding, not for a
 * regression. (Over random seeds the spread is wide: quest 0.69 to 0.88,
 * which is why the data is fixed. Blocks are coarse: 5 % is three and a
 * half blocks here.)
 */
static const struct config configs[] = {
	{ "quest", "quest", 0, 0, INDEX_SELECT_BUDGET, 0, 1, 0.85, 0 },
	{ "quest", "quest rerank 4", 0, 0, INDEX_SELECT_BUDGET, 0, 1, 0.96, 4 },
	{ "blocks", "blocks medoids", 0, 0, INDEX_SELECT_BUDGET, 0, 1, 0.73, 0 },
	{ "blocks", "blocks received", 1, 0, INDEX_SELECT_BUDGET, 0, 1, 0.58, 0 },
	{ "centroids", "centroids", 0, 1, INDEX_SELECT_BUDGET, 2048, 1, 0.95, 0 },
	{ "centroids", "centroids threshold", 1, 1, INDEX_SELECT_THRESHOLD, 0, 0, 0.95, 0 },
	{ "centroids2", "centroids2", 0, 1, INDEX_SELECT_BUDGET, 0, 1, 0.93, 0 },
	{ "centroids2", "centroids2 threshold", 1, 0, INDEX_SELECT_THRESHOLD, 2048, 0, 0.88, 0 },
	{ "faiss-ivf", "faiss-ivf", 0, 0, INDEX_SELECT_BUDGET, 0, 0, 0.88, 0 },
	{ "faiss-hnsw", "faiss-hnsw", 0, 0, INDEX_SELECT_BUDGET, 0, 0, 0.87, 0 },
	{ "ann", "ann", 1, 0, INDEX_SELECT_BUDGET, 0, 0, 0.91, 0 },
	{ "episodic", "episodic medoids", 0, 0, INDEX_SELECT_BUDGET, 0, 1, 0.84, 0 },
	{ "episodic", "episodic received", 1, 0, INDEX_SELECT_BUDGET, 0, 1, 0.88, 0 },
};

static int fetch_rows(void *ctx, const uint32_t *ids, size_t cnt, float *out)
{
	int *fail = ctx;
	if (*fail)
		return -EIO;
	for (size_t i = 0; i < cnt; i++)
		memcpy(out + i * D, keys + (size_t)ids[i] * D, D * sizeof(float));
	return 0;
}

/* sparse_keys policies: keys fetched on demand give what the fp32 array gives; fetch's error comes back */
static void sparse(const char *label, const struct policy_ops *po, const struct index *ix)
{
	static const uint64_t budgets[] = { 0, 1, 5, 17, 100, 450, 2000, N - 1 };
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	int fail = 0;
	const struct index_keys kf = { .n = N, .d = D, .fetch = fetch_rows, .fetch_ctx = &fail };
	int same = 1;
	for (unsigned t = 0; t < NQ; t++)
		for (unsigned b = 0; b < 8; b++) {
			struct index_result a = result(toks, 0), c = result(toks2, 1);
			int r1 = po->search(ix, &k, qd + t * G * D, G, budgets[b], &a);
			int r2 = po->search(ix, &kf, qd + t * G * D, G, budgets[b], &c);
			same &= r1 == 0 && r2 == 0 && a.n_tokens == c.n_tokens && a.scanned == c.scanned &&
				!memcmp(toks, toks2, a.n_tokens * sizeof(uint64_t));
		}
	CHECK(same, "%s: keys fetched on demand search differently", label);
	fail = 1;
	int errs = 0, tails = 0;
	for (unsigned b = 0; b < 8; b++) {
		struct index_result c = result(toks2, 1);
		int rc = po->search(ix, &kf, qd, G, budgets[b], &c);
		errs += rc == -EIO;
		tails += rc == 0 || rc == -EIO;
	}
	CHECK(errs > 0 && tails == 8, "%s: a failing fetch is not reported (%d of 8)", label, errs);
	const struct index_keys none = { .n = N, .d = D };
	struct index_result c = result(toks2, 1);
	CHECK(po->search(ix, &none, qd, G, budgets[4], &c) == -EINVAL, "%s: keys with neither rows nor fetch", label);
}

struct racer {
	const struct policy_ops *po;
	const struct index *ix;
	uint64_t tokens[NQ][N / 20];
	uint64_t n[NQ];
	int rc;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	for (unsigned rep = 0; rep < 3; rep++)
		for (unsigned t = 0; t < NQ; t++) {
			struct index_result res = { .tokens = r->tokens[t] };
			r->rc |= r->po->search(r->ix, &k, qd + t * G * D, G, N / 20, &res);
			r->n[t] = res.n_tokens;
		}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * With rows attached, runs name exactly the tokens of the result: the value
 * rows carry their token id in column 0, so reading the runs' rows back
 * gives the token set, which must equal res.tokens; runs are sorted,
 * disjoint and merged; and a search without fp32 keys picks the same.
 */
static void runs_match_tokens(const char *label, const struct policy_ops *po, struct index *ix,
			      const struct index_keys *k)
{
	static float idv[N * D];
	static uint32_t runs[2 * (N + 1)];
	static uint64_t seen[N];
	for (uint64_t t = 0; t < N; t++)
		for (unsigned j = 0; j < D; j++)
			idv[t * D + j] = j ? 0.0f : (float)t;
	const struct index_rows src = { .k = (const uint8_t *)keys, .v = (const uint8_t *)idv,
					.stride = D * sizeof(float), .dtype = 0 };
	CHECK(po->rows(ix) == NULL, "%s: rows before attach", label);
	int rc = po->attach_rows(ix, &src);
	const struct index_rows *own = po->rows(ix);
	CHECK(rc == 0 && own && own->dtype == 0 && own->stride == D * sizeof(float), "%s: attach %d", label, rc);
	if (rc || !own)
		return;
	static const uint64_t budgets[] = { 1, 17, 450, 2000, N / 20, N - 1, N };
	int ok = 1;
	for (unsigned b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++)
		for (unsigned t = 0; t < 3; t++) {
			struct index_result r = result(toks, 0);
			r.runs = runs;
			r.runs_cap = N + 1;
			rc = po->search(ix, k, qd + t * G * D, G, budgets[b], &r);
			uint64_t n = 0;
			for (uint64_t i = 0; rc == 0 && i < r.n_runs; i++) {
				uint64_t f = runs[2 * i], c = runs[2 * i + 1];
				ok &= c > 0 && f + c <= N;
				if (i)
					ok &= f > (uint64_t)runs[2 * i - 2] + runs[2 * i - 1];
				for (uint64_t x = f; ok && x < f + c && n < N; x++) {
					float id;
					memcpy(&id, own->v + x * own->stride, sizeof(id));
					seen[n++] = (uint64_t)id;
				}
			}
			qsort(seen, n, sizeof(uint64_t), cmp_u64);
			ok &= rc == 0 && n == r.n_tokens && !memcmp(seen, toks, n * sizeof(uint64_t));
			/* the same search from the rows alone */
			struct index_result r2 = result(toks2, 1);
			ok &= po->search(ix, NULL, qd + t * G * D, G, budgets[b], &r2) == 0 &&
			      r2.n_tokens == r.n_tokens && !memcmp(toks, toks2, r.n_tokens * sizeof(uint64_t));
		}
	CHECK(ok, "%s: runs do not name the result's tokens", label);
}

/*
 * Rows kept by the caller in the index's row order (as retrieval keeps them
 * on the SSD tier): the search takes its keys through fetch_ordered alone
 * and picks what it picks from the fp32 keys, with the same runs; the runs'
 * positions are, through row_order, exactly the result's tokens; a failed
 * fetch is the search's error.
 */
struct ordered_rows {
	const float *k;           /* [N][D] in row order */
	unsigned calls;
	int fail;
};

static int fetch_ordered_rows(void *arg, uint64_t first, uint32_t cnt, float *out)
{
	struct ordered_rows *o = arg;
	o->calls++;
	if (o->fail)
		return -EIO;
	if (first + cnt > N)
		return -ERANGE;
	memcpy(out, o->k + first * D, (size_t)cnt * D * sizeof(float));
	return 0;
}

static void ordered_fetch(const char *label, const struct policy_ops *po, struct index *ix,
			  const struct index_keys *k)
{
	static float ok_rows[N * D];
	static uint32_t runs[2 * (N + 1)], runs2[2 * (N + 1)];
	static uint64_t seen[N];
	const uint32_t *order = po->row_order(ix);
	CHECK(order != NULL, "%s: no row order", label);
	if (!order)
		return;
	for (uint64_t i = 0; i < N; i++)
		memcpy(ok_rows + i * D, keys + (size_t)order[i] * D, D * sizeof(float));
	struct ordered_rows o = { .k = ok_rows };
	const struct index_keys kf = { .n = N, .d = D, .fetch_ordered = fetch_ordered_rows, .fetch_ctx = &o };
	static const uint64_t budgets[] = { 1, 17, 450, 2000, N / 20, N };
	int ok = 1;
	for (unsigned b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++)
		for (unsigned t = 0; t < 3; t++) {
			struct index_result r = result(toks, 0), r2 = result(toks2, 0);
			r.runs = runs;
			r.runs_cap = N + 1;
			r2.runs = runs2;
			r2.runs_cap = N + 1;
			int rc = po->search(ix, k, qd + t * G * D, G, budgets[b], &r);
			int rc2 = po->search(ix, &kf, qd + t * G * D, G, budgets[b], &r2);
			ok &= rc == 0 && rc2 == 0 && r.n_tokens == r2.n_tokens && r.scanned == r2.scanned &&
			      !memcmp(toks, toks2, r.n_tokens * sizeof(uint64_t)) && r.n_runs == r2.n_runs &&
			      r.n_runs > 0 && !memcmp(runs, runs2, r.n_runs * 2 * sizeof(uint32_t));
			uint64_t n = 0;
			for (uint64_t i = 0; i < r2.n_runs; i++)
				for (uint64_t x = runs2[2 * i]; x < (uint64_t)runs2[2 * i] + runs2[2 * i + 1] && n < N; x++)
					seen[n++] = order[x];
			qsort(seen, n, sizeof(uint64_t), cmp_u64);
			ok &= n == r2.n_tokens && !memcmp(seen, toks2, n * sizeof(uint64_t));
		}
	CHECK(ok, "%s: a search through fetch_ordered differs from one over the fp32 keys", label);
	CHECK(o.calls > 0, "%s: no budget tail filled through fetch_ordered", label);
	o.fail = 1;
	struct index_result r = result(toks, 0);
	r.runs = runs;
	r.runs_cap = N + 1;
	int rc = po->search(ix, &kf, qd, G, 17, &r);
	CHECK(rc == -EIO, "%s: a failed fetch gave %d", label, rc);
}

/* Two threads at once against one thread alone. */
static void concurrent(const char *label, const struct policy_ops *po, const struct index *ix)
{
	static struct racer one, two[2];
	one = (struct racer){ .po = po, .ix = ix };
	race(&one);
	pthread_t th[2];
	int started = 0;
	for (unsigned i = 0; i < 2; i++) {
		two[i] = (struct racer){ .po = po, .ix = ix };
		started += pthread_create(&th[i], NULL, race, &two[i]) == 0;
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	int same = started == 2 && !one.rc;
	for (unsigned i = 0; i < 2 && same; i++)
		same = !two[i].rc && !memcmp(two[i].n, one.n, sizeof(one.n)) &&
		       !memcmp(two[i].tokens, one.tokens, sizeof(one.tokens));
	CHECK(same, "%s: concurrent searches differ", label);
}

static void run(const struct config *cf)
{
	const struct index_ops *io = index_ops_by_name(cf->policy);
	const struct policy_ops *po = io ? policy_ops_get(io->policy) : NULL;
	CHECK(po && io->ops == po && !strcmp(po->name, cf->policy), "%s: no ops", cf->label);
	if (!po)
		return;
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	const struct index_build_params bp = {
		.seed = 1,
		/* one thread: FAISS's parallel HNSW inserts and k-means reductions
		 * vary with scheduling, and the floors below must hold every run */
		.threads = 1,
		.prefill_q = cf->prefill ? qp : NULL,
		.n_prefill = cf->prefill ? P : 0,
		.group = G,
		.v = cf->values ? vals : NULL,
		.select = cf->select,
		.chunk_tokens = cf->chunk,
		.rerank = cf->rerank,
	};
	struct index *ix = NULL, *ix2 = NULL;
	int rc = po->build(&k, &bp, &ix);
	CHECK(rc == 0, "%s: build %d %s", cf->label, rc, index_faiss_last_error());
	if (rc)
		return;
	CHECK(po->memory(ix) > 0, "%s: memory", cf->label);

	/* every token */
	struct index_result r = result(toks, 0);
	rc = po->search(ix, &k, qd, G, N, &r);
	int all = rc == 0 && r.n_tokens == N;
	for (uint64_t i = 0; all && i < N; i++)
		all = toks[i] == i;
	CHECK(all, "%s: budget N gave %llu tokens (rc %d)", cf->label, (unsigned long long)r.n_tokens, rc);

	/* shape of the results */
	static const uint64_t budgets[] = { 0, 1, 5, 17, 100, 450, 2000, N - 1 };
	for (unsigned b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++)
		for (unsigned t = 0; t < 3; t++) {
			r = result(toks, 0);
			rc = po->search(ix, &k, qd + t * G * D, G, budgets[b], &r);
			CHECK(rc == 0 && valid(&r, budgets[b]), "%s: budget %llu: rc %d, %llu tokens", cf->label,
			      (unsigned long long)budgets[b], rc, (unsigned long long)r.n_tokens);
			if (cf->fills)
				CHECK(r.n_tokens == budgets[b], "%s: budget %llu filled %llu", cf->label,
				      (unsigned long long)budgets[b], (unsigned long long)r.n_tokens);
		}

	/* fidelity at 5 % */
	const uint64_t B = N / 20;
	double ratio = 0;
	uint64_t scanned = 0;
	for (unsigned t = 0; t < NQ; t++) {
		r = result(toks, 0);
		rc = po->search(ix, &k, qd + t * G * D, G, B, &r);
		ratio += rc == 0 && r.n_tokens ? mass_ratio(qd + t * G * D, toks, r.n_tokens) : 0;
		scanned += r.scanned;
		if (cf->values && r.n_est) {
			double cnt = 0;
			int ok = 1;
			for (unsigned e = 0; e < r.n_est; e++) {
				cnt += est_cnt[e];
				ok &= est_cnt[e] >= 1 && isfinite(est_key[e * D]) && isfinite(est_vsum[e * D]);
			}
			CHECK(ok && cnt <= 0.232 * N + 1, "%s: estimates %u, %g tokens", cf->label, r.n_est, cnt);
		}
	}
	ratio /= NQ;
	printf("%-22s mass/best at 5%%: %.3f   scanned %.1f%%   memory %zu B\n", cf->label, ratio,
	       100.0 * scanned / NQ / N, po->memory(ix));
	CHECK(ratio >= cf->floor, "%s: mass ratio %.3f under %.2f", cf->label, ratio, cf->floor);
	if (cf->values) {
		r = result(toks, 0);
		rc = po->search(ix, &k, qd, G, B, &r);
		CHECK(rc == 0 && r.n_est > 0, "%s: no estimates", cf->label);
	}

	if (po->row_order)
		ordered_fetch(cf->label, po, ix, &k);
	if (po->attach_rows)
		runs_match_tokens(cf->label, po, ix, &k);
	concurrent(cf->label, po, ix);
	if (po->sparse_keys)
		sparse(cf->label, po, ix);

	/* save -> load -> the same searches */
	uint8_t *blob = NULL;
	size_t len = 0;
	rc = po->save(ix, &blob, &len);
	CHECK(rc == 0 && blob && len > 16, "%s: save %d", cf->label, rc);
	if (rc)
		goto out;
	rc = po->load(blob, len, &k, &ix2);
	CHECK(rc == 0, "%s: load %d", cf->label, rc);
	if (rc)
		goto out;
	/* rows are not saved: the loaded index is the built one less its rows */
	const struct index_rows *own = po->rows ? po->rows(ix) : NULL;
	CHECK(po->memory(ix2) + (own ? 2 * (size_t)N * own->stride : 0) == po->memory(ix), "%s: memory after load",
	      cf->label);
	for (unsigned t = 0; t < NQ; t++)
		for (unsigned b = 4; b < 7; b++) {
			struct index_result a = result(toks, 0), c = result(toks2, 1);
			int r1 = po->search(ix, &k, qd + t * G * D, G, budgets[b], &a);
			int r2 = po->search(ix2, &k, qd + t * G * D, G, budgets[b], &c);
			int same = r1 == 0 && r2 == 0 && a.n_tokens == c.n_tokens && a.scanned == c.scanned &&
				   a.n_est == c.n_est && !memcmp(toks, toks2, a.n_tokens * sizeof(uint64_t)) &&
				   !memcmp(est_key, est_key2, a.n_est * D * sizeof(float)) &&
				   !memcmp(est_cnt, est_cnt2, a.n_est * sizeof(float)) &&
				   !memcmp(est_vsum, est_vsum2, a.n_est * D * sizeof(float));
			CHECK(same, "%s: loaded index searches differently (query %u, budget %llu)", cf->label, t,
			      (unsigned long long)budgets[b]);
		}
	po->free(ix2);
	ix2 = NULL;

	/* hostile blobs */
	uint8_t *bad = malloc(len);
	CHECK(bad != NULL, "malloc");
	if (!bad)
		goto out;
	int refused = 1;
	for (unsigned i = 0; i < CUTS; i++) {
		size_t cut = i < 40 ? i : (size_t)(check_rand(&seed) % len);
		if (i == CUTS - 1)
			cut = len - 1;
		refused &= po->load(blob, cut, &k, &ix2) == -EBADMSG;
	}
	CHECK(refused, "%s: a truncated blob loaded", cf->label);
	for (size_t i = 0; i < len; i++)
		bad[i] = (uint8_t)check_rand(&seed);
	CHECK(po->load(bad, len, &k, &ix2) == -EBADMSG, "%s: garbage loaded", cf->label);
	const struct policy_ops *other = policy_ops_get(io->policy == POLICY_QUEST ? POLICY_BLOCKS : POLICY_QUEST);
	CHECK(other->load(blob, len, &k, &ix2) == -EBADMSG, "%s: loaded as another policy", cf->label);
	CHECK(other->search(ix, &k, qd, G, B, &r) == -EINVAL, "%s: searched by another policy", cf->label);
	unsigned decoded = 0, ok = 1;
	for (unsigned i = 0; i < FLIPS; i++) {
		memcpy(bad, blob, len);
		unsigned flips = 1 + (unsigned)(check_rand(&seed) % 3);
		for (unsigned f = 0; f < flips; f++) {
			size_t at = i % 2 ? (size_t)(check_rand(&seed) % (len < 128 ? len : 128))
					  : (size_t)(check_rand(&seed) % len);
			bad[at] ^= (uint8_t)(1u << (check_rand(&seed) % 8));
		}
		rc = po->load(bad, len, &k, &ix2);
		if (rc) {
			ok &= rc == -EBADMSG || rc == -EINVAL;
			continue;
		}
		decoded++;
		for (unsigned b = 0; b < 8; b++) {
			r = result(toks, 0);
			rc = po->search(ix2, &k, qd + (i % NQ) * G * D, G, budgets[b], &r);
			ok &= rc == 0 && valid(&r, budgets[b]);
		}
		po->free(ix2);
		ix2 = NULL;
	}
	CHECK(ok, "%s: a flipped blob failed oddly or searched out of shape", cf->label);
	printf("%-22s blob %zu B, %u of %u flipped blobs decoded\n", cf->label, len, decoded, FLIPS);
	free(bad);
out:
	free(blob);
	if (ix2)
		po->free(ix2);
	po->free(ix);
}

/* Quest: U >= q.k for every key of the page, on small random cases. */
static void quest_bounds(void)
{
	const struct policy_ops *po = policy_ops_get(POLICY_QUEST);
	static float k[300 * 40], q[40], U[300];
	unsigned bad = 0, cases = 400;
	for (unsigned c = 0; c < cases; c++) {
		unsigned n = 1 + (unsigned)(check_rand(&seed) % 300), d = 1 + (unsigned)(check_rand(&seed) % 40);
		unsigned page = 1 + (unsigned)(check_rand(&seed) % 20);
		float scale = (float)pow(10, check_uniform(&seed) * 2);
		for (unsigned i = 0; i < n * d; i++)
			k[i] = scale * check_uniform(&seed) + (c % 3 == 0 ? 5.0f : 0.0f);
		for (unsigned i = 0; i < d; i++)
			q[i] = check_uniform(&seed) / scale;
		const struct index_keys keys_ = { .k = k, .n = n, .d = d };
		const struct index_build_params bp = { .unit_tokens = page, .threads = 1 };
		struct index *ix;
		if (po->build(&keys_, &bp, &ix)) {
			bad++;
			continue;
		}
		int64_t pages = index_quest_bounds(ix, q, U, 300);
		if (pages != (int64_t)((n + page - 1) / page))
			bad++;
		for (unsigned t = 0; t < n && pages > 0; t++) {
			double s = 0, mag = 0;
			for (unsigned i = 0; i < d; i++) {
				s += (double)q[i] * k[t * d + i];
				mag += fabs((double)q[i] * k[t * d + i]);
			}
			if (U[t / page] < s - 1e-5 * mag - 1e-30)
				bad++;
		}
		po->free(ix);
	}
	CHECK(!bad, "quest: %u bounds below a key's score in %u cases", bad, cases);
}

/*
 * The hierarchy's point, at a 2 % budget: centroids2 scores far fewer
 * centroids than centroids (measured 4.5x fewer on the fixed data; the
 * floor is 4x, as at this size coarse clusters are coarse against the
 * budget) for about the same attention mass (measured 0.009 lower; the
 * floor allows 0.03).
 */
static void hierarchy(void)
{
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	const struct index_build_params bp = { .seed = 1, .threads = 1, .group = G };
	const struct policy_ops *po[2] = { policy_ops_get(POLICY_CENTROIDS), policy_ops_get(POLICY_CENTROIDS2) };
	double mass[2] = { 0, 0 };
	uint64_t scanned[2] = { 0, 0 };
	for (unsigned i = 0; i < 2; i++) {
		struct index *ix;
		int rc = po[i]->build(&k, &bp, &ix);
		CHECK(rc == 0, "%s: build %d", po[i]->name, rc);
		if (rc)
			return;
		for (unsigned t = 0; t < NQ; t++) {
			struct index_result r = result(toks, 0);
			rc = po[i]->search(ix, &k, qd + t * G * D, G, N / 50, &r);
			CHECK(rc == 0, "%s: search %d", po[i]->name, rc);
			mass[i] += mass_ratio(qd + t * G * D, toks, r.n_tokens) / NQ;
			scanned[i] += r.scanned;
		}
		po[i]->free(ix);
	}
	printf("at 2%%: centroids mass/best %.3f scanned %llu, centroids2 %.3f scanned %llu (%.1fx fewer)\n", mass[0],
	       (unsigned long long)scanned[0], mass[1], (unsigned long long)scanned[1],
	       (double)scanned[0] / (double)(scanned[1] ? scanned[1] : 1));
	CHECK(scanned[1] * 4.0 <= scanned[0], "centroids2 scanned %llu, centroids %llu", (unsigned long long)scanned[1],
	      (unsigned long long)scanned[0]);
	CHECK(mass[1] >= mass[0] - 0.03, "centroids2 mass %.3f, centroids %.3f", mass[1], mass[0]);
}

/* Values = keys: an estimate's value sum must be its count times its key (the mean of raw keys). */
static void estimates(void)
{
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	const struct index_build_params bp = { .seed = (uint32_t)seed, .threads = 2, .group = G, .v = keys };
	for (uint32_t p = POLICY_CENTROIDS; p <= POLICY_CENTROIDS2; p++) {
		const struct policy_ops *po = policy_ops_get(p);
		struct index *ix;
		int rc = po->build(&k, &bp, &ix);
		CHECK(rc == 0, "%s: build %d", po->name, rc);
		if (rc)
			continue;
		double worst = 0, counted = 0;
		unsigned n_est = 0;
		for (unsigned t = 0; t < NQ; t++) {
			struct index_result r = result(toks, 0);
			rc = po->search(ix, &k, qd + t * G * D, G, N / 50, &r);
			CHECK(rc == 0 && r.n_est > 0 && r.n_est <= EST_CAP, "%s: %u estimates (rc %d)", po->name, r.n_est,
			      rc);
			n_est += r.n_est;
			for (unsigned e = 0; e < r.n_est; e++) {
				counted += est_cnt[e];
				for (unsigned i = 0; i < D; i++) {
					double want = (double)est_cnt[e] * est_key[e * D + i];
					double err = fabs(est_vsum[e * D + i] - want) / (fabs(want) + est_cnt[e]);
					worst = err > worst ? err : worst;
				}
			}
		}
		CHECK(worst < 1e-3, "%s: value sum != count x centroid (relative error %g)", po->name, worst);
		CHECK(counted <= NQ * (0.232 * N + 1), "%s: estimates hold %g tokens", po->name, counted);
		printf("%s: %u estimates over %u queries, value sums agree within %.1e\n", po->name, n_est, NQ, worst);
		po->free(ix);
	}
}

/*
 * blocks' blob formats (quest's are quest_blobs()). Format 3 keeps the
 * representatives as int8 steps of a per-channel scale, whatever the keys'
 * dtype: a built index saves to exactly the documented layout and reloads
 * to an index that searches as it did. The older formats (2: dtype 0 fp32
 * or 1 bf16, then the values; 1: fp32 without the dtype word) are written
 * here from random representatives, and each must load to the index that
 * the format-3 blob this test quantizes from the same values by the
 * documented rule (step = max |v| / 127, nearest step) loads to: the same
 * picks and the same memory. Non-finite values, a bad step, the step count
 * -128 and an unknown dtype are refused.
 */
enum { BLK_TOKENS = 128, BLK_REPS = 4, BLK_HEAD = 16 + 24 };

static uint8_t *blocks_blob(uint16_t version, int dtype, const float *v, size_t nf, const uint8_t *magic,
			    size_t *len)
{
	const size_t bytes = dtype < 0 ? 4 * (size_t)D + nf : dtype == 1 ? 2 * nf : 4 * nf;
	*len = BLK_HEAD + (version == 2 ? 4 : 0) + bytes;
	uint8_t *b = calloc(1, *len), *p = b + BLK_HEAD;
	const uint16_t pol = POLICY_BLOCKS;
	const uint64_t body = *len - 16, n = N;
	const uint32_t d = D, block = BLK_TOKENS, reps = BLK_REPS, rule = 0, dt = (uint32_t)dtype;
	memcpy(b, magic, 4);
	memcpy(b + 4, &pol, 2);
	memcpy(b + 6, &version, 2);
	memcpy(b + 8, &body, 8);
	memcpy(b + 16, &n, 8);
	memcpy(b + 24, &d, 4);
	memcpy(b + 28, &block, 4);
	memcpy(b + 32, &reps, 4);
	memcpy(b + 36, &rule, 4);
	if (version == 2) {
		memcpy(p, &dt, 4);
		p += 4;
	}
	if (dtype < 0) { /* format 3 by the documented rule */
		float step[D] = { 0 };
		for (size_t i = 0; i < nf; i++)
			step[i % D] = fabsf(v[i]) > step[i % D] ? fabsf(v[i]) : step[i % D];
		for (unsigned i = 0; i < D; i++)
			step[i] /= 127;
		memcpy(p, step, sizeof(step));
		for (size_t i = 0; i < nf; i++) {
			const float x = step[i % D] > 0 ? rintf(v[i] / step[i % D]) : 0;
			p[sizeof(step) + i] = (uint8_t)(int8_t)(x > 127 ? 127 : x < -127 ? -127 : x);
		}
	} else if (dtype == 1) {
		for (size_t i = 0; i < nf; i++) {
			uint32_t u;
			memcpy(&u, &v[i], 4);
			const uint16_t h = (uint16_t)(u >> 16);
			memcpy(p + 2 * i, &h, 2);
		}
	} else {
		memcpy(p, v, 4 * nf);
	}
	return b;
}

static int blocks_same(const struct index *a, const struct index *b, const struct index_keys *k)
{
	const struct policy_ops *po = policy_ops_get(POLICY_BLOCKS);
	int same = po->memory(a) == po->memory(b);
	for (unsigned t = 0; t < NQ; t++) {
		struct index_result x = result(toks, 0), y = result(toks2, 1);
		same &= po->search(a, k, qd + t * G * D, G, N / 50, &x) == 0 &&
			po->search(b, k, qd + t * G * D, G, N / 50, &y) == 0 && x.n_tokens == y.n_tokens &&
			!memcmp(toks, toks2, x.n_tokens * sizeof(uint64_t));
	}
	return same;
}

static void blocks_blobs(void)
{
	const struct policy_ops *po = policy_ops_get(POLICY_BLOCKS);
	const size_t nf = (size_t)(N + BLK_TOKENS - 1) / BLK_TOKENS * BLK_REPS * D;
	static float kb[N * D];
	for (size_t i = 0; i < (size_t)N * D; i++) {
		uint32_t u;
		memcpy(&u, &keys[i], 4);
		u &= 0xffff0000u;
		memcpy(&kb[i], &u, 4);
	}
	const struct index_keys k32 = { .k = keys, .n = N, .d = D }, k16 = { .k = kb, .n = N, .d = D };
	struct index *ix[2] = { NULL, NULL }, *back = NULL;
	const struct index_keys *ks[2] = { &k32, &k16 };
	uint8_t magic[4] = { 0 };
	for (unsigned c = 0; c < 2; c++) {
		uint8_t *b = NULL;
		size_t len = 0;
		CHECK(po->build(ks[c], NULL, &ix[c]) == 0 && po->save(ix[c], &b, &len) == 0, "blocks builds and saves");
		if (!b)
			return;
		uint16_t ver;
		memcpy(&ver, b + 6, 2);
		memcpy(magic, b, 4);
		CHECK(ver == 3 && len == BLK_HEAD + 4 * D + nf, "blocks saves format %u, %zu bytes, want 3, %zu", ver,
		      len, (size_t)BLK_HEAD + 4 * D + nf);
		CHECK(po->load(b, len, ks[c], &back) == 0 && blocks_same(ix[c], back, ks[c]),
		      "blocks' saved blob %u searches differently once loaded", c);
		po->free(back);
		back = NULL;
		free(b);
	}
	CHECK(po->memory(ix[0]) == po->memory(ix[1]), "blocks holds %zu bytes over fp32 keys, %zu over bf16",
	      po->memory(ix[0]), po->memory(ix[1]));
	/* the older formats against format 3 quantized here from the same values */
	float *v = malloc(nf * sizeof(float)), *v16 = malloc(nf * sizeof(float));
	for (size_t i = 0; i < nf; i++) {
		v[i] = (i % D == 5 ? 40.0f : 1.0f) * gauss();   /* one channel far wider than the rest */
		uint32_t u;
		memcpy(&u, &v[i], 4);
		u &= 0xffff0000u;
		memcpy(&v16[i], &u, 4);
	}
	struct {
		uint16_t version;
		int dtype;
		const float *ref;
	} old[3] = { { 2, 0, v }, { 2, 1, v16 }, { 1, 0, v } };
	for (unsigned c = 0; c < 3; c++) {
		size_t lo = 0, l3 = 0;
		uint8_t *bo = blocks_blob(old[c].version, old[c].dtype, v, nf, magic, &lo);
		uint8_t *b3 = blocks_blob(3, -1, old[c].ref, nf, magic, &l3);
		struct index *io = NULL, *i3 = NULL;
		int ro = po->load(bo, lo, &k32, &io), r3 = po->load(b3, l3, &k32, &i3);
		CHECK(ro == 0 && r3 == 0, "blocks format %u dtype %d loads %d, its format 3 %d", old[c].version,
		      old[c].dtype, ro, r3);
		if (!ro && !r3)
			CHECK(blocks_same(io, i3, &k32), "blocks format %u dtype %d is not quantized as documented",
			      old[c].version, old[c].dtype);
		po->free(io);
		po->free(i3);
		if (c == 1) {
			/* a bf16 infinity or NaN anywhere is refused; so is dtype 2 */
			const size_t at[4] = { 0, 3, nf - 1, check_rand(&seed) % nf };
			const uint16_t bad[3] = { 0x7f80, 0xff80, 0x7fc1 };
			int refused = 1;
			for (unsigned i = 0; i < 4; i++)
				for (unsigned k = 0; k < 3; k++) {
					uint8_t *val = bo + BLK_HEAD + 4 + 2 * at[i], keep[2] = { val[0], val[1] };
					memcpy(val, &bad[k], 2);
					refused &= po->load(bo, lo, &k32, &back) == -EBADMSG;
					memcpy(val, keep, 2);
				}
			CHECK(refused, "blocks: a bf16 blob with an infinity or a NaN loaded");
			bo[BLK_HEAD] = 2;
			CHECK(po->load(bo, lo, &k32, &back) == -EBADMSG, "blocks blob with dtype 2 loaded");
		}
		if (c == 0) {
			/* format 3: a NaN or negative step, or the step count -128, is refused */
			const float nan = NAN, neg = -1.0f;
			uint8_t keep[4];
			memcpy(keep, b3 + BLK_HEAD + 8, 4);
			memcpy(b3 + BLK_HEAD + 8, &nan, 4);
			int refused = po->load(b3, l3, &k32, &back) == -EBADMSG;
			memcpy(b3 + BLK_HEAD + 8, &neg, 4);
			refused &= po->load(b3, l3, &k32, &back) == -EBADMSG;
			memcpy(b3 + BLK_HEAD + 8, keep, 4);
			b3[l3 - 1] = 0x80;
			refused &= po->load(b3, l3, &k32, &back) == -EBADMSG;
			CHECK(refused, "blocks: a format-3 blob with a bad step or -128 loaded");
		}
		free(bo);
		free(b3);
	}
	free(v);
	free(v16);
	po->free(ix[0]);
	po->free(ix[1]);
}

/*
 * ix_bounds_i8q() against two references computed here: the exact dots
 * (where it runs ix_dots_i8()) or the dots of the queries rounded as its
 * contract says (where it runs on int8), within float rounding of one or
 * the other, and always within the rounding bound s_g / 2 * sum |row| of
 * the exact ones. Shapes cover the int8 path (G 4 and 8, d 32 to 256, 37
 * pages, -128 in the rows) and the fallbacks (G 3, d 48, a query
 * not split into q+ >= 0 >= q-, one with both in a channel: these must
 * come out exact).
 */
static void bounds_i8q(void)
{
	static const unsigned shapes[7][2] = { { 4, 64 }, { 8, 32 }, { 4, 256 }, { 3, 64 }, { 4, 48 }, { 4, 64 }, { 4, 64 } };
	for (unsigned s = 0; s < 7; s++) {
		const unsigned Gs = shapes[s][0], d = shapes[s][1], n = 37, stride = 2 * d + 16;
		const int unsplit = s >= 5;
		int8_t *rows = malloc((size_t)n * stride);
		float *q = malloc((size_t)Gs * 2 * d * sizeof(float)), *out = malloc((size_t)n * Gs * sizeof(float));
		for (size_t i = 0; i < (size_t)n * stride; i++)
			rows[i] = (int8_t)(check_rand(&seed) % 256);
		rows[5] = -128;
		for (unsigned g = 0; g < Gs; g++)
			for (unsigned i = 0; i < d; i++) {
				const float x = (g == 1 ? 1e-3f : 3.0f) * gauss();
				q[g * 2 * d + i] = x > 0 ? x : 0;
				q[g * 2 * d + d + i] = x < 0 ? x : 0;
			}
		if (s == 5)
			q[2] = -1.0f;  /* q+ < 0 */
		if (s == 6)
			q[2] = 1.0f, q[d + 2] = -1.0f;  /* a channel with both */
		ix_bounds_i8q(rows, n, stride, q, Gs, d, out);
		int ok = 1;
		double worst = 0;
		for (unsigned g = 0; g < Gs; g++) {
			float mx = 0;
			for (unsigned i = 0; i < 2 * d; i++)
				mx = fmaxf(mx, fabsf(q[g * 2 * d + i]));
			const double sc = mx / 127.0;
			for (unsigned r = 0; r < n; r++) {
				double exact = 0, rounded = 0, absrow = 0;
				for (unsigned i = 0; i < 2 * d; i++) {
					const double x = rows[(size_t)r * stride + i];
					exact += x * q[g * 2 * d + i];
					rounded += x * round(q[g * 2 * d + i] / sc);
					absrow += fabs(x);
				}
				rounded *= sc;
				const double o = out[r * Gs + g], tol = 1e-5 * (absrow * mx + 1e-30);
				ok &= fabs(o - exact) <= tol || (!unsplit && fabs(o - rounded) <= tol + 1e-3 * sc * absrow);
				worst = fmax(worst, fabs(o - exact) / (sc / 2 * absrow + 1e-30));
			}
		}
		CHECK(ok && worst <= 1.0 + 1e-4,
		      "ix_bounds_i8q G %u d %u%s: off both references (%d) or the bound (%.3f of it)", Gs, d,
		      unsplit ? " unsplit" : "", ok, worst);
		q[3] = NAN;
		ix_bounds_i8q(rows, n, stride, q, Gs, d, out);
		int nan_ok = 1;
		for (unsigned r = 0; r < n; r++)
			nan_ok &= out[r * Gs] == -INFINITY;
		CHECK(nan_ok, "ix_bounds_i8q G %u d %u: a NaN query scored a row", Gs, d);
		free(rows);
		free(q);
		free(out);
	}
}

/*
 * Quest's rerank arithmetic. The blocked code layout against the byte map
 * ix.h documents; ix_quantize_i8() against its definition (the scale from
 * the largest |w|, every weight within half a step, NaN and infinite heads
 * marked, zero heads zero); ix_nibble_mass() against a double sum over the
 * codes as drawn, for shapes that take the vector loops with and without
 * tails (d 64, d 12, d 200: 25 planes, a 32-weight tail of 8).
 */
static void nibble_dots(void)
{
	uint8_t one[64 * 4] = { 0 };
	ix_code_put(one, 5, 13, 9);
	ix_code_put(one, 2, 2, 7);
	CHECK(one[32 + 5 * 4 + 1] == 0x90 && one[2 * 4 + 2] == 0x07 && ix_code_get(one, 5, 13) == 9 &&
		      ix_code_get(one, 2, 2) == 7 && ix_code_get(one, 5, 9) == 0,
	      "blocked code layout: byte 53 %#x, byte 10 %#x", one[53], one[10]);

	static const unsigned shapes[3][2] = { { 4, 64 }, { 3, 12 }, { 2, 200 } };
	for (unsigned s = 0; s < 3; s++) {
		const unsigned Gs = shapes[s][0], d = shapes[s][1], dp = ix_code_dims(d), nb = 3;
		float *w = malloc((size_t)Gs * d * sizeof(float)), scale[4], c[4];
		int8_t *W = malloc((size_t)Gs * dp);
		uint8_t *codes = malloc((size_t)nb * IX_CODE_BLOCK * d), *blocks = calloc(nb, ix_code_block_bytes(d));
		for (unsigned g = 0; g < Gs; g++) {
			/* scores up to +-30 (15 d mag), one head's far smaller */
			const float mag = (g == 1 ? 1e-4f : 2.0f) / (float)d;
			for (unsigned i = 0; i < d; i++)
				w[g * d + i] = mag * (2.0f * check_uniform(&seed) - 1.0f);
			c[g] = -3.0f * check_uniform(&seed);
		}
		memset(W, 0x55, (size_t)Gs * dp);
		ix_quantize_i8(w, Gs, d, W, scale);
		double qworst = 0;
		int pad_ok = 1;
		for (unsigned g = 0; g < Gs; g++) {
			double mx = 0;
			for (unsigned i = 0; i < d; i++)
				mx = fmax(mx, fabs(w[g * d + i]));
			qworst = fmax(qworst, fabs(scale[g] - mx / 127) / (mx / 127));
			for (unsigned i = 0; i < d; i++)
				qworst = fmax(qworst, (fabs(W[g * dp + i] * (double)scale[g] - w[g * d + i]) - scale[g] / 2) /
							      scale[g]);
			for (unsigned i = d; i < dp; i++)
				pad_ok &= W[g * dp + i] == 0;
		}
		CHECK(qworst < 1e-4 && pad_ok, "int8 weights, Gs %u d %u: worst %g (of a step), padding %s", Gs, d,
		      qworst, pad_ok ? "zero" : "set");
		for (unsigned b = 0; b < nb; b++)
			for (unsigned t = 0; t < IX_CODE_BLOCK; t++)
				for (unsigned i = 0; i < d; i++) {
					const uint8_t v = (uint8_t)(check_rand(&seed) % 16);
					codes[((size_t)b * IX_CODE_BLOCK + t) * d + i] = v;
					ix_code_put(blocks + b * ix_code_block_bytes(d), t, i, v);
				}
		float out[3 * IX_CODE_BLOCK];
		ix_nibble_mass(blocks, nb, d, W, scale, c, Gs, out);
		double worst = 0;
		for (unsigned r = 0; r < nb * IX_CODE_BLOCK; r++) {
			double want = 0;
			for (unsigned g = 0; g < Gs; g++) {
				double dot = 0;
				for (unsigned i = 0; i < d; i++)
					dot += (double)W[g * dp + i] * codes[(size_t)r * d + i];
				want += exp((double)scale[g] * dot + c[g]);
			}
			worst = fmax(worst, fabs(out[r] - want) / want);
		}
		CHECK(worst < 1e-5, "nibble mass, Gs %u d %u: relative error %g", Gs, d, worst);
		free(w);
		free(W);
		free(codes);
		free(blocks);
	}
	/* a head with a NaN, one with an infinity, one all zero */
	{
		enum { DB = 40 };
		float w[3 * DB], scale[3];
		int8_t W[3 * DB];
		for (unsigned i = 0; i < 3 * DB; i++)
			w[i] = i < 2 * DB ? 0.5f : 0.0f;
		w[7] = NAN;
		w[DB + 33] = -INFINITY;
		ix_quantize_i8(w, 3, DB, W, scale);
		int zero = 1;
		for (unsigned i = 0; i < 3 * DB; i++)
			zero &= W[i] == 0;
		CHECK(isnan(scale[0]) && isnan(scale[1]) && scale[2] == 0 && zero,
		      "int8 weights of bad heads: scales %g %g %g, weights %s", scale[0], scale[1], scale[2],
		      zero ? "zero" : "set");
	}
	/* the weights that score codes, on the vector path (G 4, d 64) and with tails (G 3, d 12) */
	for (unsigned s = 0; s < 2; s++) {
		const unsigned Gs = s ? 3 : 4, d = s ? 12 : 64;
		float q[4 * 64];
		for (unsigned i = 0; i < Gs * d; i++)
			q[i] = 2.0f * check_uniform(&seed) - 1.0f;
		/* the weights that score codes, from a [max | min] row pair kept as fp32 or as bf16 */
		for (int as_bf16 = 0; as_bf16 < 2; as_bf16++) {
			float *rows = malloc(2 * (size_t)d * sizeof(float)), w[4 * 64], base[4];
			for (unsigned i = 0; i < d; i++) {
				/* bf16 values: multiples of 1/32 under 3 in magnitude (at most 7 significant bits) */
				float a = 2.0f * check_uniform(&seed) - 1.0f, b = a + check_uniform(&seed);
				if (as_bf16) {
					a = (float)((int)(check_rand(&seed) % 128) - 64) / 32.0f;
					b = a + (float)(check_rand(&seed) % 32) / 32.0f;
				}
				rows[d + i] = a < b ? a : b;
				rows[i] = a < b ? b : a;
			}
			struct ix_mat m = { 0 };
			ix_mat_take(&m, rows, 2 * (size_t)d);
			CHECK(!m.bf16 == !as_bf16, "the row pair kept as %s", as_bf16 ? "fp32" : "bf16");
			ix_code_weights(&m, 0, d, q, Gs, w, base);
			double wworst = 0;
			for (unsigned g = 0; g < Gs; g++) {
				double b = 0;
				for (unsigned i = 0; i < d; i++) {
					const double mx = ix_mat_at(&m, i), mn = ix_mat_at(&m, d + i);
					b += (double)q[g * d + i] * mn;
					wworst = fmax(wworst, fabs(w[g * d + i] - q[g * d + i] * (mx - mn) / 15.0));
				}
				wworst = fmax(wworst, fabs(base[g] - b) / (fabs(b) + 1));
			}
			CHECK(wworst < 1e-5, "code weights, Gs %u d %u %s: error %g", Gs, d, as_bf16 ? "bf16" : "fp32",
			      wworst);
			ix_mat_free(&m);
		}
	}
}

/*
 * ix_code_weights_q8() against its definition, computed here in 64-bit
 * integers (W = floor((r * 128 * q16 + 2^14) / 2^15)) and a double dot for
 * base, on the vector path (d 64, 256) and the fallback (d 48), with rows
 * holding -127 and 127; and the contract's bound: with q16 made from qs by
 * the documented rule against R_i (the widest r of the pages drawn), every
 * page's |W| <= 127 and (D / 15) W approximates qs r / 15 within half a
 * step (D / 15 / 2) plus q16's own rounding.
 */
static void code_weights_q8(void)
{
	static const unsigned shapes[3][2] = { { 4, 64 }, { 2, 256 }, { 3, 48 } };
	enum { PAGES = 9 };
	for (unsigned s = 0; s < 3; s++) {
		const unsigned Gs = shapes[s][0], d = shapes[s][1], dp = ix_code_dims(d);
		int8_t *rows = malloc((size_t)PAGES * 2 * d), *W = malloc((size_t)Gs * dp);
		int16_t *q16 = malloc((size_t)Gs * dp * sizeof(int16_t));
		float *qs = malloc((size_t)Gs * d * sizeof(float)), base[4], Dg[4];
		unsigned R[256] = { 0 };
		for (unsigned p = 0; p < PAGES; p++)
			for (unsigned i = 0; i < d; i++) {
				int a = (int)(check_rand(&seed) % 255) - 127, b = (int)(check_rand(&seed) % 255) - 127;
				if (p == 0 && i < 2)
					a = 127, b = -127; /* the widest range */
				int8_t *r = rows + (size_t)p * 2 * d;
				r[i] = (int8_t)(a > b ? a : b);
				r[d + i] = (int8_t)(a > b ? b : a);
				R[i] = (unsigned)(r[i] - r[d + i]) > R[i] ? (unsigned)(r[i] - r[d + i]) : R[i];
			}
		for (unsigned g = 0; g < Gs; g++) {
			Dg[g] = 0;
			for (unsigned i = 0; i < d; i++) {
				qs[g * d + i] = (g == 1 ? 1e-3f : 1.0f) * (2.0f * check_uniform(&seed) - 1.0f);
				Dg[g] = fmaxf(Dg[g], fabsf(qs[g * d + i]) * (float)R[i]);
			}
			Dg[g] /= 127;
			for (unsigned i = 0; i < dp; i++)
				q16[g * dp + i] = i < d ? (int16_t)rintf(256 * qs[g * d + i] / Dg[g]) : 12345; /* padding ignored */
		}
		int exact = 1, bounded = 1, pad = 1;
		double worst = 0, bworst = 0;
		for (unsigned p = 0; p < PAGES; p++) {
			const int8_t *r = rows + (size_t)p * 2 * d;
			memset(W, 0x55, (size_t)Gs * dp);
			ix_code_weights_q8(r, d, q16, qs, Gs, W, base);
			for (unsigned g = 0; g < Gs; g++) {
				double b = 0;
				for (unsigned i = 0; i < d; i++) {
					const int64_t x = (int64_t)(r[i] - r[d + i]) * 128 * q16[g * dp + i];
					const int64_t want = (x + (1 << 14)) >> 15; /* floor: >> of a negative is arithmetic */
					exact &= W[g * dp + i] == want;
					bounded &= W[g * dp + i] != INT8_MIN; /* int8 holds the rest of |W| <= 127 */
					const double real = (double)qs[g * d + i] * (r[i] - r[d + i]) / 15;
					/* half a step of W, and q16's rounding (half a unit of 256 / D) times r */
					const double tol = Dg[g] / 15 * (0.5 + (r[i] - r[d + i]) * 0.5 / 256) * 1.0001;
					worst = fmax(worst, fabs(W[g * dp + i] * (double)Dg[g] / 15 - real) / tol);
					b += (double)qs[g * d + i] * r[d + i];
				}
				for (unsigned i = d; i < dp; i++)
					pad &= W[g * dp + i] == 0;
				bworst = fmax(bworst, fabs(base[g] - b) / (fabs(b) + 1));
			}
		}
		CHECK(exact && bounded && pad && worst <= 1 && bworst < 1e-5,
		      "code weights q8, Gs %u d %u: exact %d, |W| <= 127 %d, padding %d, error %.3f of its bound, base %g",
		      Gs, d, exact, bounded, pad, worst, bworst);
		free(rows);
		free(W);
		free(q16);
		free(qs);
	}
}

/* ix_exp_rows() against exp() in double, on the vector path (G 4) and the scalar one (G 3). */
static void exp_rows(void)
{
	for (unsigned Gs = 3; Gs <= 4; Gs++) {
		enum { ROWS = 250 };
		float v[ROWS * 4], was[ROWS * 4], c[4];
		for (unsigned g = 0; g < Gs; g++)
			c[g] = 10.0f * check_uniform(&seed);
		for (unsigned i = 0; i < ROWS * Gs; i++)
			v[i] = was[i] = 70.0f * check_uniform(&seed);
		v[0] = was[0] = -87.0f - c[0];
		v[1] = was[1] = 87.9f - c[1];
		/* below the normal range, and NaN: expf()'s 0 and NaN on either path */
		v[2] = -INFINITY;
		v[3] = -200.0f;
		v[4] = NAN;
		ix_exp_rows(v, ROWS, Gs, c);
		CHECK(v[2] == 0 && v[3] == 0 && isnan(v[4]), "exp rows, G %u: exp(-inf) %g, exp(-200) %g, exp(NaN) %g",
		      Gs, v[2], v[3], v[4]);
		double worst = 0;
		for (unsigned i = 5; i < ROWS * Gs; i++) {
			const double want = exp((double)(float)(was[i] + c[i % Gs])); /* the sum rounds as the code rounds it */
			worst = fmax(worst, fabs(v[i] - want) / want);
		}
		CHECK(worst < 1e-6, "exp rows, G %u: relative error %g", Gs, worst);
	}
}

static int item_order(const void *pa, const void *pb)
{
	const struct ix_item *a = pa, *b = pb;
	if (a->score != b->score)
		return a->score > b->score ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

static int id_order(const void *pa, const void *pb)
{
	const struct ix_item *a = pa, *b = pb;
	return a->id < b->id ? -1 : a->id > b->id;
}

/*
 * ix_select() and ix_top() against a full qsort: the m best (by score, then
 * id) come first, ix_top() sorts them, and the items stay a permutation; at
 * sizes below and above the sampled prefilter, with distinct scores, heavy
 * ties and a tail of -inf.
 */
static void selection(void)
{
	static const size_t sizes[3] = { 1000, 20000, 100000 };
	int ok = 1;
	for (unsigned si = 0; si < 3; si++)
		for (unsigned kind = 0; kind < 3; kind++) {
			const size_t n = sizes[si];
			const size_t ms[5] = { 1, 17, n / 100, n / 5, n / 2 };
			struct ix_item *a = malloc(n * sizeof(*a)), *want = malloc(n * sizeof(*a));
			for (unsigned mi = 0; mi < 5; mi++) {
				const size_t m = ms[mi];
				for (size_t i = 0; i < n; i++) {
					a[i].id = (uint32_t)i;
					a[i].score = kind == 0   ? check_uniform(&seed)
						     : kind == 1 ? (float)(check_rand(&seed) % 10)
						     : i % 3     ? -INFINITY
								 : check_uniform(&seed);
				}
				memcpy(want, a, n * sizeof(*a));
				qsort(want, n, sizeof(*a), item_order);
				ix_select(a, n, m);
				qsort(a, m, sizeof(*a), item_order);
				int good = !memcmp(a, want, m * sizeof(*a));
				qsort(a, n, sizeof(*a), id_order);
				for (size_t i = 0; i < n; i++)
					good &= a[i].id == i;
				for (size_t i = 0; i < n; i++)
					a[i] = want[(i * 7919) % n]; /* n is not a multiple of 7919 */
				ix_top(a, n, m);
				good &= !memcmp(a, want, m * sizeof(*a));
				if (!good)
					fprintf(stderr, "selection: n %zu m %zu kind %u wrong\n", n, m, kind);
				ok &= good;
			}
			free(a);
			free(want);
		}
	CHECK(ok, "selection of the best m matches a full sort");
}

/*
 * ix_group_softmax() by summed mass without log weights (its 8-wide path
 * when G divides 8, the general one for G 3) against softmax in double:
 * each head's lse, each unit's summed probability, ids passed through;
 * n not a multiple of the vector, a -inf unit and a head that is all -inf.
 */
static void group_mass(void)
{
	static const unsigned Gs_list[5] = { 1, 2, 4, 8, 3 };
	int ok = 1;
	for (unsigned gi = 0; gi < 5; gi++) {
		const unsigned Gs = Gs_list[gi];
		enum { U = 301 };
		float *sc = malloc((size_t)U * Gs * sizeof(float)), *was = malloc((size_t)U * Gs * sizeof(float));
		float lse[8];
		uint32_t ids[U];
		struct ix_item out[U];
		for (unsigned j = 0; j < U; j++) {
			ids[j] = 1000 + 3 * j;
			for (unsigned g = 0; g < Gs; g++)
				sc[j * Gs + g] = was[j * Gs + g] = 20.0f * check_uniform(&seed) - 10.0f;
		}
		for (unsigned g = 0; g < Gs; g++)
			sc[5 * Gs + g] = was[5 * Gs + g] = -INFINITY;
		if (Gs > 1)
			for (unsigned j = 0; j < U; j++)
				sc[j * Gs + 1] = was[j * Gs + 1] = -INFINITY; /* head 1 sees nothing */
		ix_group_softmax(sc, NULL, ids, U, Gs, lse, IX_MASS, out);
		double z[8] = { 0 }, mx[8];
		for (unsigned g = 0; g < Gs; g++) {
			mx[g] = -INFINITY;
			for (unsigned j = 0; j < U; j++)
				mx[g] = fmax(mx[g], was[j * Gs + g]);
			for (unsigned j = 0; j < U; j++)
				z[g] += isfinite(mx[g]) ? exp(was[j * Gs + g] - mx[g]) : 0;
			const double want = z[g] > 0 ? mx[g] + log(z[g]) : -INFINITY;
			ok &= want == -INFINITY ? lse[g] == -INFINITY : fabs(lse[g] - want) < 1e-5 * fabs(want) + 1e-5;
		}
		for (unsigned j = 0; j < U; j++) {
			double want = 0;
			for (unsigned g = 0; g < Gs; g++)
				want += z[g] > 0 ? exp(was[j * Gs + g] - mx[g]) / z[g] : 0;
			ok &= out[j].id == ids[j] && fabs(out[j].score - want) <= 1e-5 * want + 1e-12;
		}
		if (!ok)
			fprintf(stderr, "group mass, G %u: wrong\n", Gs);
		free(sc);
		free(was);
	}
	CHECK(ok, "group softmax by summed mass matches softmax in double");
}

/* A quest blob in an older format: header of @p like, @p body bytes after it. */
static uint8_t *quest_old_blob(const uint8_t *like, uint16_t version, const uint8_t *body, size_t blen)
{
	uint8_t *v = malloc(16 + blen);
	const uint64_t bl = blen;
	memcpy(v, like, 16);
	memcpy(v + 6, &version, 2);
	memcpy(v + 8, &bl, 8);
	memcpy(v + 16, body, blen);
	return v;
}

/*
 * quest's blobs. Format 5 keeps the bounds as int8 steps, one f32 step a
 * channel: 20 + 4d + 2d bytes a page of body over fp32 and bf16 keys alike
 * (quest_bounds() checks the stepped bounds still bound every key). The
 * older formats, rebuilt here from the documented layouts and the keys'
 * own page maxima and minima (1: n, d, page, fp32 rows; 2: a dtype word
 * after page; 3 and 4: a rerank word before it), load and search as the
 * built index; 3 or 4 with a rerank is refused (its codes were on the
 * exact bounds' grid, so the daemon builds over it), and so are a NaN or
 * negative step, a min above its max, an old blob's max below its min and
 * dtype 2.
 */
static void quest_blobs(void)
{
	const struct policy_ops *po = policy_ops_get(POLICY_QUEST);
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	struct index *ix = NULL, *back = NULL;
	uint8_t *blob = NULL;
	size_t len = 0;
	CHECK(po->build(&k, NULL, &ix) == 0 && po->save(ix, &blob, &len) == 0, "quest builds and saves");
	if (!ix || !blob)
		return;
	const size_t page = 16, pages = (N + page - 1) / page, nf = pages * 2 * D;
	CHECK(len == 16 + 20 + 4 * (size_t)D + nf, "quest format 5 blob: %zu bytes, want %zu", len,
	      16 + 20 + 4 * (size_t)D + nf);
	/* the keys' page bounds, fp32 [max | min] */
	float *rows = malloc(nf * sizeof(float));
	for (size_t p = 0; p < pages; p++)
		for (size_t i = 0; i < D; i++) {
			float mx = -INFINITY, mn = INFINITY;
			for (size_t t = p * page; t < (p + 1) * page && t < N; t++) {
				mx = fmaxf(mx, keys[t * D + i]);
				mn = fminf(mn, keys[t * D + i]);
			}
			rows[p * 2 * D + i] = mx;
			rows[p * 2 * D + D + i] = mn;
		}
	const uint64_t n64 = N;
	const uint32_t d32 = D, page32 = 16, f32 = 0;
	const float no_rerank = 0, rerank4 = 4;
	uint8_t *body = malloc(28 + nf * sizeof(float) + 64);
	struct {
		uint16_t version;
		int rerank, dtype;
		int want;
	} olds[5] = { { 1, 0, 0, 0 }, { 2, 0, 1, 0 }, { 3, 1, 1, 0 }, { 4, 1, 1, 0 }, { 4, 2, 1, -EBADMSG } };
	for (unsigned o = 0; o < 5; o++) {
		size_t at = 0;
		memcpy(body + at, &n64, 8), at += 8;
		memcpy(body + at, &d32, 4), at += 4;
		memcpy(body + at, &page32, 4), at += 4;
		if (olds[o].rerank)
			memcpy(body + at, olds[o].rerank == 2 ? &rerank4 : &no_rerank, 4), at += 4;
		if (olds[o].dtype)
			memcpy(body + at, &f32, 4), at += 4;
		memcpy(body + at, rows, nf * sizeof(float)), at += nf * sizeof(float);
		uint8_t *v = quest_old_blob(blob, olds[o].version, body, at);
		int rc = po->load(v, 16 + at, &k, &back);
		CHECK(rc == olds[o].want, "quest format %u blob%s: load %d", olds[o].version,
		      olds[o].rerank == 2 ? " with a rerank" : "", rc);
		if (!rc) {
			int same = 1;
			for (unsigned t = 0; t < NQ; t++) {
				struct index_result a = result(toks, 0), b = result(toks2, 1);
				same &= po->search(ix, &k, qd + t * G * D, G, N / 50, &a) == 0 &&
					po->search(back, &k, qd + t * G * D, G, N / 50, &b) == 0 &&
					a.n_tokens == b.n_tokens && !memcmp(toks, toks2, a.n_tokens * sizeof(uint64_t));
			}
			CHECK(same, "quest format %u blob searches differently once loaded", olds[o].version);
			CHECK(po->memory(back) == po->memory(ix), "quest format %u blob: %zu bytes loaded, %zu built",
			      olds[o].version, po->memory(back), po->memory(ix));
			po->free(back);
			back = NULL;
		}
		if (o == 1) {
			/* format 2 with a page's max below its min, and with dtype 2 */
			const float low = -1e30f;
			memcpy(v + 16 + 20 + (nf - D - 1) * 4, &low, 4);
			CHECK(po->load(v, 16 + at, &k, &back) == -EBADMSG, "quest: an old blob's max below its min loaded");
			const uint32_t two = 2;
			memcpy(v + 16 + 16, &two, 4);
			CHECK(po->load(v, 16 + at, &k, &back) == -EBADMSG, "quest blob with dtype 2 loaded");
		}
		free(v);
	}
	/* format 5: a NaN or a negative step, a page's min above its max */
	const size_t step_at = 16 + 20, rows_at = step_at + 4 * (size_t)D;
	const float bad_steps[2] = { NAN, -1.0f };
	for (unsigned b = 0; b < 2; b++) {
		float keep;
		const size_t at = step_at + 4 * (check_rand(&seed) % D);
		memcpy(&keep, blob + at, 4);
		memcpy(blob + at, &bad_steps[b], 4);
		CHECK(po->load(blob, len, &k, &back) == -EBADMSG, "quest: a step of %g loaded", bad_steps[b]);
		memcpy(blob + at, &keep, 4);
	}
	const size_t p = check_rand(&seed) % pages, i = check_rand(&seed) % D;
	const uint8_t keep_mx = blob[rows_at + p * 2 * D + i], keep_mn = blob[rows_at + p * 2 * D + D + i];
	blob[rows_at + p * 2 * D + i] = (uint8_t)(int8_t)-100;
	blob[rows_at + p * 2 * D + D + i] = (uint8_t)(int8_t)100;
	CHECK(po->load(blob, len, &k, &back) == -EBADMSG, "quest: a stepped min above its max loaded");
	blob[rows_at + p * 2 * D + i] = keep_mx;
	blob[rows_at + p * 2 * D + D + i] = keep_mn;
	CHECK(po->load(blob, len, &k, &back) == 0, "quest: the restored blob loads");
	po->free(back);
	free(body);
	free(rows);
	free(blob);
	po->free(ix);
}

/* The distinct 16-token pages of sorted tokens. */
static uint64_t pages_of(const uint64_t *t, uint64_t n)
{
	uint64_t c = 0;
	for (uint64_t i = 0; i < n; i++)
		c += !i || t[i] / 16 != t[i - 1] / 16;
	return c;
}

/*
 * index_result.cohere on quest rerank 4 at 5 %: the pick keeps its size
 * and the best 1 - cohere of the plain pick (the same scores rank both),
 * holds no more pages than it (fewer over the queries), and keeps most
 * of the mass (measured 0.989 against 0.996 of the best at 0.4; floor
 * 0.97 of the plain pick's).
 * Quest's own search ignores it; outside [0, 1) it is refused.
 */
static void quest_cohere(void)
{
	const struct policy_ops *po = policy_ops_get(POLICY_QUEST);
	const struct index_keys k = { .k = keys, .n = N, .d = D };
	struct index *ix[2] = { NULL, NULL };
	for (int m = 0; m < 2; m++) {
		const struct index_build_params bp = { .threads = 1, .group = G, .rerank = m ? 4.0f : 0.0f };
		CHECK(po->build(&k, &bp, &ix[m]) == 0, "quest build %d", m);
		if (!ix[m])
			return;
	}
	const uint64_t B = N / 20, core = B - (uint64_t)(0.4 * (double)B);
	uint64_t pages[2] = { 0, 0 }, worse = 0, short_core = 0;
	double mass[2] = { 0, 0 };
	int ok = 1;
	for (unsigned t = 0; t < NQ; t++) {
		const float *q = qd + t * G * D;
		struct index_result r0 = result(toks, 0), r1 = result(toks2, 1);
		r1.cohere = 0.4f;
		ok &= po->search(ix[1], &k, q, G, B, &r0) == 0 && po->search(ix[1], &k, q, G, B, &r1) == 0;
		ok &= r0.n_tokens == B && r1.n_tokens == B && valid(&r1, B);
		uint64_t common = 0;
		for (uint64_t i = 0, j = 0; i < r0.n_tokens && j < r1.n_tokens;)
			if (toks[i] == toks2[j])
				common++, i++, j++;
			else if (toks[i] < toks2[j])
				i++;
			else
				j++;
		short_core += common < core;
		const uint64_t p0 = pages_of(toks, r0.n_tokens), p1 = pages_of(toks2, r1.n_tokens);
		worse += p1 > p0;
		pages[0] += p0;
		pages[1] += p1;
		mass[0] += mass_ratio(q, toks, r0.n_tokens);
		mass[1] += mass_ratio(q, toks2, r1.n_tokens);
		/* Quest's own ignores it */
		r0 = result(toks, 0);
		r1 = result(toks2, 1);
		r1.cohere = 0.4f;
		ok &= po->search(ix[0], &k, q, G, B, &r0) == 0 && po->search(ix[0], &k, q, G, B, &r1) == 0 &&
		      r0.n_tokens == r1.n_tokens && !memcmp(toks, toks2, r0.n_tokens * sizeof(uint64_t));
	}
	printf("quest rerank 4 cohere 0.4: pages %.1f -> %.1f a query, mass/best %.3f -> %.3f\n",
	       (double)pages[0] / NQ, (double)pages[1] / NQ, mass[0] / NQ, mass[1] / NQ);
	CHECK(ok, "quest cohere: searches failed or came short");
	CHECK(!short_core, "quest cohere: %llu picks lost part of the plain pick's best %llu",
	      (unsigned long long)short_core, (unsigned long long)core);
	CHECK(!worse && pages[1] < pages[0], "quest cohere: pages %llu -> %llu (%llu queries worse)",
	      (unsigned long long)pages[0], (unsigned long long)pages[1], (unsigned long long)worse);
	CHECK(mass[1] >= 0.97 * mass[0], "quest cohere: mass %.3f against %.3f", mass[1] / NQ, mass[0] / NQ);
	static const float bad[] = { -0.1f, 1.0f, NAN };
	for (unsigned b = 0; b < 3; b++) {
		struct index_result r = result(toks, 0);
		r.cohere = bad[b];
		CHECK(po->search(ix[1], &k, qd, G, B, &r) == -EINVAL, "quest cohere %g accepted", bad[b]);
	}
	po->free(ix[0]);
	po->free(ix[1]);
}

int main(void)
{
	/* the data and the builds are fixed, so the floors are regressions, not luck;
	 * the seed drives the rest (blob damage, Quest's bound cases, races) */
	seed = DATA_SEED;
	make_data();
	seed = check_seed();

	nibble_dots();
	bounds_i8q();
	exp_rows();
	selection();
	group_mass();
	CHECK(policy_ops_get(POLICY_EXACT) == NULL && index_ops_get(POLICY_EXACT)->ops == NULL, "exact has no index");
	static const char *const names[] = { "exact", "quest", "blocks", "centroids", "centroids2", "faiss-ivf",
					     "faiss-hnsw", "ann", "episodic" };
	for (unsigned p = 0; p < sizeof(names) / sizeof(names[0]); p++)
		CHECK(index_ops_by_name(names[p]) && index_ops_by_name(names[p])->policy == p &&
		      (p == 0 || !strcmp(policy_ops_get(p)->name, names[p])), "policy %u is %s", p, names[p]);
	CHECK(index_ops_by_name("nope") == NULL && policy_ops_get(POLICY_COUNT) == NULL, "unknown policy");

	quest_bounds();
	for (unsigned c = 0; c < sizeof(configs) / sizeof(configs[0]); c++)
		run(&configs[c]);

	hierarchy();
	estimates();
	blocks_blobs();
	quest_blobs();
	code_weights_q8();
	quest_cohere();
	return check_exit();
}
