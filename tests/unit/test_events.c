/*
 * EM-LLM's events (index/events.h):
 *   - the boundary rule on hand-made surprise sequences (spikes, a spike too
 *     close to the last start, gamma, forced starts at max_len), and on
 *     random sequences against numpy's reading of the same rule
 *     (events_ref.py), fed in one piece and in random pieces alike;
 *   - every event within [min_len, max_len];
 *   - modularity on the textbook graph of two triangles joined by an edge
 *     (5/14), and modularity and conductance of random graphs and
 *     partitions against numpy's definitions;
 *   - refinement on a graph with planted communities pulls displaced
 *     boundaries back to them, and never lowers modularity nor raises
 *     conductance.
 * Usage: test_events PYTHON3 events_ref.py
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../check.h"
#include "events.h"

static const char *py, *ref;

/* Run the reference on @p buf [len]; its stdout into @p out. */
static int run_ref(const char *mode, const void *buf, size_t len, char *out, size_t cap)
{
	char path[] = "/tmp/mnemo-events-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return -1;
	int ok = write(fd, buf, len) == (ssize_t)len;
	close(fd);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s %s %s %s", py, ref, mode, path);
	FILE *p = ok ? popen(cmd, "r") : NULL;
	size_t n = p ? fread(out, 1, cap - 1, p) : 0;
	out[n] = 0;
	int rc = p ? pclose(p) : -1;
	unlink(path);
	return rc == 0 && n > 0 ? 0 : -1;
}

static int64_t feed_all(const struct seg_params *p, const float *s, uint32_t n, uint64_t *starts, uint64_t *seed)
{
	struct seg_state *st = seg_new(p);
	int64_t k = 0;
	for (uint32_t t = 0; t < n;) {
		uint32_t piece = seed ? 1 + (uint32_t)(check_rand(seed) % 300) : n;
		if (piece > n - t)
			piece = n - t;
		int64_t r = seg_feed(st, s + t, piece, starts + k);
		if (r < 0) {
			k = r;
			break;
		}
		k += r;
		t += piece;
	}
	seg_free(st);
	return k;
}

static void hand_made(void)
{
	float s[400];
	uint64_t st[400];
	for (int i = 0; i < 400; i++)
		s[i] = 1.0f;
	s[20] = 10;   /* a start */
	s[50] = 10;   /* a start */
	s[53] = 10;   /* 3 tokens after the last start: too close */
	s[90] = 1.5f; /* under mean + gamma * std of its window once the spikes count */
	struct seg_params p = { .gamma = 1.0f, .window = 4096, .min_len = 8, .max_len = 128 };
	int64_t k = feed_all(&p, s, 400, st, NULL);
	/* 0, 20, 50; then 50 + 128 = 178 and 306 forced */
	const uint64_t want[] = { 0, 20, 50, 178, 306 };
	int ok = k == 5;
	for (int i = 0; ok && i < 5; i++)
		ok &= st[i] == want[i];
	CHECK(ok, "hand-made sequence: %lld starts (%llu %llu %llu ...)", (long long)k, (unsigned long long)st[0],
	      (unsigned long long)(k > 1 ? st[1] : 0), (unsigned long long)(k > 2 ? st[2] : 0));
	/* a huge gamma: the first spike still starts one (its window is flat, std 0), then only forced starts */
	p.gamma = 1000.0f;
	k = feed_all(&p, s, 400, st, NULL);
	CHECK(k == 4 && st[1] == 20 && st[2] == 148 && st[3] == 276, "gamma 1000: %lld starts", (long long)k);
	/* a non-finite surprise is refused */
	s[7] = NAN;
	struct seg_state *x = seg_new(NULL);
	CHECK(seg_feed(x, s, 10, st) == -EINVAL && seg_tokens(x) == 0, "NaN surprise accepted");
	seg_free(x);
	struct seg_params bad = { .min_len = 200, .max_len = 100 };
	CHECK(!seg_new(&bad), "min_len > max_len accepted");
}

static void rule_vs_numpy(uint64_t *seed)
{
	enum { N = 6000 };
	static float s[N];
	static uint64_t a[N], b[N];
	static uint8_t buf[20 + 4 * N];
	char out[1 << 16];
	const struct seg_params ps[3] = { { 1.0f, 4096, 8, 128 }, { 0.5f, 256, 4, 64 }, { 2.0f, 1000, 16, 300 } };
	for (int c = 0; c < 3; c++) {
		/* a noisy baseline with spikes, some in runs */
		for (int i = 0; i < N; i++) {
			s[i] = 2.0f + check_uniform(seed);
			if (check_rand(seed) % 40 == 0)
				s[i] += 3.0f + 3.0f * (float)(check_rand(seed) % 100) / 100.0f;
		}
		int64_t ka = feed_all(&ps[c], s, N, a, NULL), kb = feed_all(&ps[c], s, N, b, seed);
		CHECK(ka > 0 && ka == kb && !memcmp(a, b, (size_t)ka * 8), "case %d: pieces segment differently", c);
		int lens_ok = 1;
		for (int64_t i = 0; i < ka; i++) {
			uint64_t end = i + 1 < ka ? a[i + 1] : N, len = end - a[i];
			lens_ok &= len <= ps[c].max_len && (len >= ps[c].min_len || i + 1 == ka);
		}
		CHECK(lens_ok, "case %d: an event outside [min_len, max_len]", c);
		uint32_t hdr[5] = { N, 0, ps[c].window, ps[c].min_len, ps[c].max_len };
		memcpy(&hdr[1], &ps[c].gamma, 4);
		memcpy(buf, hdr, 20);
		memcpy(buf + 20, s, 4 * N);
		if (run_ref("rule", buf, sizeof(buf), out, sizeof(out))) {
			CHECK(0, "the numpy reference did not run (%s %s)", py, ref);
			return;
		}
		int64_t k = 0;
		int same = 1;
		for (char *tok = strtok(out, " \n"); tok; tok = strtok(NULL, " \n"), k++)
			same &= k < ka && a[k] == strtoull(tok, NULL, 10);
		CHECK(same && k == ka, "case %d: %lld starts here, %lld in numpy", c, (long long)ka, (long long)k);
	}
}

static void textbook(void)
{
	/* triangles {0,1,2} and {3,4,5}, edge 2-3, unit weights, no self-loops */
	float A[36] = { 0 };
	const int e[7][2] = { { 0, 1 }, { 0, 2 }, { 1, 2 }, { 3, 4 }, { 3, 5 }, { 4, 5 }, { 2, 3 } };
	for (int i = 0; i < 7; i++)
		A[e[i][0] * 6 + e[i][1]] = A[e[i][1] * 6 + e[i][0]] = 1;
	uint32_t starts[2] = { 0, 3 };
	double q = seg_score(A, 6, starts, 2, SEG_MODULARITY);
	CHECK(fabs(q - 5.0 / 14.0) < 1e-12, "two triangles: Q %.15g, want 5/14", q);
	/* each triangle: cut 1, vol 7: phi 1/7 */
	double phi = seg_score(A, 6, starts, 2, SEG_CONDUCTANCE);
	CHECK(fabs(phi - 1.0 / 7.0) < 1e-12, "two triangles: conductance %.15g, want 1/7", phi);
	uint32_t bad[2] = { 0, 6 };
	CHECK(isnan(seg_score(A, 6, bad, 2, SEG_MODULARITY)), "a start past the chunk accepted");
}

/*
 * A chunk of n tokens with communities at @p planted: keys near their
 * community's direction, random ones, or (@p orthogonal) ones on disjoint
 * channels, so that no two communities look alike by chance.
 */
static void planted_graph(uint64_t *seed, uint32_t n, unsigned d, const uint32_t *planted, uint32_t n_ev, float noise,
			  int orthogonal, float *A)
{
	float *k = malloc((size_t)n * d * sizeof(float)), *dir = malloc((size_t)n_ev * d * sizeof(float));
	const unsigned w = d / n_ev;
	for (uint32_t i = 0; i < n_ev * d; i++)
		dir[i] = orthogonal ? ((i % d) / w == i / d ? 1.5f : 0.0f) : check_uniform(seed);
	for (uint32_t t = 0, e = 0; t < n; t++) {
		while (e + 1 < n_ev && t >= planted[e + 1])
			e++;
		for (unsigned x = 0; x < d; x++)
			k[(size_t)t * d + x] = dir[e * d + x] + noise * check_uniform(seed);
	}
	memset(A, 0, (size_t)n * n * sizeof(float));
	/* two "heads": the same keys twice, as the sum over KV heads */
	CHECK(seg_similarity_add(k, n, d, A) == 0 && seg_similarity_add(k, n, d, A) == 0, "similarity");
	seg_clamp(A, n);
	free(k);
	free(dir);
}

static void scores_vs_numpy(uint64_t *seed)
{
	enum { N = 120, D = 16 };
	static float A[N * N];
	static uint8_t buf[8 + 4 * N * N + 4 * 64];
	char out[256];
	for (int c = 0; c < 4; c++) {
		uint32_t starts[64], n_ev = 0;
		for (uint32_t t = 0; t < N; t += 1 + (uint32_t)(check_rand(seed) % 20))
			starts[n_ev++] = t;
		planted_graph(seed, N, D, starts, n_ev, 0.5f + (float)c, 0, A);
		if (c == 3)
			for (int i = 0; i < N * N; i++)   /* a sparse graph too */
				A[i] = check_rand(seed) % 5 ? 0 : A[i];
		uint32_t hdr[2] = { N, n_ev };
		memcpy(buf, hdr, 8);
		memcpy(buf + 8, A, sizeof(A));
		memcpy(buf + 8 + sizeof(A), starts, 4 * n_ev);
		if (run_ref("score", buf, 8 + sizeof(A) + 4 * n_ev, out, sizeof(out))) {
			CHECK(0, "the numpy reference did not run");
			return;
		}
		double rq, rphi;
		CHECK(sscanf(out, "%lf %lf", &rq, &rphi) == 2, "reference output %s", out);
		double q = seg_score(A, N, starts, n_ev, SEG_MODULARITY), phi = seg_score(A, N, starts, n_ev, SEG_CONDUCTANCE);
		CHECK(fabs(q - rq) < 1e-6 * (1 + fabs(rq)) && fabs(phi - rphi) < 1e-6 * (1 + fabs(rphi)),
		      "case %d: Q %.9g vs %.9g, conductance %.9g vs %.9g", c, q, rq, phi, rphi);
	}
}

static void refine_planted(uint64_t *seed)
{
	enum { N = 512, D = 64 };
	static float A[N * N];
	uint32_t planted[16], n_ev = 0;
	/* events of 24..63 tokens, the last one too */
	for (uint32_t t = 0; t + 64 <= N && n_ev < 16; t += 24 + (uint32_t)(check_rand(seed) % 40))
		planted[n_ev++] = t;
	planted_graph(seed, N, D, planted, n_ev, 0.4f, 1, A);
	for (int m = 0; m < 2; m++) {
		uint32_t st[16];
		st[0] = 0;
		for (uint32_t e = 1; e < n_ev; e++)   /* displaced by up to 4 either way */
			st[e] = planted[e] + (uint32_t)(check_rand(seed) % 9) - 4;
		double before = seg_score(A, N, st, n_ev, (enum seg_metric)m);
		struct seg_params p = { .min_len = 8, .max_len = 128 };
		CHECK(seg_refine(A, N, st, n_ev, (enum seg_metric)m, &p) == 0, "refine");
		double after = seg_score(A, N, st, n_ev, (enum seg_metric)m);
		uint32_t back = 0;
		for (uint32_t e = 1; e < n_ev; e++)
			back += st[e] == planted[e];
		CHECK(m == SEG_MODULARITY ? after >= before : after <= before, "metric %d: %.6f -> %.6f", m, before, after);
		CHECK(back == n_ev - 1, "metric %d: %u of %u boundaries back on the planted ones", m, back, n_ev - 1);
	}
	uint32_t bad[2] = { 5, 10 };
	CHECK(seg_refine(A, N, bad, 2, SEG_MODULARITY, NULL) == -EINVAL, "starts not at 0 accepted");
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: test_events PYTHON3 events_ref.py\n");
		return 2;
	}
	py = argv[1];
	ref = argv[2];
	uint64_t seed = check_seed();
	hand_made();
	rule_vs_numpy(&seed);
	textbook();
	scores_vs_numpy(&seed);
	refine_planted(&seed);
	return check_exit();
}
