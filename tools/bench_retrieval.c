/*
 * mnemo-bench retrieval --trace FILE: every policy at a sweep of budgets on
 * a trace's decode queries, scored against exact attention computed in the
 * same run (DESIGN.md §8, fields of §9).
 *
 * Per KV head (up to --heads), per decode query group:
 *   exact     full attention, timed: the baseline and the reference;
 *   p         the full softmax of each query head, for the fidelity metrics;
 *   policy    search + attention over the picked tokens (+ estimates), timed.
 * Metrics are averaged over query heads and queries; times are per group.
 *
 * Two oracles: "oracle" divides each query head's mass by that head's own
 * best |S| tokens, a set that no shared pick can be for every head at once;
 * "group oracle" divides the group's summed mass by that of the best set a
 * KV head can pick for its group (the |S| tokens of highest summed
 * probability), the best possible set of equal size under ATTEND's one
 * pick per KV head. The group oracle is at least the per-head one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench_retrieval.h"
#include "bench_segment.h"
#include "bench_util.h"
#include "kernels.h"
#include "policy.h"
#include "safetensors.h"
#include "sparse.h"

static int cmp_float_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x > y ? -1 : x < y;
}

/* The sum of the @p k largest of @p p[n] (selection on a copy). */
static double top_mass(const float *p, uint64_t n, uint64_t k, float *scratch)
{
	if (k >= n) {
		double s = 0;
		for (uint64_t i = 0; i < n; i++)
			s += p[i];
		return s;
	}
	memcpy(scratch, p, n * sizeof(float));
	/* quickselect for the k-th largest, then sum the ones above it */
	uint64_t lo = 0, hi = n - 1, want = k - 1;
	while (lo < hi) {
		float piv = scratch[(lo + hi) / 2];
		uint64_t i = lo, j = hi;
		while (i <= j) {
			while (scratch[i] > piv)
				i++;
			while (scratch[j] < piv)
				j--;
			if (i <= j) {
				float t = scratch[i];
				scratch[i] = scratch[j];
				scratch[j] = t;
				i++;
				if (j == 0)
					break;
				j--;
			}
		}
		if (want <= j)
			hi = j;
		else if (want >= i)
			lo = i;
		else
			break;
	}
	double s = 0;
	for (uint64_t i = 0; i < k; i++)
		s += scratch[i];
	return s;
}

struct series {
	double mass, oracle, group_oracle, top100, err, lse_err, scanned, loaded, blocks16;
	double *ms, *search_ms;
	size_t n_ms, n, n_groups;
};

static void emit(const struct bench_retrieval_opts *o, const char *policy, double budget_frac,
		 uint64_t budget, uint64_t N, struct series *s, double exact_p50, double build_s)
{
	double k = s->n ? (double)s->n : 1;
	double p50 = pct(s->ms, s->n_ms, 0.5), p99 = pct(s->ms, s->n_ms, 0.99);
	double s50 = pct(s->search_ms, s->n_ms, 0.5);
	if (o->json)
		printf("{\"suite\":\"retrieval\",\"policy\":\"%s\",\"budget\":%" PRIu64 ",\"budget_frac\":%.4f,"
		       "\"tokens\":%" PRIu64 ",\"mass_recall\":%.4f,\"oracle_mass_recall\":%.4f,"
		       "\"group_oracle_mass_recall\":%.4f,"
		       "\"top100_recall\":%.4f,\"out_rel_err\":%.4f,\"lse_abs_err\":%.4f,\"scanned_frac\":%.5f,"
		       "\"loaded_frac\":%.5f,\"search_p50_ms\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"exact_p50_ms\":%.3f,"
		       "\"ratio\":%.3f,\"ratio_of\":\"exact_p50_ms/p50_ms\",\"build_s\":%.2f,\"blocks16_frac\":%.5f}\n",
		       policy, budget, budget_frac, N, s->mass / k, s->oracle / k, s->group_oracle / (s->n_groups ? (double)s->n_groups : 1),
		       s->top100 / k, s->err / k, s->lse_err / k, s->scanned / k, s->loaded / k, s50, p50, p99, exact_p50,
		       p50 > 0 ? exact_p50 / p50 : 0, build_s, s->blocks16 / k);
	else
		printf("%-11s %6.3f %7" PRIu64 " | mass %.3f oracle %.3f group %.3f top100 %.3f | err %.4f lse %.4f | "
		       "scanned %.4f loaded %.4f blocks16 %.4f | search %6.3f p50 %7.3f ms p99 %7.3f (exact %7.3f, %5.1fx) | build %6.2f s\n",
		       policy, budget_frac, budget, s->mass / k, s->oracle / k, s->group_oracle / (s->n_groups ? (double)s->n_groups : 1),
		       s->top100 / k, s->err / k,
		       s->lse_err / k, s->scanned / k, s->loaded / k, s->blocks16 / k, s50, p50, p99, exact_p50,
		       p50 > 0 ? exact_p50 / p50 : 0, build_s);
}

/* The cache file of one index: keyed by what changes it. */
static void cache_path(char *out, size_t cap, const struct bench_retrieval_opts *o, const char *policy, uint64_t h,
		       uint64_t N)
{
	const char *base = strrchr(o->trace, '/');
	base = base ? base + 1 : o->trace;
	snprintf(out, cap, "%s/%s-%s-l%u-h%" PRIu64 "-n%" PRIu64 "-cf%g-rr%g.idx", o->index_dir, base, policy, o->layer, h,
		 N, o->coarse_factor, o->rerank);
}

/* A cached index, or -ENOENT. */
static int cache_load(const char *path, const struct policy_ops *po, const struct index_keys *keys,
		      struct index **out)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -ENOENT;
	int rc = -EIO;
	uint8_t *buf = NULL;
	if (fseek(f, 0, SEEK_END) == 0) {
		long len = ftell(f);
		if (len > 0 && (buf = malloc((size_t)len)) && fseek(f, 0, SEEK_SET) == 0 &&
		    fread(buf, 1, (size_t)len, f) == (size_t)len)
			rc = po->load(buf, (size_t)len, keys, out);
	}
	free(buf);
	fclose(f);
	return rc;
}

static void cache_save(const char *path, const struct policy_ops *po, const struct index *ix)
{
	uint8_t *buf;
	size_t len;
	if (po->save(ix, &buf, &len))
		return;
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "wb");
	int ok = f && fwrite(buf, 1, len, f) == len;
	if (f && fclose(f))
		ok = 0;
	if (ok && rename(tmp, path) == 0)
		fprintf(stderr, "mnemo-bench: saved %s\n", path);
	else
		unlink(tmp);
	free(buf);
}

int bench_retrieval(const struct bench_retrieval_opts *o)
{
	char err[512];
	struct st_file *f;
	int rc = st_open(o->trace, &f, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		return rc;
	}
	const struct st_tensor *tk, *tv, *tq, *tp = NULL;
	if ((rc = st_find_rank(f, "k", 4, &tk, err, sizeof(err))) ||
	    (rc = st_find_rank(f, "v", 4, &tv, err, sizeof(err))) ||
	    (rc = st_find_rank(f, "q_decode", 4, &tq, err, sizeof(err)))) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		st_close(f);
		return rc;
	}
	if (st_find(f, "q_prefill"))
		st_find_rank(f, "q_prefill", 4, &tp, err, sizeof(err));
	const uint64_t L = tk->shape[0], Hkv = tk->shape[1], N = tk->shape[2], d = tk->shape[3];
	const uint64_t Hq = tq->shape[1], T = tq->shape[2];
	enum kv_dtype dt;
	switch (tk->dtype) {
	case ST_F32: dt = KV_F32; break;
	case ST_F16: dt = KV_F16; break;
	case ST_BF16: dt = KV_BF16; break;
	default:
		fprintf(stderr, "mnemo-bench: %s: k must be F32, F16 or BF16\n", o->trace);
		st_close(f);
		return -EINVAL;
	}
	if (memcmp(tk->shape, tv->shape, sizeof(tk->shape)) || tv->dtype != tk->dtype || tq->shape[0] != L ||
	    tq->shape[3] != d || Hq % Hkv || d > ATTN_MAX_DIM || Hq / Hkv > ATTN_MAX_GROUP || o->layer >= L ||
	    N == 0 || T == 0 || (tq->dtype != ST_F32 && tq->dtype != ST_F16 && tq->dtype != ST_BF16)) {
		fprintf(stderr, "mnemo-bench: %s: shapes do not agree (k %" PRIu64 "x%" PRIu64 "x%" PRIu64 "x%" PRIu64
			", q_decode heads %" PRIu64 ", layer %u)\n", o->trace, L, Hkv, N, d, Hq, o->layer);
		st_close(f);
		return -EINVAL;
	}
	const unsigned G = (unsigned)(Hq / Hkv);
	const size_t es = kv_dtype_size(dt);
	const uint64_t heads = o->heads && o->heads < Hkv ? o->heads : Hkv;
	const uint64_t queries = o->queries && o->queries < T ? o->queries : T;
	const struct attn_kernels *kern = attn_kernels_best();
	enum kv_dtype qdt = tq->dtype == ST_F32 ? KV_F32 : tq->dtype == ST_F16 ? KV_F16 : KV_BF16;
	if (!o->json)
		printf("retrieval: %s: %" PRIu64 " tokens, layer %u, %" PRIu64 " of %" PRIu64 " KV heads, group %u, d %" PRIu64
		       ", %" PRIu64 " decode queries, kernels %s\n",
		       o->trace, N, o->layer, heads, Hkv, G, d, queries, kern->name);
	fflush(stdout);

	float *kf = NULL, *vf = malloc(N * d * sizeof(float));
	/* huge pages where the kernel leaves them to madvise: a policy reading
	 * keys at random (ann) pays a TLB miss per key otherwise, which mnemod
	 * avoids the same way */
	if (posix_memalign((void **)&kf, 2u << 20, N * d * sizeof(float)))
		kf = NULL;
	else
		madvise(kf, N * d * sizeof(float), MADV_HUGEPAGE);
	float *p = malloc((size_t)(G + 1) * N * sizeof(float)), *scratch = malloc(N * sizeof(float));
	uint8_t *touched = calloc(N / 16 + 1, 1);   /* the 16-token blocks a pick holds */
	float *q = malloc((size_t)queries * G * d * sizeof(float));
	uint64_t *ids = malloc(N * sizeof(uint64_t));
	uint32_t *runs = malloc((N + 1) * 2 * sizeof(uint32_t));
	float *eo = malloc((size_t)queries * G * d * 4), *el = malloc((size_t)queries * G * 4);
	if (!kf || !vf || !p || !scratch || !q || !ids || !runs || !eo || !el) {
		rc = -ENOMEM;
		goto out;
	}
	unsigned n_pol = 0;
	const struct policy_ops *pols[16];
	for (unsigned i = 0; i < o->n_policies; i++) {
		const struct index_ops *io = index_ops_by_name(o->policies[i]);
		const struct policy_ops *po = io ? policy_ops_get(io->policy) : NULL;
		if (!io) {
			fprintf(stderr, "mnemo-bench: unknown policy %s\n", o->policies[i]);
			rc = -EINVAL;
			goto out;
		}
		if (po)
			pols[n_pol++] = po;
	}
	/* per (policy, budget): accumulated over heads */
	struct series *acc = calloc((size_t)(n_pol + 1) * o->n_budgets, sizeof(*acc));
	double *build_s = calloc(n_pol + 1, sizeof(double));
	double *exact_ms = malloc(sizeof(double) * heads * queries);
	size_t n_exact = 0;
	for (size_t i = 0; i < (size_t)(n_pol + 1) * o->n_budgets; i++)
	{
		acc[i].ms = malloc(sizeof(double) * heads * queries);
		acc[i].search_ms = malloc(sizeof(double) * heads * queries);
	}
	/* episodic's events: the layer's, found once (surprise or novelty, refined over every KV head) */
	struct seg_layer_out events = { 0 };
	int events_done = 0;
	float thr100[ATTN_MAX_GROUP];
	static float est_key[4096 * 4], est_cnt[4096], est_vsum[4096 * 4];
	static float o_[ATTN_MAX_GROUP * ATTN_MAX_DIM], l_[ATTN_MAX_GROUP];
	const unsigned est_cap = (unsigned)(4096 * 4 / d);

	for (uint64_t h = 0; h < heads; h++) {
		const uint8_t *kraw = (const uint8_t *)tk->data + ((o->layer * Hkv + h) * N * d) * es;
		const uint8_t *vraw = (const uint8_t *)tv->data + ((o->layer * Hkv + h) * N * d) * es;
		for (uint64_t i = 0; i < N * d; i++) {
			kf[i] = kv_load(dt, kraw, i);
			vf[i] = kv_load(dt, vraw, i);
		}
		const float scale = 1.0f / sqrtf((float)d);
		for (uint64_t t = 0; t < queries; t++)
			for (unsigned g = 0; g < G; g++)
				for (uint64_t j = 0; j < d; j++)
					q[(t * G + g) * d + j] = scale *
						kv_load(qdt, tq->data, (((o->layer * Hq + h * G + g) * T + t) * d + j));
		struct kv_rows rows = { .k = kraw, .v = vraw, .stride = d * es, .dtype = dt };
		/* exact: the baseline's time, and the reference */
		for (uint64_t i = 0; i < N; i++)
			ids[i] = i;
		for (uint64_t t = 0; t < queries; t++) {
			double t0 = now_s();
			float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
			float *oo = eo + t * G * d;
			attn_state_init(G, (unsigned)d, m, l, oo);
			for (uint64_t i = 0; i < N; i += ATTN_MAX_BLOCK) {
				unsigned n = (unsigned)(N - i < ATTN_MAX_BLOCK ? N - i : ATTN_MAX_BLOCK);
				kern->block[dt](q + t * G * d, G, (unsigned)d, kraw + i * d * es, vraw + i * d * es, n, m, l, oo);
			}
			attn_state_finish(G, (unsigned)d, m, l, oo, oo, el + t * G);
			exact_ms[n_exact++] = (now_s() - t0) * 1e3;
		}
		/* prefill queries for the policies that calibrate on them */
		float *pq = NULL;
		uint64_t P = 0;
		if (tp && tp->shape[1] == Hq && tp->shape[3] == d) {
			P = tp->shape[2] < 4096 ? tp->shape[2] : 4096;
			pq = malloc(P * G * d * sizeof(float));
			enum kv_dtype pdt = tp->dtype == ST_F32 ? KV_F32 : tp->dtype == ST_F16 ? KV_F16 : KV_BF16;
			for (uint64_t t = 0; t < P; t++)
				for (unsigned g = 0; g < G; g++)
					for (uint64_t j = 0; j < d; j++)
						pq[(t * G + g) * d + j] = scale *
							kv_load(pdt, tp->data, (((o->layer * Hq + h * G + g) * tp->shape[2] +
										  tp->shape[2] - P + t) * d + j));
		}
		struct index_keys keys = { .k = kf, .n = N, .d = (unsigned)d };
		struct index *ixs[16] = { 0 };
		for (unsigned pi = 0; pi < n_pol; pi++) {
			struct index_build_params bp = { .seed = 1, .prefill_q = pq, .n_prefill = P, .group = G,
							 .v = vf, .coarse_factor = (float)o->coarse_factor,
							 .rerank = (float)o->rerank };
			double t0 = now_s();
			char path[4096];
			if (o->index_dir)
			{
				char name[64];
				snprintf(name, sizeof(name), strcmp(pols[pi]->name, "episodic") ? "%s" : "%s-g%g",
					 pols[pi]->name, o->gamma > 0 ? o->gamma : 1.0);
				cache_path(path, sizeof(path), o, name, h, N);
			}
			if (!o->index_dir || cache_load(path, pols[pi], &keys, &ixs[pi]) != 0) {
				if (!strcmp(pols[pi]->name, "episodic")) {
					if (!events_done) {
						double e0 = now_s();
						int used = 0;
						if ((rc = bench_trace_events(f, o->layer, 0, 1, SEG_MODULARITY, (float)o->gamma,
									     0, 0, &events, &used)))
							goto out_free;
						events_done = 1;
						const double seg_s = now_s() - e0;
						/* the layer's segmentation is reported on its own, not in a head's build */
						t0 += seg_s;
						if (!o->json)
							printf("episodic: %" PRIu64 " events from %s, gamma %g, refined over %"
							       PRIu64 " KV heads in %.1f s (not in build_s)\n", events.n_ev,
							       used ? "surprise" : "key novelty", o->gamma > 0 ? o->gamma : 1.0,
							       Hkv, seg_s);
						else
							printf("{\"suite\":\"retrieval\",\"metric\":\"events\",\"events\":%" PRIu64
							       ",\"source\":\"%s\",\"gamma\":%g,\"kv_heads\":%" PRIu64
							       ",\"seconds\":%.2f}\n", events.n_ev, used ? "surprise" : "novelty",
							       o->gamma > 0 ? o->gamma : 1.0, Hkv, seg_s);
					}
					bp.event_starts = events.starts;
					bp.n_events = events.n_ev;
				}
				rc = pols[pi]->build(&keys, &bp, &ixs[pi]);
				if (!rc && o->index_dir)
					cache_save(path, pols[pi], ixs[pi]);
			} else if (!o->json) {
				printf("%s head %" PRIu64 ": loaded from %s (build_s counts the load)\n", pols[pi]->name, h,
				       path);
			}
			if (!rc && o->beam_factor > 0)
				index_ann_set_beam(ixs[pi], (float)o->beam_factor);
			/* policies that group rows their own way get them, as mnemod does */
			if (!rc && pols[pi]->attach_rows) {
				struct index_rows ir = { .k = kraw, .v = vraw, .stride = d * es, .dtype = dt };
				rc = pols[pi]->attach_rows(ixs[pi], &ir);
			}
			build_s[pi] += now_s() - t0;
			if (rc) {
				fprintf(stderr, "mnemo-bench: %s build: %s\n", pols[pi]->name, strerror(-rc));
				goto out_free;
			}
		}
		for (uint64_t t = 0; t < queries; t++) {
			const float *qq = q + t * G * d;
			/* the exact softmax of each query head, once per query */
			for (unsigned g = 0; g < G; g++) {
				float *pg = p + (size_t)g * N;
				const float lse = el[t * G + g];
				for (uint64_t i = 0; i < N; i++) {
					float sc = 0;
					for (uint64_t j = 0; j < d; j++)
						sc += qq[g * d + j] * kf[i * d + j];
					pg[i] = expf(sc - lse);
				}
				uint64_t k100 = N < 100 ? N : 100;
				top_mass(pg, N, k100, scratch);
				qsort(scratch, k100, sizeof(float), cmp_float_desc);
				thr100[g] = scratch[k100 - 1];
			}
			/* the group's summed probabilities: what the group oracle ranks by */
			float *psum = p + (size_t)G * N;
			for (uint64_t i = 0; i < N; i++) {
				float a = 0;
				for (unsigned g = 0; g < G; g++)
					a += p[(size_t)g * N + i];
				psum[i] = a;
			}
			for (unsigned pi = 0; pi <= n_pol; pi++) {
				const struct policy_ops *po = pi < n_pol ? pols[pi] : NULL;
				for (unsigned bi = 0; bi < o->n_budgets; bi++) {
					double bf = o->budgets[bi];
					uint64_t budget = bf >= 1.0 ? (uint64_t)bf : (uint64_t)(bf * (double)N + 0.5);
					if (budget < 1)
						budget = 1;
					if (budget > N)
						budget = N;
					struct series *sr = &acc[pi * o->n_budgets + bi];
					struct index_result res = { .tokens = ids, .est_cap = est_cap, .est_key = est_key,
								    .est_count = est_cnt, .est_vsum = est_vsum,
								    .runs = runs, .runs_cap = N + 1, .cohere = (float)o->cohere };
					double t0 = now_s();
					if (po) {
						if ((rc = po->search(ixs[pi], &keys, qq, G, budget, &res))) {
							fprintf(stderr, "mnemo-bench: %s search: %s\n", po->name, strerror(-rc));
							goto out_free;
						}
					} else {
						/* the first tokens: what a fixed budget without an index keeps */
						for (uint64_t i = 0; i < budget; i++)
							ids[i] = i;
						res.n_tokens = budget;
						res.scanned = budget;
					}
					double t1 = now_s();
					struct kv_estimates est = { .n = res.n_est, .key = est_key, .count = est_cnt,
								    .vsum = est_vsum };
					const struct index_rows *ir = po && po->rows ? po->rows(ixs[pi]) : NULL;
					if (ir) {
						struct kv_rows own = { .k = ir->k, .v = ir->v, .stride = ir->stride,
								       .dtype = (enum kv_dtype)ir->dtype };
						attend_runs(kern, qq, G, (unsigned)d, &own, runs, res.n_runs, &est, o_, l_);
					} else {
						attend_sparse(kern, qq, G, (unsigned)d, &rows, ids, res.n_tokens, &est, o_,
							      l_);
					}
					sr->search_ms[sr->n_ms] = (t1 - t0) * 1e3;
					sr->ms[sr->n_ms++] = (now_s() - t0) * 1e3;
					{
						double got = 0;
						for (uint64_t i = 0; i < res.n_tokens; i++)
							got += psum[ids[i]];
						double best = top_mass(psum, N, res.n_tokens ? res.n_tokens : 1, scratch);
						sr->group_oracle += best > 0 ? fmin(got / best, 1.0) : 1;
						sr->n_groups++;
					}
					for (unsigned g = 0; g < G; g++) {
						const float *pg = p + (size_t)g * N;
						const float lse = el[t * G + g];
						double mass = 0;
						uint64_t hit = 0;
						for (uint64_t i = 0; i < res.n_tokens; i++) {
							mass += pg[ids[i]];
							hit += pg[ids[i]] >= thr100[g];
						}
						uint64_t k100 = N < 100 ? N : 100;
						double best = top_mass(pg, N, res.n_tokens ? res.n_tokens : 1, scratch);
						double num = 0, den = 0;
						for (uint64_t j = 0; j < d; j++) {
							double e = o_[g * d + j] - eo[(t * G + g) * d + j];
							num += e * e;
							den += (double)eo[(t * G + g) * d + j] * eo[(t * G + g) * d + j];
						}
						sr->mass += mass;
						sr->oracle += best > 0 ? fmin(mass / best, 1.0) : 1;
						sr->top100 += (double)(hit < k100 ? hit : k100) / (double)k100;
						sr->err += sqrt(num / (den > 0 ? den : 1));
						sr->lse_err += fabs((double)l_[g] - lse);
						sr->scanned += (double)res.scanned / (double)N;
						sr->loaded += (double)res.n_tokens / (double)N;
						if (touched) {
							uint64_t nb = 0;
							for (uint64_t i = 0; i < res.n_tokens; i++)
								if (res.tokens[i] < N && !touched[res.tokens[i] / 16]) {
									touched[res.tokens[i] / 16] = 1;
									nb++;
								}
							for (uint64_t i = 0; i < res.n_tokens; i++)
								if (res.tokens[i] < N)
									touched[res.tokens[i] / 16] = 0;
							sr->blocks16 += (double)nb / (double)((N + 15) / 16);
						}
						sr->n++;
					}
				}
			}
			if (isatty(2) && (t + 1) % 8 == 0)
				fprintf(stderr, "\rhead %" PRIu64 "/%" PRIu64 " query %" PRIu64 "/%" PRIu64 "   ", h + 1, heads,
					t + 1, queries);
		}
		for (unsigned pi = 0; pi < n_pol; pi++)
			pols[pi]->free(ixs[pi]);
		free(pq);
	}
	if (isatty(2))
		fprintf(stderr, "\r%40s\r", "");
	double exact_p50 = pct(exact_ms, n_exact, 0.5);
	for (unsigned pi = 0; pi <= n_pol; pi++)
		for (unsigned bi = 0; bi < o->n_budgets; bi++) {
			double bf = o->budgets[bi];
			uint64_t budget = bf >= 1.0 ? (uint64_t)bf : (uint64_t)(bf * (double)N + 0.5);
			char label[48];
			/* a reranking quest is told apart from Quest's own search */
			snprintf(label, sizeof(label), "%s", pi < n_pol ? pols[pi]->name : "exact-first");
			if (pi < n_pol && !strcmp(pols[pi]->name, "quest") && o->rerank > 1)
				snprintf(label, sizeof(label), o->cohere > 0 ? "quest-r%g-c%g" : "quest-r%g", o->rerank,
					 o->cohere);
			emit(o, label, bf >= 1.0 ? bf / N : bf, budget, N,
			     &acc[pi * o->n_budgets + bi], exact_p50, build_s[pi] / (double)heads);
		}
	rc = 0;
out_free:
	for (size_t i = 0; i < (size_t)(n_pol + 1) * o->n_budgets; i++) {
		free(acc[i].ms);
		free(acc[i].search_ms);
	}
	free(acc);
	free(build_s);
	free(exact_ms);
	free(events.starts);
out:
	free(kf);
	free(vf);
	free(p);
	free(scratch);
	free(touched);
	free(q);
	free(ids);
	free(runs);
	free(eo);
	free(el);
	st_close(f);
	return rc;
}
