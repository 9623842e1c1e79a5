/*
 * mnemo-bench segment --trace FILE: EM-LLM's segmentation of one layer
 * (index/events.h) against the episodes the trace planted (kvgen's
 * `episode_boundaries`), from surprise and from key novelty, before and
 * after refinement on the key graph:
 *   f1         boundary F1, a found boundary matching a planted one within
 *              +-2 tokens (one to one, token 0 not counted);
 *   metric     modularity (or conductance) per refinement chunk, the mean
 *              over chunks, unrefined and refined;
 *   tokens/min the throughput of the whole of segmentation (keys converted
 *              to fp32 and de-rotated, novelty, the graph, refinement), one
 *              thread, against the 1M tokens per minute per layer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_segment.h"
#include "bench_util.h"
#include "kernels.h"

#define F1_TOLERANCE 2

struct trace_keys {
	const struct st_tensor *tk;
	unsigned layer;
	uint64_t Hkv, N, d;
	enum kv_dtype dt;
};

static int trace_keys(void *ctx, unsigned head, uint64_t t0, uint32_t cnt, float *out)
{
	const struct trace_keys *t = ctx;
	const uint64_t base = ((t->layer * t->Hkv + head) * t->N + t0) * t->d;
	for (uint64_t i = 0; i < (uint64_t)cnt * t->d; i++)
		out[i] = kv_load(t->dt, t->tk->data, base + i);
	return 0;
}

int bench_trace_events(struct st_file *f, unsigned layer, uint64_t heads, int refine, enum seg_metric metric,
		       float gamma, int no_surprise, unsigned threads, struct seg_layer_out *out, int *used_surprise)
{
	const struct seg_params sp = { .gamma = gamma };
	char err[512];
	const struct st_tensor *tk, *ts = NULL;
	if (st_find_rank(f, "k", 4, &tk, err, sizeof(err))) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		return -EINVAL;
	}
	struct trace_keys tkx = { .tk = tk, .layer = layer, .Hkv = tk->shape[1], .N = tk->shape[2], .d = tk->shape[3] };
	switch (tk->dtype) {
	case ST_F32: tkx.dt = KV_F32; break;
	case ST_F16: tkx.dt = KV_F16; break;
	case ST_BF16: tkx.dt = KV_BF16; break;
	default:
		fprintf(stderr, "mnemo-bench: k must be F32, F16 or BF16\n");
		return -EINVAL;
	}
	if (layer >= tk->shape[0]) {
		fprintf(stderr, "mnemo-bench: no layer %u\n", layer);
		return -EINVAL;
	}
	if (!no_surprise && st_find(f, "surprise") &&
	    (st_find_rank(f, "surprise", 1, &ts, err, sizeof(err)) || ts->dtype != ST_F32 || ts->shape[0] != tkx.N)) {
		fprintf(stderr, "mnemo-bench: surprise must be F32 [%" PRIu64 "]\n", tkx.N);
		return -EINVAL;
	}
	double theta = 0, first = 0;
	st_meta_f64(f, "rope_theta", &theta);
	st_meta_f64(f, "first_position", &first);
	struct seg_layer_src src = { .n = tkx.N, .heads = (unsigned)(heads && heads < tkx.Hkv ? heads : tkx.Hkv),
				     .d = (unsigned)tkx.d, .rope_theta = theta > 0 ? theta : 0,
				     .first_pos = first > 0 ? (uint64_t)first : 0, .keys = trace_keys, .ctx = &tkx };
	uint64_t *starts = NULL;
	int rc = 0;
	if (ts) {
		struct seg_state *st = seg_new(&sp);
		starts = malloc(tkx.N * sizeof(uint64_t));
		int64_t k = st && starts ? seg_feed(st, ts->data, (uint32_t)tkx.N, starts) : -ENOMEM;
		seg_free(st);
		if (k < 0) {
			free(starts);
			fprintf(stderr, "mnemo-bench: surprise: %s\n", strerror((int)-k));
			return (int)k;
		}
		src.starts = starts;
		src.n_starts = (uint64_t)k;
	}
	struct seg_layer_opts so = { .seg = sp, .refine = refine, .metric = metric, .threads = threads };
	rc = seg_layer(&src, &so, out);
	free(starts);
	if (rc)
		fprintf(stderr, "mnemo-bench: segmentation: %s\n", strerror(-rc));
	if (used_surprise)
		*used_surprise = ts != NULL;
	return rc;
}

/* Planted boundaries from the metadata "t0,t1,..." (token 0 dropped). */
static uint64_t *planted(struct st_file *f, uint64_t N, uint64_t *n_out)
{
	const char *s = st_meta(f, "episode_boundaries");
	if (!s)
		return NULL;
	uint64_t cap = 1, n = 0;
	for (const char *c = s; *c; c++)
		cap += *c == ',';
	uint64_t *b = malloc(cap * sizeof(uint64_t));
	for (const char *c = s; b && *c;) {
		char *end;
		unsigned long long v = strtoull(c, &end, 10);
		if (end == c)
			break;
		if (v > 0 && v < N)
			b[n++] = v;
		c = *end == ',' ? end + 1 : end;
	}
	*n_out = n;
	return b;
}

/* F1 of @p found (starts, token 0 skipped) against @p truth, one to one within the tolerance. */
static double f1(const uint64_t *found, uint64_t n_found, const uint64_t *truth, uint64_t n_truth, double *prec,
		 double *rec)
{
	uint64_t i = found && n_found && found[0] == 0 ? 1 : 0, j = 0, hit = 0, nf = n_found - i;
	while (i < n_found && j < n_truth) {
		if (found[i] + F1_TOLERANCE < truth[j]) {
			i++;
		} else if (truth[j] + F1_TOLERANCE < found[i]) {
			j++;
		} else {
			hit++;
			i++;
			j++;
		}
	}
	*prec = nf ? (double)hit / nf : 0;
	*rec = n_truth ? (double)hit / n_truth : 0;
	return *prec + *rec > 0 ? 2 * *prec * *rec / (*prec + *rec) : 0;
}

int bench_segment(const struct bench_segment_opts *o)
{
	char err[512];
	struct st_file *f;
	int rc = st_open(o->trace, &f, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		return rc;
	}
	const struct st_tensor *tk;
	if ((rc = st_find_rank(f, "k", 4, &tk, err, sizeof(err)))) {
		fprintf(stderr, "mnemo-bench: %s\n", err);
		st_close(f);
		return rc;
	}
	const uint64_t N = tk->shape[2], Hkv = tk->shape[1];
	const uint64_t heads = o->heads && o->heads < Hkv ? o->heads : Hkv;
	uint64_t n_truth = 0, *truth = planted(f, N, &n_truth);
	const char *metric = o->metric == SEG_MODULARITY ? "modularity" : "conductance";
	if (!o->json)
		printf("segment: %s: %" PRIu64 " tokens, layer %u, graph over %" PRIu64 " of %" PRIu64
		       " KV heads, d %" PRIu64 ", %" PRIu64 " planted boundaries, %s\n",
		       o->trace, N, o->layer, heads, Hkv, tk->shape[3], n_truth, metric);
	for (unsigned gi = 0; gi < o->n_gammas; gi++)
	for (int novelty = 0; novelty < 2; novelty++) {
		const float gamma = (float)o->gammas[gi];
		for (int refine = 0; refine < 2; refine++) {
			struct seg_layer_out out;
			int used = 0;
			double t0 = now_s();
			rc = bench_trace_events(f, o->layer, heads, refine, o->metric, gamma, novelty, 1, &out, &used);
			double s = now_s() - t0;
			if (rc)
				goto out;
			if (!novelty && !used) {
				free(out.starts);
				break;
			}
			double prec = 0, rec = 0, F = truth ? f1(out.starts, out.n_ev, truth, n_truth, &prec, &rec) : NAN;
			const char *src = novelty ? "novelty" : "surprise";
			char mb[32] = "null", ma[32] = "null";
			if (refine) {
				snprintf(mb, sizeof(mb), "%.5f", out.before);
				snprintf(ma, sizeof(ma), "%.5f", out.after);
			}
			if (o->json)
				printf("{\"suite\":\"segment\",\"source\":\"%s\",\"gamma\":%g,\"refined\":%s,\"metric\":\"%s\","
				       "\"tokens\":%" PRIu64 ",\"heads\":%" PRIu64 ",\"events\":%" PRIu64 ",\"f1\":%.4f,"
				       "\"precision\":%.4f,\"recall\":%.4f,\"metric_before\":%s,\"metric_after\":%s,"
				       "\"seconds\":%.3f,\"tokens_per_min\":%.0f}\n",
				       src, gamma, refine ? "true" : "false", metric, N, heads, out.n_ev, F, prec, rec, mb, ma, s,
				       N / s * 60);
			else
				printf("%-8s gamma %-4g %-9s events %8" PRIu64 " | F1 %.3f (precision %.3f recall %.3f) | "
				       "%s %s -> %s | %7.2f s, %.2fM tokens/min\n",
				       src, gamma, refine ? "refined" : "unrefined", out.n_ev, F, prec, rec, metric,
				       refine ? mb : "-", refine ? ma : "-", s, N / s * 60 / 1e6);
			free(out.starts);
		}
	}
out:
	free(truth);
	st_close(f);
	return rc;
}
