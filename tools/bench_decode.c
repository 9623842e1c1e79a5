/*
 * mnemo-bench decode --trace FILE: decode steps over every layer of a
 * preloaded trace, through a mnemod with its SSD tier and a host-RAM
 * budget (DESIGN.md §9 `decode`).
 *
 * The trace is preloaded with mnemo-preload (index builds timed apart),
 * then for each policy and budget, --steps decode steps: step t sends, for
 * every layer in order, the trace's decode queries of position t (q_decode)
 * as one ATTEND. Per step: the wall time of its layers, the SSD bytes
 * the daemon read, and where its ATTENDs spent the time (STAT before and
 * after: pick and fold passes, searches and block pins).
 *
 * The baseline, in the same run and under the same memory limit: exact
 * ATTEND of --exact-layers layers per step (spread over the layers), timed,
 * the step estimated as their mean times the layer count. On those layers
 * the policy's mass recall is exact: a policy that attends exactly over the
 * tokens it picks (no estimates) has lse = log sum over the picks of
 * exp(q.k / sqrt(d)), so exp(lse_policy - lse_exact) is the share of the
 * softmax mass it kept, per query head. The daemon runs with --estimates
 * off unless asked (--estimates on): with estimates, centroids* add
 * estimated clusters to their lse, and for them only the output's error
 * against exact is reported. The oracle (DESIGN.md section 9's oracle_mass_recall) is
 * computed by the bench from the trace's keys on the same layers: one pick
 * per KV head serves its whole query group, so the best pick of |S| tokens
 * is the |S| tokens of highest probability summed over the group, and the
 * recall is the group's kept mass over that set's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_daemon.h"
#include "bench_decode.h"
#include "bench_util.h"
#include "index.h"
#include "kernels.h"
#include "safetensors.h"

/* The daemon's SSD reads and host-cache block pins so far. */
struct io_counts {
	uint64_t bytes, reads, hits, misses;
	uint64_t pick_ns, search_ns, fold_ns, pin_ns; /* policy ATTENDs' phases */
	uint64_t cpu_ns;                              /* the daemon's CPU time */
};

static int stat_reads(mnemo_client *c, struct io_counts *n)
{
	struct mnemo_daemon_info di;
	int rc = mnemo_stat_daemon(c, &di);
	*n = (struct io_counts){ di.ssd_read_bytes, di.ssd_reads, di.hits, di.misses,
				 di.policy_pick_ns, di.policy_search_ns, di.policy_fold_ns, di.policy_pin_ns, di.cpu_ns };
	return rc;
}

/* The largest @p k of @p v[0..n) summed (v reordered): quickselect. */
static double top_sum(float *v, size_t n, size_t k)
{
	if (k >= n) {
		double s = 0;
		for (size_t i = 0; i < n; i++)
			s += v[i];
		return s;
	}
	size_t lo = 0, hi = n;      /* the k-th largest lies in [lo, hi) */
	uint64_t r = 0x9e3779b97f4a7c15ull;
	while (hi - lo > 1) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		const float piv = v[lo + (r >> 33) % (hi - lo)];
		size_t a = lo, b = hi;   /* [lo,a) > piv, [b,hi) <= piv after the pass */
		for (size_t i = lo; i < b;) {
			if (v[i] > piv) {
				float t = v[i]; v[i] = v[a]; v[a] = t;
				a++;
				i++;
			} else if (v[i] < piv) {
				b--;
				float t = v[i]; v[i] = v[b]; v[b] = t;
			} else {
				i++;
			}
		}
		/* [lo,a) > piv, [a,b) == piv, [b,hi) < piv */
		if (k < a)
			hi = a;
		else if (k < b)
			break;          /* the k-th is the pivot: [0,k) are the top k */
		else
			lo = b;
	}
	double s = 0;
	for (size_t i = 0; i < k; i++)
		s += v[i];
	return s;
}

/*
 * The group oracle of layer @p l at step @p t for every budget: for each KV
 * head, the probabilities of its query group (exp(q.k / sqrt(d) - lse), lse
 * the daemon's exact one) summed per token, and the sum of the largest
 * budget of them; out[g * n_budgets + bi].
 */
static int group_oracle(const struct st_tensor *tk, uint64_t l, const float *q, const float *lse,
			uint64_t Hq, const uint64_t *budgets, unsigned n_budgets, double *out)
{
	const uint64_t Hkv = tk->shape[1], N = tk->shape[2], d = tk->shape[3], G = Hq / Hkv;
	const enum kv_dtype kdt = tk->dtype == ST_F32 ? KV_F32 : tk->dtype == ST_F16 ? KV_F16 : KV_BF16;
	const float scale = 1.0f / sqrtf((float)d);
	float *p = malloc(N * sizeof(float)), *krow = malloc(d * sizeof(float));
	if (!p || !krow) {
		free(p);
		free(krow);
		return -ENOMEM;
	}
	for (uint64_t g = 0; g < Hkv; g++) {
		const size_t base = (size_t)((l * Hkv + g) * N) * d;
		for (uint64_t j = 0; j < N; j++) {
			for (uint64_t x = 0; x < d; x++)
				krow[x] = kv_load(kdt, tk->data, base + j * d + x);
			float acc = 0;
			for (uint64_t h = g * G; h < (g + 1) * G; h++) {
				float dot = 0;
				for (uint64_t x = 0; x < d; x++)
					dot += q[h * d + x] * krow[x];
				acc += expf(dot * scale - lse[h]);
			}
			p[j] = acc;
		}
		for (unsigned bi = 0; bi < n_budgets; bi++)
			out[g * n_budgets + bi] = top_sum(p, N, budgets[bi]);
	}
	free(p);
	free(krow);
	return 0;
}


int bench_decode(const char *argv0, const struct bench_decode_opts *o)
{
	char err[512];
	struct st_file *f;
	int rc = st_open(o->trace, &f, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		return rc;
	}
	const struct st_tensor *tk, *tq;
	if ((rc = st_find_rank(f, "k", 4, &tk, err, sizeof(err))) ||
	    (rc = st_find_rank(f, "q_decode", 4, &tq, err, sizeof(err)))) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		st_close(f);
		return rc;
	}
	const uint64_t L = tk->shape[0], Hkv = tk->shape[1], N = tk->shape[2], d = tk->shape[3];
	const uint64_t Hq = tq->shape[1], T = tq->shape[2];
	if (tq->shape[0] != L || tq->shape[3] != d || Hq % Hkv ||
	    (tq->dtype != ST_F32 && tq->dtype != ST_F16 && tq->dtype != ST_BF16)) {
		fprintf(stderr, "mnemo-bench: %s: q_decode does not match k\n", o->trace);
		st_close(f);
		return -EINVAL;
	}
	const enum kv_dtype qdt = tq->dtype == ST_F32 ? KV_F32 : tq->dtype == ST_F16 ? KV_F16 : KV_BF16;
	const uint64_t steps = o->steps && o->steps < T ? o->steps : T;
	const uint64_t kv_bytes = L * Hkv * N * d * 2 * st_dtype_size(tk->dtype);
	unsigned n_exact = o->exact_layers ? o->exact_layers : 1;
	if (n_exact > L)
		n_exact = (unsigned)L;

	/* the daemon, its SSD tier in --dir, and the trace preloaded and indexed */
	const char *base = o->dir ? o->dir : "/var/tmp";
	char dir[512], ssd[600], bin[4096], cmd[10000], pols[256] = "";
	snprintf(dir, sizeof(dir), "%s/mnemo-bench-decode-XXXXXX", base);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "mnemo-bench: mkdtemp in %s: %s\n", base, strerror(errno));
		st_close(f);
		return -errno;
	}
	snprintf(ssd, sizeof(ssd), "%s/ssd", dir);
	mnemo_client *c = bench_daemon_start(argv0, ssd, o->host_mem, o->estimates ? "on" : "off");
	bench_find_preload(bin, sizeof(bin));
	for (unsigned i = 0; i < o->n_policies; i++)
		snprintf(pols + strlen(pols), sizeof(pols) - strlen(pols), "%s%s", i ? "," : "", o->policies[i]);
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' --name decode --json --quiet --chunk 16384 %s%s '%s'", bin,
		 bench_daemon_socket(), o->n_policies ? "--policies " : "", pols, o->trace);
	double t0 = now_s();
	FILE *p = popen(cmd, "r");
	char line[16384] = "";
	size_t n = p ? fread(line, 1, sizeof(line) - 1, p) : 0;
	line[n] = 0;
	if (!p || pclose(p) != 0) {
		fprintf(stderr, "mnemo-bench: %s failed\n", cmd);
		rc = -EIO;
		goto out_daemon;
	}
	const double preload_s = now_s() - t0;
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = 0;
	struct mnemo_context_info ci;
	if ((rc = mnemo_stat(c, 0, "decode", &ci))) {
		fprintf(stderr, "mnemo-bench: stat: %s\n", mnemo_last_error(c));
		goto out_daemon;
	}
	if (!o->json)
		printf("decode: %s: %" PRIu64 " tokens, %" PRIu64 " layers x %" PRIu64 "/%" PRIu64 " heads, d %" PRIu64
		       ", %.1f GiB of KV, host-mem %s; preloaded and indexed in %.0f s\n",
		       o->trace, N, L, Hkv, Hq, d, (double)kv_bytes / (1ull << 30), o->host_mem ? o->host_mem : "auto",
		       preload_s);
	else
		printf("{\"suite\":\"decode\",\"metric\":\"preload\",\"tokens\":%" PRIu64 ",\"layers\":%" PRIu64
		       ",\"kv_bytes\":%" PRIu64 ",\"seconds\":%.1f,\"preload\":%s}\n",
		       N, L, kv_bytes, preload_s, line[0] == '{' ? line : "null");
	fflush(stdout);

	double *oracle = NULL;
	const size_t nq = (size_t)Hq * d;
	float *q = malloc(nq * sizeof(float)), *o_ = malloc(nq * sizeof(float));
	float *lse_exact = malloc(steps * n_exact * Hq * sizeof(float)), *l_ = malloc(Hq * sizeof(float));
	float *o_exact = malloc(steps * n_exact * nq * sizeof(float));
	double *step_ms = malloc(steps * sizeof(double)), *exact_ms = malloc(steps * n_exact * sizeof(double));
	uint64_t *step_bytes = malloc(steps * sizeof(uint64_t)), *step_reads = malloc(steps * sizeof(uint64_t));
	uint64_t *step_hits = malloc(steps * sizeof(uint64_t)), *step_pins = malloc(steps * sizeof(uint64_t));
	if (!q || !o_ || !lse_exact || !l_ || !o_exact || !step_ms || !exact_ms || !step_bytes || !step_reads ||
	    !step_hits || !step_pins) {
		rc = -ENOMEM;
		goto out_free;
	}
	/* the queries of (layer, step), as the model has them (ATTEND scales them) */
#define LOAD_Q(l, t)                                                                                       \
	for (uint64_t h = 0; h < Hq; h++)                                                                   \
		for (uint64_t j = 0; j < d; j++)                                                            \
			q[h * d + j] = kv_load(qdt, tq->data, (((l) * Hq + h) * T + (t)) * d + j)
	/* exact, on layers spread over the model */
	for (uint64_t t = 0; t < steps; t++)
		for (unsigned e = 0; e < n_exact; e++) {
			const uint64_t l = (uint64_t)e * L / n_exact;
			LOAD_Q(l, t);
			double a = now_s();
			if ((rc = mnemo_attend(c, ci.id, (uint32_t)l, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q,
					       o_exact + (t * n_exact + e) * nq, lse_exact + (t * n_exact + e) * Hq, NULL))) {
				fprintf(stderr, "mnemo-bench: exact attend: %s\n", mnemo_last_error(c));
				goto out_free;
			}
			exact_ms[t * n_exact + e] = (now_s() - a) * 1e3;
		}
	/* the group oracle on those layers, for every budget */
	uint64_t budget_tok[16];
	for (unsigned bi = 0; bi < o->n_budgets; bi++) {
		const double bf = o->budgets[bi];
		uint64_t b = bf >= 1.0 ? (uint64_t)bf : (uint64_t)(bf * (double)N + 0.5);
		budget_tok[bi] = b < 1 ? 1 : b > UINT32_MAX ? UINT32_MAX : b;
	}
	const size_t n_or = (size_t)steps * n_exact * Hkv * o->n_budgets;
	oracle = malloc((n_or ? n_or : 1) * sizeof(double));
	if (!oracle) {
		rc = -ENOMEM;
		goto out_free;
	}
	if (!o->json)
		printf("oracle         the group oracle of %u layers x %" PRIu64 " steps, from the trace's keys...\n",
		       n_exact, steps);
	fflush(stdout);
	for (uint64_t t = 0; t < steps && o->n_budgets; t++)
		for (unsigned e = 0; e < n_exact; e++) {
			const uint64_t l = (uint64_t)e * L / n_exact;
			LOAD_Q(l, t);
			if ((rc = group_oracle(tk, l, q, lse_exact + (t * n_exact + e) * Hq, Hq, budget_tok,
					       o->n_budgets, oracle + ((t * n_exact + e) * Hkv) * o->n_budgets)))
				goto out_free;
		}
	const double exact_layer_ms = pct(exact_ms, steps * n_exact, 0.5);
	const double exact_step_ms = exact_layer_ms * (double)L;
	if (!o->json)
		printf("exact          one layer p50 %.1f ms (%u layers x %" PRIu64 " steps), a step of %" PRIu64
		       " layers estimated at %.0f ms\n", exact_layer_ms, n_exact, steps, L, exact_step_ms);
	for (unsigned pi = 0; pi < o->n_policies; pi++) {
		const struct index_ops *io = index_ops_by_name(o->policies[pi]);
		if (!io) {
			fprintf(stderr, "mnemo-bench: unknown policy %s\n", o->policies[pi]);
			rc = -EINVAL;
			goto out_free;
		}
		for (unsigned bi = 0; bi < o->n_budgets; bi++) {
			const double bf = o->budgets[bi];
			uint64_t budget = bf >= 1.0 ? (uint64_t)bf : (uint64_t)(bf * (double)N + 0.5);
			budget = budget < 1 ? 1 : budget > UINT32_MAX ? UINT32_MAX : budget;
			const int estimates =
				o->estimates && (io->policy == POLICY_CENTROIDS || io->policy == POLICY_CENTROIDS2);
			double mass = 0, mass_min = 1, out_err = 0, orel = 0, orel_min = 1;
			uint64_t mass_n = 0, orel_n = 0;
			/* the daemon's phases, summed over the steps after the first */
			double ph_pick = 0, ph_search = 0, ph_fold = 0, ph_pin = 0, ph_cpu = 0;
			for (uint64_t t = 0; t < steps; t++) {
				struct io_counts c0, c1;
				stat_reads(c, &c0);
				double a = now_s();
				for (uint64_t l = 0; l < L; l++) {
					LOAD_Q(l, t);
					if ((rc = mnemo_attend_ex(c, ci.id, (uint32_t)l, (enum mnemo_policy)io->policy, (uint32_t)budget, 0,
								  UINT64_MAX, q, o_, l_, NULL))) {
						fprintf(stderr, "mnemo-bench: %s attend: %s\n", io->name, mnemo_last_error(c));
						goto out_free;
					}
					/* the exact layers: the mass this pick kept */
					for (unsigned e = 0; e < n_exact; e++)
						if ((uint64_t)e * L / n_exact == l)
							for (uint64_t h = 0; h < Hq; h++) {
								double m = exp((double)l_[h] -
									       lse_exact[(t * n_exact + e) * Hq + h]);
								m = m > 1 ? 1 : m;
								mass += m;
								mass_min = m < mass_min ? m : mass_min;
								mass_n++;
								const float *ox = o_exact + (t * n_exact + e) * nq + h * d;
								double num = 0, den = 0;
								for (uint64_t j = 0; j < d; j++) {
									num += pow(o_[h * d + j] - ox[j], 2);
									den += (double)ox[j] * ox[j];
								}
								out_err += sqrt(num / (den > 0 ? den : 1));
							}
					/* the same layers against the group oracle of this budget */
					for (unsigned e = 0; e < n_exact; e++)
						if ((uint64_t)e * L / n_exact == l)
							for (uint64_t g = 0; g < Hkv; g++) {
								const uint64_t G = Hq / Hkv;
								double kept = 0;
								for (uint64_t h = g * G; h < (g + 1) * G; h++)
									kept += fmin(1.0, exp((double)l_[h] -
										lse_exact[(t * n_exact + e) * Hq + h]));
								const double best =
									oracle[((t * n_exact + e) * Hkv + g) * o->n_budgets + bi];
								const double r = best > 0 ? fmin(1.0, kept / best) : 1.0;
								orel += r;
								orel_min = r < orel_min ? r : orel_min;
								orel_n++;
							}
				}
				step_ms[t] = (now_s() - a) * 1e3;
				stat_reads(c, &c1);
				step_bytes[t] = c1.bytes - c0.bytes;
				step_reads[t] = c1.reads - c0.reads;
				step_hits[t] = c1.hits - c0.hits;
				step_pins[t] = c1.hits - c0.hits + c1.misses - c0.misses;
				if (t > 0 || steps == 1) {
					ph_pick += (double)(c1.pick_ns - c0.pick_ns);
					ph_search += (double)(c1.search_ns - c0.search_ns);
					ph_fold += (double)(c1.fold_ns - c0.fold_ns);
					ph_pin += (double)(c1.pin_ns - c0.pin_ns);
					ph_cpu += (double)(c1.cpu_ns - c0.cpu_ns);
				}
			}
			/* after the first step: what a warm decode reads */
			double after = 0, ios = 0, hits = 0, pins = 0;
			for (uint64_t t = 1; t < steps; t++) {
				after += (double)step_bytes[t];
				ios += (double)step_reads[t];
				hits += (double)step_hits[t];
				pins += (double)step_pins[t];
			}
			if (steps == 1) {
				hits = (double)step_hits[0];
				pins = (double)step_pins[0];
			}
			const double hit_rate = pins > 0 ? hits / pins : 0;
			after = steps > 1 ? after / (double)(steps - 1) : (double)step_bytes[0];
			ios = steps > 1 ? ios / (double)(steps - 1) : (double)step_reads[0];
			double first = step_ms[0];
			const double ph_steps = steps > 1 ? (double)(steps - 1) : 1.0;
			ph_pick /= ph_steps * 1e6;
			ph_search /= ph_steps * 1e6;
			ph_fold /= ph_steps * 1e6;
			ph_pin /= ph_steps * 1e6;
			ph_cpu /= ph_steps * 1e6;
			/* pct() sorts: the percentiles from a copy, the series in step order */
			double *sorted = malloc(steps * sizeof(double));
			if (!sorted) {
				rc = -ENOMEM;
				goto out_free;
			}
			memcpy(sorted, step_ms, steps * sizeof(double));
			char mr[32] = "null", mrmin[32] = "null", om[32] = "null", ommin[32] = "null";
			if (!estimates && mass_n) {
				snprintf(mr, sizeof(mr), "%.4f", mass / (double)mass_n);
				snprintf(mrmin, sizeof(mrmin), "%.4f", mass_min);
			}
			if (!estimates && orel_n) {
				snprintf(om, sizeof(om), "%.4f", orel / (double)orel_n);
				snprintf(ommin, sizeof(ommin), "%.4f", orel_min);
			}
			double p50 = pct(sorted, steps, 0.5), p99 = pct(sorted, steps, 0.99);
			free(sorted);
			if (o->json) {
				printf("{\"suite\":\"decode\",\"policy\":\"%s\",\"budget\":%" PRIu64 ",\"budget_frac\":%.4f,"
				       "\"tokens\":%" PRIu64 ",\"layers\":%" PRIu64 ",\"steps\":%" PRIu64 ",\"step_p50_ms\":%.2f,"
				       "\"step_p99_ms\":%.2f,\"first_step_ms\":%.2f,\"exact_step_ms\":%.1f,\"ratio\":%.2f,"
				       "\"ratio_of\":\"exact_step_ms/step_p50_ms\",\"ssd_bytes_per_step\":%.0f,"
				       "\"ssd_frac_per_step\":%.6f,\"ssd_ios_per_step\":%.1f,\"host_hit_rate\":%.4f,\"mass_recall\":%s,"
				       "\"mass_recall_min\":%s,\"oracle_mass_recall\":%s,\"oracle_mass_recall_min\":%s,"
				       "\"out_rel_err\":%.4f,\"estimates\":%s,\"quest_rerank\":%g,\"quest_cohere\":%g,\"pick_ms_per_step\":%.1f,"
				       "\"search_ms_per_step\":%.1f,\"fold_ms_per_step\":%.1f,\"pin_ms_per_step\":%.1f,\"cpu_ms_per_step\":%.1f,"
				       "\"step_ms\":[",
				       io->name, budget, (double)budget / (double)N, N, L, steps, p50, p99, first,
				       exact_step_ms, exact_step_ms / p50, after, after / (double)kv_bytes, ios, hit_rate, mr, mrmin, om,
				       ommin, mass_n ? out_err / (double)mass_n : NAN, o->estimates ? "true" : "false",
				       io->policy == POLICY_QUEST ? o->quest_rerank : 0.0,
				       io->policy == POLICY_QUEST ? o->quest_cohere : 0.0, ph_pick, ph_search, ph_fold, ph_pin, ph_cpu);
				for (uint64_t t = 0; t < steps; t++)
					printf("%s%.2f", t ? "," : "", step_ms[t]);
				printf("]}\n");
			} else {
				printf("%-10s %6.3f %7" PRIu64 " | step p50 %7.1f ms p99 %7.1f (first %7.1f) | exact step "
				       "%7.0f ms, %5.1fx | SSD %.1f MiB/step (%.3f%% of KV, %.0f reads), host hits %.1f%% | mass recall %s "
				       "(min %s), of the group oracle %s (min %s) | out err %.4f | per step: pick %.0f ms (search %.0f "
				       "over the heads), fold %.0f ms (pins %.0f over the heads), mnemod's CPU %.0f ms\n",
				       io->name, (double)budget / (double)N, budget, p50, p99, first, exact_step_ms,
				       exact_step_ms / p50, after / (1 << 20), 100 * after / (double)kv_bytes, ios, 100 * hit_rate,
				       estimates ? "-" : mr, estimates ? "-" : mrmin, estimates ? "-" : om,
				       estimates ? "-" : ommin, mass_n ? out_err / (double)mass_n : NAN, ph_pick, ph_search, ph_fold,
				       ph_pin, ph_cpu);
			}
			fflush(stdout);
		}
	}
	/* one whole exact step, measured: the layer estimate above flatters exact when the
	 * layers it repeats stay in the host cache */
	if (o->exact_step) {
		struct io_counts c0, c1;
		stat_reads(c, &c0);
		double a = now_s();
		for (uint64_t l = 0; l < L; l++) {
			LOAD_Q(l, 0);
			if ((rc = mnemo_attend(c, ci.id, (uint32_t)l, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o_, l_, NULL))) {
				fprintf(stderr, "mnemo-bench: exact attend: %s\n", mnemo_last_error(c));
				goto out_free;
			}
		}
		const double ms = (now_s() - a) * 1e3;
		stat_reads(c, &c1);
		const uint64_t b0 = c0.bytes, b1 = c1.bytes, r0 = c0.reads, r1 = c1.reads;
		if (o->json)
			printf("{\"suite\":\"decode\",\"policy\":\"exact\",\"metric\":\"whole_step\",\"step_ms\":%.1f,"
			       "\"ssd_bytes\":%" PRIu64 ",\"ssd_ios\":%" PRIu64 ",\"layer_estimate_ms\":%.1f}\n",
			       ms, b1 - b0, r1 - r0, exact_step_ms);
		else
			printf("exact          a whole step of %" PRIu64 " layers, measured once: %.0f ms, %.1f GiB read from SSD "
			       "(the layer estimate said %.0f ms)\n", L, ms, (double)(b1 - b0) / (1ull << 30), exact_step_ms);
	}
	rc = 0;
out_free:
	free(oracle);
	free(q);
	free(o_);
	free(lse_exact);
	free(o_exact);
	free(l_);
	free(step_ms);
	free(exact_ms);
	free(step_bytes);
	free(step_reads);
	free(step_hits);
	free(step_pins);
out_daemon:
	mnemo_close(c);
	bench_daemon_stop();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "mnemo-bench: could not remove %s\n", dir);
	st_close(f);
	return rc;
}
