/*
 * episodic (index/episodic.c) and a layer's events (seg_layer() in
 * index/events.h), argv[1] the mnemo-kvgen binary:
 *   - the contiguity FIFO across decode steps: the neighbours of each
 *     step's pick join at the back, picks leave it, the oldest go first
 *     when it holds more than its share; a rebuilt index empties it; a
 *     search without a history is stateless;
 *   - the events an index is built over are the ones given, bad ones are
 *     refused;
 *   - seg_unrope() undoes RoPE written out here from its definition;
 *   - a segmenter saved and loaded goes on exactly as the original, and
 *     damaged blobs are refused;
 *   - on a kvgen trace with planted episodes: boundary F1 (+-2 tokens,
 *     matched one to one by a search written here) of the surprise rule
 *     before and after refinement, refinement never lowering modularity,
 *     and key novelty standing in for surprise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../check.h"
#include "events.h"
#include "index.h"
#include "policy.h"
#include "safetensors.h"

extern char **environ;

static uint64_t seed;

static float gauss(void)
{
	double u = (check_uniform(&seed) + 1) / 2, v = (check_uniform(&seed) + 1) / 2;
	return (float)(sqrt(-2 * log(u + 1e-12)) * cos(2 * M_PI * v));
}

/* ---- the contiguity FIFO ---------------------------------------------------- */

enum { EV = 40, LEN = 16, FD = 32, FN = EV * LEN, FG = 2 };

static float fk[FN * FD], edir[EV * FD];

static int has_event(const struct index_result *r, unsigned e, unsigned len)
{
	unsigned hit = 0;
	for (uint64_t i = 0; i < r->n_tokens; i++)
		hit += r->tokens[i] >= (uint64_t)e * len && r->tokens[i] < (uint64_t)(e + 1) * len;
	return hit == len;
}

static int fifo_is(struct index_history *h, const uint32_t *want, uint32_t n)
{
	uint32_t got[64];
	uint32_t m = index_history_events(h, got, 64);
	if (m != n)
		return 0;
	for (uint32_t i = 0; i < n; i++)
		if (got[i] != want[i])
			return 0;
	return 1;
}

static void fifo(void)
{
	const struct policy_ops *po = policy_ops_get(POLICY_EPISODIC);
	for (unsigned e = 0; e < EV; e++) {
		double s = 0;
		for (unsigned i = 0; i < FD; i++) {
			edir[e * FD + i] = gauss();
			s += (double)edir[e * FD + i] * edir[e * FD + i];
		}
		for (unsigned i = 0; i < FD; i++)
			edir[e * FD + i] /= (float)sqrt(s);
		for (unsigned t = 0; t < LEN; t++)
			for (unsigned i = 0; i < FD; i++)
				fk[((size_t)e * LEN + t) * FD + i] = 3 * edir[e * FD + i] + 0.05f * gauss();
	}
	uint64_t starts[EV];
	for (unsigned e = 0; e < EV; e++)
		starts[e] = (uint64_t)e * LEN;
	const struct index_keys k = { .k = fk, .n = FN, .d = FD };
	/* budget 80: similarity 20 (one event), contiguity 60 (three events) */
	struct index_build_params bp = { .seed = 1, .event_starts = starts, .n_events = EV, .contig_share = 0.75f };
	struct index *ix = NULL;
	int rc = po->build(&k, &bp, &ix);
	CHECK(rc == 0, "build %d", rc);
	if (rc)
		return;
	const uint32_t *st;
	uint64_t n_ev;
	CHECK(index_episodic_events(ix, &st, &n_ev) == 0 && n_ev == EV && st[EV] == FN, "events held");
	int same = 1;
	for (unsigned e = 0; e < EV && n_ev == EV; e++)
		same &= st[e] == starts[e];
	CHECK(same, "the index holds the events it was given");

	struct index_history *h = index_history_new();
	uint64_t toks[FN], toks2[FN];
	float q[FG * FD];
	const unsigned targets[3] = { 10, 30, 11 };
	const uint32_t want[3][3] = { { 9, 11 }, { 11, 29, 31 }, { 31, 10, 12 } };
	const uint32_t want_n[3] = { 2, 3, 3 };
	for (unsigned step = 0; step < 3; step++) {
		for (unsigned g = 0; g < FG; g++)
			for (unsigned i = 0; i < FD; i++)
				q[g * FD + i] = 10 * edir[targets[step] * FD + i];
		struct index_result r = { .tokens = toks, .history = h };
		rc = po->search(ix, &k, q, FG, 80, &r);
		CHECK(rc == 0 && r.n_tokens == 80, "step %u: search %d, %llu tokens", step, rc,
		      (unsigned long long)r.n_tokens);
		CHECK(fifo_is(h, want[step], want_n[step]), "step %u: the FIFO's order", step);
		int all = has_event(&r, targets[step], LEN);
		for (uint32_t i = 0; i < want_n[step]; i++)
			all &= has_event(&r, want[step][i], LEN);
		CHECK(all, "step %u: the pick and every event of the FIFO are attended", step);
		/* without a history: the same pick, the FIFO of this step alone, twice alike */
		struct index_result a = { .tokens = toks }, b = { .tokens = toks2 };
		CHECK(po->search(ix, &k, q, FG, 80, &a) == 0 && po->search(ix, &k, q, FG, 80, &b) == 0 &&
		      a.n_tokens == b.n_tokens && !memcmp(toks, toks2, a.n_tokens * sizeof(uint64_t)),
		      "step %u: a search without a history is stateless", step);
		CHECK(has_event(&a, targets[step], LEN) && (targets[step] == 0 || has_event(&a, targets[step] - 1, LEN)) &&
		      has_event(&a, targets[step] + 1, LEN), "step %u: without a history, the pick's neighbours", step);
	}
	/* another index under the same history: the buffer's ids meant other events */
	uint64_t starts2[EV / 2];
	for (unsigned e = 0; e < EV / 2; e++)
		starts2[e] = (uint64_t)e * 2 * LEN;
	struct index_build_params bp2 = bp;
	bp2.event_starts = starts2;
	bp2.n_events = EV / 2;
	struct index *ix2 = NULL;
	CHECK(po->build(&k, &bp2, &ix2) == 0, "build with 32-token events");
	if (ix2) {
		/* budget 160: similarity 40 (one event of 32), contiguity 120 */
		for (unsigned g = 0; g < FG; g++)
			for (unsigned i = 0; i < FD; i++)
				q[g * FD + i] = 10 * edir[20 * FD + i];
		struct index_result r = { .tokens = toks, .history = h };
		CHECK(po->search(ix2, &k, q, FG, 160, &r) == 0, "search the rebuilt index");
		const uint32_t w[2] = { 9, 11 };
		CHECK(fifo_is(h, w, 2), "a rebuilt index empties the FIFO: only event 10's neighbours");
		po->free(ix2);
	}
	/* contig_share below 0: similarity alone, the FIFO stays empty */
	struct index_build_params bp3 = bp;
	bp3.contig_share = -1;
	struct index *ix3 = NULL;
	CHECK(po->build(&k, &bp3, &ix3) == 0, "build without contiguity");
	if (ix3) {
		struct index_history *h3 = index_history_new();
		struct index_result r = { .tokens = toks, .history = h3 };
		CHECK(po->search(ix3, &k, q, FG, 80, &r) == 0 && r.n_tokens == 80 && fifo_is(h3, NULL, 0),
		      "no contiguity share: no FIFO");
		index_history_free(h3);
		po->free(ix3);
	}
	index_history_free(h);

	/* bad events are refused */
	uint64_t bad[3][3] = { { 1, 16, 32 }, { 0, 32, 16 }, { 0, 16, FN } };
	for (unsigned i = 0; i < 3; i++) {
		struct index_build_params b = bp;
		b.event_starts = bad[i];
		b.n_events = 3;
		struct index *x = NULL;
		CHECK(po->build(&k, &b, &x) == -EINVAL && !x, "bad events %u refused", i);
	}
	struct index_build_params b = bp;
	b.contig_share = 1.0f;
	CHECK(po->build(&k, &b, &ix2) == -EINVAL, "contig_share 1 refused");
	po->free(ix);
}

/* ---- RoPE --------------------------------------------------------------------- */

static void unrope(void)
{
	enum { N = 50, D = 16 };
	const double theta = 10000;
	const uint64_t first = 123456;
	float pre[N * D], post[N * D], back[N * D];
	for (unsigned i = 0; i < N * D; i++)
		pre[i] = gauss();
	/* RoPE from its definition: channel j turns with j + D/2 by pos * theta^(-2j/D) */
	for (unsigned t = 0; t < N; t++)
		for (unsigned j = 0; j < D / 2; j++) {
			long double a = (long double)(first + t) * powl(theta, -2.0L * j / D);
			long double x = pre[t * D + j], y = pre[t * D + j + D / 2];
			post[t * D + j] = (float)(x * cosl(a) - y * sinl(a));
			post[t * D + j + D / 2] = (float)(x * sinl(a) + y * cosl(a));
		}
	seg_unrope(post, N, D, theta, first, back);
	double worst = 0;
	for (unsigned i = 0; i < N * D; i++)
		worst = fmax(worst, fabs(back[i] - pre[i]));
	CHECK(worst < 1e-4, "unrope undoes RoPE (worst %.2g)", worst);
	seg_unrope(post, N, D, 0, first, back);
	CHECK(!memcmp(back, post, sizeof(back)), "theta 0 copies");
}

/* ---- persistence of the segmenter -------------------------------------------------- */

static void persist(void)
{
	enum { A = 5000, B = 3000 };
	static float s[A + B];
	for (unsigned i = 0; i < A + B; i++)
		s[i] = 2 + 0.6f * gauss() + (check_rand(&seed) % 40 == 0 ? 4 : 0);
	const struct seg_params p = { .gamma = 1.5f, .window = 1000 };
	struct seg_state *x = seg_new(&p), *y = NULL;
	static uint64_t sx[B], sy[B], tmp[A];
	CHECK(seg_feed(x, s, A, tmp) > 0, "feed");
	uint8_t *blob = NULL;
	size_t len = 0;
	CHECK(seg_save(x, &blob, &len) == 0, "save");
	CHECK(seg_load(blob, len, &y) == 0 && y && seg_tokens(y) == A, "load");
	if (!y)
		return;
	int64_t nx = seg_feed(x, s + A, B, sx), ny = seg_feed(y, s + A, B, sy);
	CHECK(nx > 0 && nx == ny && !memcmp(sx, sy, (size_t)nx * sizeof(uint64_t)),
	      "a loaded segmenter finds the same boundaries (%lld, %lld)", (long long)nx, (long long)ny);
	struct seg_state *z = NULL;
	int refused = 1;
	for (size_t cut = 0; cut < len; cut += 1 + cut / 8)
		refused &= seg_load(blob, cut, &z) == -EBADMSG;
	CHECK(refused, "truncated blobs are refused");
	uint8_t *bad = malloc(len);
	memcpy(bad, blob, len);
	bad[0] ^= 1;
	CHECK(seg_load(bad, len, &z) == -EBADMSG, "a foreign magic is refused");
	memcpy(bad, blob, len);
	float inf = INFINITY;
	memcpy(bad + len - 4, &inf, 4);
	CHECK(seg_load(bad, len, &z) == -EBADMSG, "a non-finite window is refused");
	free(bad);
	free(blob);
	seg_free(x);
	seg_free(y);
}

/* ---- a kvgen trace with planted episodes ---------------------------------------------- */

enum { TN = 16384, TH = 2, TD = 64 };

static int kvgen(const char *bin, const char *out)
{
	char *argv[] = { (char *)bin, "-q", "-o", (char *)out, "--seed", "9", "--threads", "1", "--dtype", "f32",
			 "--tokens", "16384", "--layers", "1", "--kv-heads", "2", "--group", "2", "--head-dim", "64",
			 "--prefill-queries", "16", "--decode-queries", "4", NULL };
	pid_t pid;
	int st;
	if (posix_spawn(&pid, bin, NULL, NULL, argv, environ))
		return -1;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static const float *trace_k;

static int keys_of(void *ctx, unsigned head, uint64_t t0, uint32_t cnt, float *out)
{
	(void)ctx;
	memcpy(out, trace_k + ((size_t)head * TN + t0) * TD, (size_t)cnt * TD * sizeof(float));
	return 0;
}

/* F1 within +-2, each planted boundary matched by at most one found one (token 0 not counted). */
static double f1_of(const uint64_t *found, uint64_t nf, const uint64_t *truth, uint64_t nt)
{
	static unsigned char used[TN];
	memset(used, 0, sizeof(used));
	uint64_t hit = 0, counted = 0;
	for (uint64_t i = 0; i < nf; i++) {
		if (found[i] == 0)
			continue;
		counted++;
		for (uint64_t j = 0; j < nt; j++)
			if (!used[j] && llabs((long long)found[i] - (long long)truth[j]) <= 2) {
				used[j] = 1;
				hit++;
				break;
			}
	}
	double p = counted ? (double)hit / counted : 0, r = nt ? (double)hit / nt : 0;
	return p + r > 0 ? 2 * p * r / (p + r) : 0;
}

static void planted(const char *kvgen_bin)
{
	char dir[] = "/tmp/mnemo-test-episodic-XXXXXX", path[64], err[256];
	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	snprintf(path, sizeof(path), "%s/t.safetensors", dir);
	CHECK(kvgen(kvgen_bin, path) == 0, "kvgen");
	struct st_file *f = NULL;
	const struct st_tensor *tk, *ts;
	int rc = st_open(path, &f, err, sizeof(err));
	CHECK(rc == 0, "open: %s", err);
	if (rc)
		return;
	double theta = 0;
	const char *eb = st_meta(f, "episode_boundaries");
	CHECK(st_find_rank(f, "k", 4, &tk, err, sizeof(err)) == 0 && tk->dtype == ST_F32 && tk->shape[1] == TH &&
	      tk->shape[2] == TN && tk->shape[3] == TD && st_find_rank(f, "surprise", 1, &ts, err, sizeof(err)) == 0 &&
	      ts->shape[0] == TN && eb && st_meta_f64(f, "rope_theta", &theta) == 0 && theta > 0,
	      "trace: %s", err);
	static uint64_t truth[TN], starts[TN];
	uint64_t nt = 0;
	for (const char *c = eb; c && *c;) {
		char *end;
		unsigned long long v = strtoull(c, &end, 10);
		if (end == c)
			break;
		if (v)
			truth[nt++] = v;
		c = *end ? end + 1 : end;
	}
	trace_k = tk->data;
	struct seg_layer_src src = { .n = TN, .heads = TH, .d = TD, .rope_theta = theta, .keys = keys_of };
	double f1[2][2] = { { 0 } };
	for (unsigned gi = 0; gi < 2; gi++) {
		const struct seg_params sp = { .gamma = gi ? 2.0f : 1.0f };
		struct seg_state *st = seg_new(&sp);
		int64_t k = seg_feed(st, ts->data, TN, starts);
		seg_free(st);
		src.starts = starts;
		src.n_starts = (uint64_t)k;
		for (unsigned refine = 0; refine < 2; refine++) {
			struct seg_layer_opts o = { .seg = sp, .refine = (int)refine };
			struct seg_layer_out out;
			rc = seg_layer(&src, &o, &out);
			CHECK(rc == 0 && out.n_ev, "seg_layer %d", rc);
			if (rc)
				continue;
			f1[gi][refine] = f1_of(out.starts, out.n_ev, truth, nt);
			int ok = out.starts[0] == 0;
			for (uint64_t e = 1; e < out.n_ev; e++)
				ok &= out.starts[e] > out.starts[e - 1] && out.starts[e] < TN;
			CHECK(ok, "starts ascending from 0");
			if (refine)
				CHECK(out.after >= out.before - 1e-9 && out.chunks > 0,
				      "gamma %g: refinement never lowers modularity (%.5f -> %.5f)", sp.gamma, out.before,
				      out.after);
			printf("surprise gamma %.0f %-9s %6llu events, F1 %.3f", sp.gamma, refine ? "refined" : "unrefined",
			       (unsigned long long)out.n_ev, f1[gi][refine]);
			if (refine)
				printf(", modularity %.5f -> %.5f", out.before, out.after);
			printf("\n");
			free(out.starts);
		}
	}
	/*
	 * Floors, over the 0.8, from this trace (seed 9): measured
	 * 0.946 unrefined and 0.894 refined at gamma 2 (refinement maximises
	 * modularity, not agreement with the planted edges); at gamma 1 the
	 * rule over-segments (kvgen's surprise is bimodal, so mean + 1 std
	 * flags a topic word in eight) and refinement lifts F1 0.43 -> 0.52.
	 */
	CHECK(f1[1][0] >= 0.9 && f1[1][1] >= 0.85, "gamma 2: boundary F1 (%.3f, %.3f)", f1[1][0], f1[1][1]);
	CHECK(f1[0][1] > f1[0][0], "gamma 1: refinement raises F1 (%.3f -> %.3f)", f1[0][0], f1[0][1]);
	/* key novelty without surprise */
	src.starts = NULL;
	src.n_starts = 0;
	struct seg_layer_opts o = { .seg = { .gamma = 1.5f }, .refine = 1 };
	struct seg_layer_out out;
	rc = seg_layer(&src, &o, &out);
	CHECK(rc == 0, "novelty %d", rc);
	if (!rc) {
		double F = f1_of(out.starts, out.n_ev, truth, nt);
		printf("novelty gamma 1.5 refined %6llu events, F1 %.3f\n", (unsigned long long)out.n_ev, F);
		CHECK(F >= 0.7, "key novelty finds the episodes: F1 %.3f (measured 0.741)", F);
		free(out.starts);
	}
	st_close(f);
	unlink(path);
	rmdir(dir);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: test_episodic MNEMO_KVGEN\n");
		return 2;
	}
	seed = 0x6570697365ull;
	fifo();
	seed = check_seed();
	unrope();
	persist();
	planted(argv[1]);
	return check_exit();
}
