/*
 * A real mnemod on a temporary socket and data dir, driven through libmnemo
 * and through a raw socket:
 * - a context appended in chunks inline and through the shm arena (with
 *   several requests in flight) answers ATTEND like a double-precision
 *   softmax computed here, and FETCH returns the bytes that were sent;
 * - malformed frames get error replies (and a close where the protocol says
 *   so) while a second client keeps working;
 * - another uid can neither reach the socket nor, once it can, touch the
 *   context (root only: it needs setuid);
 * - SIGTERM answers the request in flight, then exits 0 and removes the socket.
 * Usage: test_daemon PATH-TO-MNEMOD
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "../check.h"
#include "kernels.h"
#include "mnemo.h"
#include "proto.h"
#include "sock.h"

static char dir[256], sock_path[300];
static uint32_t tok_ids[7000 + 3 * 256];
#define SALT 0x5eed5a17c0ffee00ull
static pid_t daemon_pid;

/* A process's user + system CPU time in seconds from /proc/PID/stat (fields 14 and 15), -1 if unreadable. */
static double proc_cpu_s(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	unsigned long long ut = 0, st = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}
static uint64_t seed;

enum { L = 2, H = 2, G = 4, D = 64, N = 7000 };
static float ref_k[L][H][N][D], ref_v[L][H][N][D];
static uint16_t raw_k[L][H][N][D], raw_v[L][H][N][D];

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	return remove(path);
}

static pid_t dir_owner;

/* The daemon's directory (socket, data: ~225 MiB) goes when the test does, passed or not. */
static void remove_dir(void)
{
	if (getpid() != dir_owner) /* a forked client exiting: the test is still running */
		return;
	if (dir[0] && nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS))
		fprintf(stderr, "test_daemon: could not remove %s\n", dir);
}

static void start_daemon(const char *mnemod)
{
	snprintf(dir, sizeof(dir), "/tmp/mnemo-itest-XXXXXX");
	if (!mkdtemp(dir))
		abort();
	dir_owner = getpid();
	atexit(remove_dir);
	snprintf(sock_path, sizeof(sock_path), "%s/run/mnemod.sock", dir);
	char data[300];
	snprintf(data, sizeof(data), "%s/data", dir);
	daemon_pid = fork();
	if (daemon_pid == 0) {
		execl(mnemod, mnemod, "--socket", sock_path, "--data-dir", data, "--workers", "2",
		      "--host-mem", "256M", "--log-level", "warn", "--drain-seconds", "20", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) {
		mnemo_client *c;
		if (mnemo_connect(sock_path, &c) == 0) {
			mnemo_close(c);
			return;
		}
		usleep(50000);
	}
	fprintf(stderr, "mnemod did not come up\n");
	kill(daemon_pid, SIGKILL);
	exit(1);
}

static void make_data(void)
{
	for (int l = 0; l < L; l++)
		for (int h = 0; h < H; h++)
			for (int t = 0; t < N; t++)
				for (int j = 0; j < D; j++) {
					raw_k[l][h][t][j] = kv_f32_to_bf16(1.5f * check_uniform(&seed) + 0.3f);
					raw_v[l][h][t][j] = kv_f32_to_bf16(check_uniform(&seed));
					ref_k[l][h][t][j] = kv_bf16_to_f32(raw_k[l][h][t][j]);
					ref_v[l][h][t][j] = kv_bf16_to_f32(raw_v[l][h][t][j]);
				}
}

/* Pack tokens [t0, t0+n) of every layer as APPEND wants them. */
static size_t pack(uint8_t *dst, int t0, int n)
{
	uint8_t *p = dst;
	for (int l = 0; l < L; l++)
		for (int kv = 0; kv < 2; kv++)
			for (int h = 0; h < H; h++) {
				size_t bytes = (size_t)n * D * 2;
				memcpy(p, kv ? &raw_v[l][h][t0][0] : &raw_k[l][h][t0][0], bytes);
				p += bytes;
			}
	return (size_t)(p - dst);
}

static double check_attend_policy(mnemo_client *c, uint64_t ctx, int layer, uint64_t a, uint64_t b,
				  enum mnemo_policy policy, uint32_t budget);

static double check_attend(mnemo_client *c, uint64_t ctx, int layer, uint64_t a, uint64_t b)
{
	return check_attend_policy(c, ctx, layer, a, b, MNEMO_POLICY_EXACT, 0);
}

/* Any policy with a budget of every token must equal exact attention. */
static double check_attend_policy(mnemo_client *c, uint64_t ctx, int layer, uint64_t a, uint64_t b,
				  enum mnemo_policy policy, uint32_t budget)
{
	float q[H * G * D], o[H * G * D], lse[H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	struct mnemo_attend_info info;
	int rc = mnemo_attend_ex(c, ctx, (uint32_t)layer, policy, budget, a, b, q, o, lse, &info);
	CHECK(rc == 0, "attend (policy %d): %s", policy, mnemo_last_error(c));
	if (rc)
		return INFINITY;
	uint64_t end = b == UINT64_MAX ? N : b;
	CHECK(policy != MNEMO_POLICY_EXACT || info.scanned == (end - a) * H, "scanned %llu",
	      (unsigned long long)info.scanned);
	CHECK(info.loaded == (end - a) * H, "policy %d with budget %u loaded %llu of %llu", policy, budget,
	      (unsigned long long)info.loaded, (unsigned long long)(end - a) * H);
	double worst = 0;
	for (int hq = 0; hq < H * G; hq++) {
		int h = hq / G;
		double mx = -INFINITY, sum = 0, ro[D] = { 0 };
		double *s = malloc(sizeof(double) * (end - a + 1));
		for (uint64_t t = a; t < end; t++) {
			double acc = 0;
			for (int j = 0; j < D; j++)
				acc += (double)q[hq * D + j] * ref_k[layer][h][t][j];
			s[t - a] = acc / sqrt(D);
			mx = fmax(mx, s[t - a]);
		}
		for (uint64_t t = a; t < end; t++) {
			double p = exp(s[t - a] - mx);
			sum += p;
			for (int j = 0; j < D; j++)
				ro[j] += p * ref_v[layer][h][t][j];
		}
		double num = 0, den = 0;
		for (int j = 0; j < D; j++) {
			ro[j] /= sum;
			num += pow(o[hq * D + j] - ro[j], 2);
			den += ro[j] * ro[j];
		}
		worst = fmax(worst, sqrt(num / den));
		CHECK(fabs(lse[hq] - (mx + log(sum))) < 1e-3, "lse %g vs %g", lse[hq], mx + log(sum));
		free(s);
	}
	CHECK(worst < 2e-3, "attend (policy %d) [%llu,%llu) relative error %g", policy, (unsigned long long)a,
	      (unsigned long long)end, worst);
	return worst;
}

/*
 * QUERIES: ann is refused until a layer's prefill queries arrive, then
 * built from them; the daemon reports what it keeps (an even subsample of
 * at most 4096 / G positions) and refuses a layer past the context's.
 */
static void check_queries(mnemo_client *c, uint64_t ctx)
{
	struct mnemo_index_info ii;
	float q[H * G * D], o[H * G * D], lse[H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	/* without prefill queries: refused, not a keys-only graph */
	CHECK(mnemo_index(c, ctx, MNEMO_POLICY_ANN, 0, 0, &ii) == -ENOTSUP &&
	      strstr(mnemo_last_error(c), "QUERIES"), "INDEX ann: %s", mnemo_last_error(c));
	CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_ANN, 64, 0, UINT64_MAX, q, o, lse, NULL) == -ENOTSUP,
	      "ATTEND ann without queries: %s", mnemo_last_error(c));
	/* prefill queries near the keys of the last positions, as a model's are */
	enum { P = 700 };
	float *pq = malloc(sizeof(float) * H * G * P * D);
	for (int layer = 0; layer < L; layer++) {
		for (int hq = 0; hq < H * G; hq++)
			for (int t = 0; t < P; t++)
				for (int j = 0; j < D; j++)
					pq[((size_t)hq * P + t) * D + j] =
						ref_k[layer][hq / G][N - P + t][j] + 0.3f * check_uniform(&seed);
		struct mnemo_queries_info qi;
		/* in two calls: the subsample spans both */
		CHECK(mnemo_queries(c, ctx, (uint32_t)layer, 0, 300, pq, &qi) == 0 && qi.seen == 300 && qi.kept == 300,
		      "QUERIES: %s", mnemo_last_error(c));
		float *rest = malloc(sizeof(float) * H * G * (P - 300) * D);
		for (int hq = 0; hq < H * G; hq++)
			memcpy(rest + (size_t)hq * (P - 300) * D, pq + ((size_t)hq * P + 300) * D,
			       sizeof(float) * (P - 300) * D);
		CHECK(mnemo_queries(c, ctx, (uint32_t)layer, 0, 300, pq, &qi) == -ERANGE &&
			      strstr(mnemo_last_error(c), "sent 300"),
		      "QUERIES sent again: %s", mnemo_last_error(c));
		/* a non-finite value is refused before anything is kept */
		const float keep = rest[5];
		rest[5] = NAN;
		CHECK(mnemo_queries(c, ctx, (uint32_t)layer, 300, P - 300, rest, &qi) == -EINVAL &&
			      strstr(mnemo_last_error(c), "not finite"),
		      "QUERIES with a NaN: %s", mnemo_last_error(c));
		rest[5] = keep;
		CHECK(mnemo_queries(c, ctx, (uint32_t)layer, 300, P - 300, rest, &qi) == 0 && qi.seen == P && qi.kept == P,
		      "QUERIES: %llu kept of %llu: %s", (unsigned long long)qi.kept, (unsigned long long)qi.seen,
		      mnemo_last_error(c));
		free(rest);
	}
	/* past the cap of 4096 / G = 1024 positions the stride doubles: 1400 seen, 700 kept */
	struct mnemo_queries_info qi;
	CHECK(mnemo_queries(c, ctx, 1, P, P, pq, &qi) == 0 && qi.seen == 2 * P && qi.kept == P,
	      "QUERIES over the cap: %llu kept of %llu", (unsigned long long)qi.kept, (unsigned long long)qi.seen);
	/* more than a 64 MiB frame holds: the library splits it; 2 * P + BIG seen, stride 64 */
	enum { BIG = 40000 };
	float *big = calloc((size_t)H * G * BIG * D, sizeof(float));
	CHECK(big && mnemo_queries(c, ctx, 1, 2 * P, BIG, big, &qi) == 0 && qi.seen == 2 * P + BIG &&
		      qi.kept == (2 * P + BIG + 63) / 64,
	      "QUERIES over two frames: %llu kept of %llu: %s", (unsigned long long)qi.kept,
	      (unsigned long long)qi.seen, mnemo_last_error(c));
	free(big);
	CHECK(mnemo_queries(c, ctx, L, 0, P, pq, &qi) == -EINVAL && strstr(mnemo_last_error(c), "layer"),
	      "QUERIES past the layers: %s", mnemo_last_error(c));
	free(pq);
	CHECK(mnemo_index(c, ctx, MNEMO_POLICY_ANN, 0, 0, &ii) == 0 && ii.built == (uint64_t)L * H,
	      "INDEX ann after QUERIES: %s", mnemo_last_error(c));
}

/*
 * ann takes in appended tokens without a rebuild: once 8192 tokens follow
 * its index, an ATTEND extends it with the recent queries (it no longer
 * scans the new tokens one by one, and STAT counts no new build), and a
 * beam as wide as the context still equals exact attention.
 */
static void check_ann_extend(mnemo_client *c)
{
	enum { T = 8192 };
	struct mnemo_geometry g = { .n_layers = 1, .n_kv_heads = H, .n_q_heads = H * G, .head_dim = D,
				    .dtype = MNEMO_BF16, .rope_theta = 10000.f };
	uint64_t ctx;
	CHECK(mnemo_create(c, "grows", &g, &ctx) == 0, "create grows: %s", mnemo_last_error(c));
	uint16_t *kv = malloc((size_t)2 * H * T * D * 2);
	float q[H * G * D], o[2][H * G * D], lse[2][H * G];
	float *pq = malloc(sizeof(float) * H * G * 64 * D);
	for (int i = 0; i < H * G * 64 * D; i++)
		pq[i] = check_uniform(&seed);
	struct mnemo_attend_info info;
	struct mnemo_daemon_info di0, di1;
	for (int part = 0; part < 2; part++) {
		for (size_t i = 0; i < (size_t)2 * H * T * D; i++)
			kv[i] = kv_f32_to_bf16(check_uniform(&seed));
		CHECK(mnemo_append(c, ctx, 0, 1, (uint64_t)part * T, T, kv, (size_t)2 * H * T * D * 2, NULL) == 0,
		      "append part %d: %s", part, mnemo_last_error(c));
		if (part == 0)
			CHECK(mnemo_queries(c, ctx, 0, 0, 64, pq, NULL) == 0, "queries: %s", mnemo_last_error(c));
		for (int i = 0; i < H * G * D; i++)
			q[i] = check_uniform(&seed);
		CHECK(mnemo_stat_daemon(c, &di0) == 0, "stat");
		CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_ANN, 32, 0, UINT64_MAX, q, o[0], lse[0], &info) == 0,
		      "attend ann, part %d: %s", part, mnemo_last_error(c));
		CHECK(mnemo_stat_daemon(c, &di1) == 0 && di1.index_builds == di0.index_builds + (part ? 0 : H),
		      "part %d: %llu indexes built", part, (unsigned long long)(di1.index_builds - di0.index_builds));
		/* one policy ATTEND, both passes timed, its searches inside its first pass's wall time times the heads */
		CHECK(di1.policy_attends == di0.policy_attends + 1 && di1.policy_pick_ns > di0.policy_pick_ns &&
			      di1.policy_fold_ns > di0.policy_fold_ns && di1.policy_search_ns > di0.policy_search_ns &&
			      di1.policy_search_ns - di0.policy_search_ns <= (uint64_t)H * (di1.policy_pick_ns - di0.policy_pick_ns),
		      "part %d: %llu policy ATTENDs, pick %llu ns, search %llu ns, fold %llu ns", part,
		      (unsigned long long)(di1.policy_attends - di0.policy_attends),
		      (unsigned long long)(di1.policy_pick_ns - di0.policy_pick_ns),
		      (unsigned long long)(di1.policy_search_ns - di0.policy_search_ns),
		      (unsigned long long)(di1.policy_fold_ns - di0.policy_fold_ns));
		/* its CPU time as the kernel counts it (/proc, clock ticks), within two ticks a thread and a read apart */
		CHECK(di1.cpu_ns > di0.cpu_ns, "part %d: mnemod's CPU time went from %llu to %llu ns", part,
		      (unsigned long long)di0.cpu_ns, (unsigned long long)di1.cpu_ns);
		if (part == 0) {
			const double proc = proc_cpu_s(daemon_pid), stat1 = di1.cpu_ns / 1e9;
			struct mnemo_daemon_info di2;
			CHECK(mnemo_stat_daemon(c, &di2) == 0, "stat");
			const double stat2 = di2.cpu_ns / 1e9, tick = 1.0 / (double)sysconf(_SC_CLK_TCK);
			CHECK(proc >= stat1 - 2 * tick * 8 && proc <= stat2 + 2 * tick * 8,
			      "mnemod's CPU: STAT %.3f then %.3f s, /proc %.3f s between", stat1, stat2, proc);
		}
		/* the new tokens scanned exactly would be T per head */
		CHECK(info.scanned < (uint64_t)T * H / 2, "part %d: %llu keys scanned", part,
		      (unsigned long long)info.scanned);
	}
	/* the whole context through the extended graph, against exact */
	CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_ANN, 2 * T, 0, UINT64_MAX, q, o[0], lse[0], &info) == 0 &&
		      mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o[1], lse[1], NULL) == 0,
	      "attend: %s", mnemo_last_error(c));
	double num = 0, den = 0, dl = 0;
	for (int i = 0; i < H * G * D; i++) {
		num += pow(o[0][i] - o[1][i], 2);
		den += pow(o[1][i], 2);
	}
	for (int i = 0; i < H * G; i++)
		dl = fmax(dl, fabs(lse[0][i] - lse[1][i]));
	CHECK(sqrt(num / den) < 1e-4 && dl < 1e-4 && info.loaded == (uint64_t)2 * T * H,
	      "extended ann over every token differs from exact: %g, lse %g, %llu loaded", sqrt(num / den), dl,
	      (unsigned long long)info.loaded);
	CHECK(mnemo_drop(c, ctx, NULL) == 0, "drop grows");
	free(pq);
	free(kv);
}

/*
 * SURPRISE and the episodic policy: the boundary rule's counts come back
 * and show in STAT, a resent or non-finite piece is refused and changes
 * nothing, a context whose surprise covers its tokens is segmented by it
 * (STAT says so) and one without by key novelty, and episodic with a
 * budget of every token is exact attention.
 */
static void check_episodic(mnemo_client *c, uint64_t itest)
{
	enum { T = 4000 };
	struct mnemo_geometry g = { .n_layers = 1, .n_kv_heads = H, .n_q_heads = H * G, .head_dim = D,
				    .dtype = MNEMO_BF16, .rope_theta = 10000.f };
	uint64_t ctx;
	CHECK(mnemo_create(c, "episodes", &g, &ctx) == 0, "create episodes: %s", mnemo_last_error(c));
	uint16_t *kv = malloc((size_t)2 * H * T * D * 2);
	for (size_t i = 0; i < (size_t)2 * H * T * D; i++)
		kv[i] = kv_f32_to_bf16(check_uniform(&seed));
	CHECK(mnemo_append(c, ctx, 0, 1, 0, T, kv, (size_t)2 * H * T * D * 2, NULL) == 0, "append: %s",
	      mnemo_last_error(c));
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.surprise_seen == 0 && ci.events == 0 &&
	      ci.segmentation == MNEMO_SEG_NONE, "STAT before SURPRISE");
	/* a spike every 50 tokens over a flat 2 nats: the rule starts an event at each, and at token 0 */
	float *sv = malloc(T * sizeof(float));
	for (int t = 0; t < T; t++)
		sv[t] = t % 50 == 0 ? 9.0f : 2.0f + 0.01f * (float)(t % 7);
	struct mnemo_surprise_info si;
	CHECK(mnemo_surprise(c, ctx, 0, 1000, sv, &si) == 0 && si.seen == 1000 && si.events == 20,
	      "SURPRISE: %llu seen, %llu events: %s", (unsigned long long)si.seen, (unsigned long long)si.events,
	      mnemo_last_error(c));
	CHECK(mnemo_surprise(c, ctx, 0, 1000, sv, &si) == -ERANGE && strstr(mnemo_last_error(c), "1000"),
	      "SURPRISE resent: %s", mnemo_last_error(c));
	sv[1500] = NAN;
	CHECK(mnemo_surprise(c, ctx, 1000, T - 1000, sv + 1000, &si) == -EINVAL &&
	      strstr(mnemo_last_error(c), "finite"), "SURPRISE NaN: %s", mnemo_last_error(c));
	sv[1500] = 9.0f;
	CHECK(mnemo_surprise(c, ctx, 1000, T - 1000, sv + 1000, &si) == 0 && si.seen == T && si.events == T / 50,
	      "SURPRISE after a refused piece: %llu events", (unsigned long long)si.events);
	CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.surprise_seen == T && ci.events == T / 50,
	      "STAT after SURPRISE");
	struct mnemo_index_info ii;
	CHECK(mnemo_index(c, ctx, MNEMO_POLICY_EPISODIC, 0, 0, &ii) == 0 && ii.built == H, "INDEX episodic: %s",
	      mnemo_last_error(c));
	CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.segmentation == MNEMO_SEG_SURPRISE,
	      "segmented by surprise (%u)", ci.segmentation);
	float q[H * G * D], o[2][H * G * D], lse[2][H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	struct mnemo_attend_info info;
	CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_EPISODIC, T, 0, UINT64_MAX, q, o[0], lse[0], &info) == 0 &&
		      mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o[1], lse[1], NULL) == 0,
	      "attend: %s", mnemo_last_error(c));
	double num = 0, den = 0, dl = 0;
	for (int i = 0; i < H * G * D; i++) {
		num += pow(o[0][i] - o[1][i], 2);
		den += pow(o[1][i], 2);
	}
	for (int i = 0; i < H * G; i++)
		dl = fmax(dl, fabs(lse[0][i] - lse[1][i]));
	CHECK(sqrt(num / den) < 1e-4 && dl < 1e-4, "episodic over every token differs from exact: %g, lse %g",
	      sqrt(num / den), dl);
	/* a small budget: the budget's tokens, fewer than all */
	CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_EPISODIC, 400, 0, UINT64_MAX, q, o[0], lse[0], &info) == 0 &&
	      info.loaded == (uint64_t)400 * H, "episodic at 400 tokens: %llu loaded", (unsigned long long)info.loaded);
	CHECK(mnemo_drop(c, ctx, NULL) == 0, "drop episodes");
	/* no surprise at all: key novelty, said by STAT */
	CHECK(mnemo_index(c, itest, MNEMO_POLICY_EPISODIC, 0, 0, &ii) == 0 &&
	      mnemo_stat(c, itest, NULL, &ci) == 0 && ci.segmentation == MNEMO_SEG_NOVELTY && ci.surprise_seen == 0,
	      "without surprise: segmentation %u: %s", ci.segmentation, mnemo_last_error(c));
	free(sv);
	free(kv);
}

/*
 * CONTINUE: two continuations of the sealed "itest", each with its own
 * tokens, against a flat context holding the same tokens in one piece:
 * exact ATTEND over any range equals the flat context's (the parent's part
 * and the continuation's merged by their lse), both continuations answer
 * a policy alike over the shared part, STAT shows the link, the parent
 * cannot be dropped under them, and an open parent is refused.
 */
static void check_continuation(mnemo_client *c, uint64_t itest)
{
	enum { T = 300 };
	struct mnemo_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = H * G, .head_dim = D,
				    .dtype = MNEMO_BF16, .rope_theta = 10000.f };
	uint64_t a, b, flat, open_ctx;
	CHECK(mnemo_continue(c, itest, "cont-a", &a) == 0 && mnemo_continue(c, itest, "cont-b", &b) == 0,
	      "continue: %s", mnemo_last_error(c));
	CHECK(mnemo_continue(c, itest, "cont-a", &open_ctx) == -EEXIST, "a taken name accepted");
	CHECK(mnemo_continue(c, a, "cont-of-cont", &open_ctx) == -EINVAL && strstr(mnemo_last_error(c), "continuation"),
	      "a continuation of a continuation: %s", mnemo_last_error(c));
	CHECK(mnemo_continue(c, 999999, "cont-x", &open_ctx) == -ENOENT, "continue of no context");
	CHECK(mnemo_create(c, "open-parent", &g, &open_ctx) == 0, "create");
	uint8_t *buf = malloc((size_t)L * 2 * H * N * D * 2); /* N > T */
	size_t len = pack(buf, 0, 10);
	CHECK(mnemo_append(c, open_ctx, 0, L, 0, 10, buf, len, NULL) == 0, "append");
	uint64_t x;
	CHECK(mnemo_continue(c, open_ctx, "cont-x", &x) == -EBUSY && strstr(mnemo_last_error(c), "seal"),
	      "continue of an open context: %s", mnemo_last_error(c));
	CHECK(mnemo_drop(c, open_ctx, NULL) == 0, "drop");
	/* the continuations' own tokens: the first T of the data again (any data does) */
	len = pack(buf, 0, T);
	CHECK(mnemo_append(c, a, 0, L, 0, T, buf, len, NULL) == 0 && mnemo_append(c, b, 0, L, 0, T, buf, len, NULL) == 0,
	      "append to continuations: %s", mnemo_last_error(c));
	CHECK(mnemo_create(c, "flat", &g, &flat) == 0, "create flat");
	for (int t = 0; t < N; t += 2048) {
		int n = N - t < 2048 ? N - t : 2048;
		len = pack(buf, t, n);
		CHECK(mnemo_append(c, flat, 0, L, (uint64_t)t, (uint32_t)n, buf, len, NULL) == 0, "append flat");
	}
	len = pack(buf, 0, T);
	CHECK(mnemo_append(c, flat, 0, L, N, T, buf, len, NULL) == 0, "append flat tail");
	free(buf);
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, a, NULL, &ci) == 0 && ci.parent == itest && ci.parent_tokens == N && ci.tokens == T,
	      "STAT of a continuation: parent %llu, %llu + %llu tokens", (unsigned long long)ci.parent,
	      (unsigned long long)ci.parent_tokens, (unsigned long long)ci.tokens);
	float q[H * G * D], o[3][H * G * D], lse[3][H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	const uint64_t ranges[4][2] = { { 0, UINT64_MAX }, { 100, N + 50 }, { N + 10, N + T }, { 5, 900 } };
	for (int r = 0; r < 4; r++)
		for (int layer = 0; layer < L; layer++) {
			CHECK(mnemo_attend(c, a, (uint32_t)layer, MNEMO_POLICY_EXACT, ranges[r][0], ranges[r][1], q, o[0],
					   lse[0], NULL) == 0 &&
				      mnemo_attend(c, flat, (uint32_t)layer, MNEMO_POLICY_EXACT, ranges[r][0], ranges[r][1], q,
						   o[1], lse[1], NULL) == 0,
			      "attend range %d: %s", r, mnemo_last_error(c));
			double num = 0, den = 0, dl = 0;
			for (int i = 0; i < H * G * D; i++) {
				num += pow(o[0][i] - o[1][i], 2);
				den += pow(o[1][i], 2);
			}
			for (int i = 0; i < H * G; i++)
				dl = fmax(dl, fabs(lse[0][i] - lse[1][i]));
			CHECK(sqrt(num / den) < 1e-5 && dl < 1e-5, "range %d layer %d: continuation differs from flat: %g, lse %g",
			      r, layer, sqrt(num / den), dl);
		}
	CHECK(mnemo_attend(c, a, 0, MNEMO_POLICY_EXACT, 0, N + T + 1, q, o[0], lse[0], NULL) == -ERANGE,
	      "a range past the continuation accepted");
	/* a policy over the shared part: both continuations answer alike */
	struct mnemo_attend_info ia, ib;
	CHECK(mnemo_attend_ex(c, a, 0, MNEMO_POLICY_QUEST, 256, 0, UINT64_MAX, q, o[0], lse[0], &ia) == 0 &&
		      mnemo_attend_ex(c, b, 0, MNEMO_POLICY_QUEST, 256, 0, UINT64_MAX, q, o[2], lse[2], &ib) == 0,
	      "quest on continuations: %s", mnemo_last_error(c));
	CHECK(!memcmp(o[0], o[2], sizeof(o[0])) && !memcmp(lse[0], lse[2], sizeof(lse[0])) && ia.loaded == ib.loaded,
	      "two continuations of one context answer differently");
	CHECK(mnemo_drop(c, itest, NULL) == -EBUSY && strstr(mnemo_last_error(c), "continuations"),
	      "a parent dropped under its continuations: %s", mnemo_last_error(c));
	CHECK(mnemo_drop(c, a, NULL) == 0 && mnemo_drop(c, b, NULL) == 0 && mnemo_drop(c, flat, NULL) == 0, "drop");
	CHECK(mnemo_stat(c, itest, NULL, &ci) == 0 && ci.parent == 0, "the parent is still there");
}

static uint64_t build_context(mnemo_client *c)
{
	struct mnemo_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = H * G, .head_dim = D,
				    .dtype = MNEMO_BF16, .rope_theta = 10000.f };
	uint64_t ctx;
	CHECK(mnemo_create(c, "itest", &g, &ctx) == 0, "create: %s", mnemo_last_error(c));
	uint64_t dup;
	CHECK(mnemo_create(c, "itest", &g, &dup) == -EEXIST, "duplicate name accepted");
	g.n_q_heads = 7;
	CHECK(mnemo_create(c, "bad-geom", &g, &dup) == -EINVAL, "bad geometry accepted");

	/* inline, in uneven chunks */
	uint8_t *buf = malloc((size_t)L * 2 * H * N * D * 2);
	int t = 0;
	const int inline_chunks[] = { 1, 63, 700, 1236 };
	for (int i = 0; i < 4; i++) {
		size_t len = pack(buf, t, inline_chunks[i]);
		uint64_t ct;
		CHECK(mnemo_append(c, ctx, 0, L, (uint64_t)t, (uint32_t)inline_chunks[i], buf, len, &ct) == 0,
		      "inline append: %s", mnemo_last_error(c));
		t += inline_chunks[i];
		CHECK(ct == (uint64_t)t, "context tokens %llu != %d", (unsigned long long)ct, t);
	}
	free(buf);

	/* through the arena, four requests in flight at once */
	void *base;
	CHECK(mnemo_shm_attach(c, 16 << 20, &base) == 0, "shm attach: %s", mnemo_last_error(c));
	uint8_t *arena = base;
	uint64_t ids[4];
	size_t off = 0;
	const int shm_chunks[] = { 1000, 1000, 999, N - 3000 - 999 - 2000 + 1000 };
	int sum = 0;
	for (int i = 0; i < 4; i++)
		sum += shm_chunks[i];
	CHECK(t + sum == N, "test chunking adds up");
	for (int i = 0; i < 4; i++) {
		size_t len = pack(arena + off, t, shm_chunks[i]);
		CHECK(mnemo_submit_append(c, ctx, 0, L, (uint64_t)t, (uint32_t)shm_chunks[i], arena + off, len,
					  &ids[i]) == 0, "submit");
		off += len;
		t += shm_chunks[i];
	}
	for (int i = 3; i >= 0; i--) {   /* collected out of order on purpose */
		uint64_t ct;
		CHECK(mnemo_wait_append(c, ids[i], &ct) == 0, "shm append %d: %s", i, mnemo_last_error(c));
	}
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, 0, "itest", &ci) == 0 && ci.tokens == N && !ci.sealed, "stat tokens");
	uint64_t sealed;
	CHECK(mnemo_seal(c, ctx, &sealed) == 0 && sealed == N, "seal");
	return ctx;
}

static void check_fetch(mnemo_client *c, uint64_t ctx)
{
	uint64_t ids[] = { 0, 1, 63, 64, 3000, N - 1, 1234 };
	const int n = 7;
	size_t bytes = 2ull * H * n * D * 2;
	uint16_t *got = malloc(bytes);
	for (int layer = 0; layer < L; layer++) {
		CHECK(mnemo_fetch(c, ctx, (uint32_t)layer, ids, n, got, bytes) == 0, "fetch: %s", mnemo_last_error(c));
		int bad = 0;
		for (int kv = 0; kv < 2; kv++)
			for (int h = 0; h < H; h++)
				for (int i = 0; i < n; i++)
					bad += memcmp(&got[((kv * H + h) * n + i) * D],
						      kv ? raw_v[layer][h][ids[i]] : raw_k[layer][h][ids[i]], D * 2) != 0;
		CHECK(bad == 0, "fetched bytes differ in %d rows", bad);
	}
	uint64_t past = N;
	CHECK(mnemo_fetch(c, ctx, 0, &past, 1, got, bytes) == -ERANGE, "fetch past the end");
	free(got);
}

/* ---- raw frames ---- */

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, sock_path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -errno;
	}
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void raw_send(int fd, uint32_t magic, uint16_t version, uint16_t op, uint64_t id,
		     uint32_t length, const void *payload, size_t n)
{
	struct proto_header h = { .magic = magic, .version = version, .opcode = op, .req_id = id,
				  .length = length };
	uint8_t hdr[PROTO_HEADER_SIZE];
	proto_header_encode(hdr, &h);
	if (send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) < 0 || (n && send(fd, payload, n, MSG_NOSIGNAL) < 0))
		(void)0;   /* the daemon may close first: what it answered is checked */
}

/* Read one reply; returns its status, or 1 when the connection closed first. */
static int raw_reply(int fd, uint64_t *id, char *msg, size_t cap)
{
	uint8_t hdr[PROTO_HEADER_SIZE];
	size_t have = 0;
	while (have < sizeof(hdr)) {
		ssize_t r = recv(fd, hdr + have, sizeof(hdr) - have, 0);
		if (r <= 0)
			return 1;
		have += (size_t)r;
	}
	struct proto_header h;
	proto_header_decode(hdr, &h);
	uint8_t *p = malloc(h.length + 1);
	have = 0;
	while (have < h.length) {
		ssize_t r = recv(fd, p + have, h.length - have, 0);
		if (r <= 0) {
			free(p);
			return 1;
		}
		have += (size_t)r;
	}
	if (id)
		*id = h.req_id;
	if (msg && h.status < 0) {
		const char *m;
		uint16_t n;
		if (msg_error_decode(p, h.length, &m, &n) == 0)
			snprintf(msg, cap, "%.*s", (int)n, m);
	}
	free(p);
	return h.status;
}

/* Closed by the daemon: EOF, or a reset when it closed with our bytes unread. */
static bool raw_closed(int fd)
{
	char b;
	ssize_t r = recv(fd, &b, 1, 0);
	return r == 0 || (r < 0 && errno == ECONNRESET);
}

static void check_malformed(mnemo_client *good, uint64_t ctx)
{
	char msg[300] = "";
	uint64_t id;
	int fd, rc;

	/* wrong magic: error reply, then close */
	fd = raw_connect();
	raw_send(fd, 0x12345678, 1, OP_HELLO, 77, 8, "\1\0\0\0\0\0\0\0", 8);
	rc = raw_reply(fd, &id, msg, sizeof(msg));
	CHECK(rc == -EBADMSG && id == 77, "bad magic: status %d id %llu", rc, (unsigned long long)id);
	CHECK(raw_closed(fd), "bad magic: connection left open");
	close(fd);

	/* wrong version */
	fd = raw_connect();
	raw_send(fd, PROTO_MAGIC, 9, OP_HELLO, 78, 8, "\1\0\0\0\0\0\0\0", 8);
	CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EPROTONOSUPPORT, "bad version");
	CHECK(raw_closed(fd), "bad version: open");
	close(fd);

	/* a length over max-frame: refused before any allocation */
	fd = raw_connect();
	raw_send(fd, PROTO_MAGIC, 1, OP_APPEND, 79, 0xfffffff0u, NULL, 0);
	CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EMSGSIZE, "oversized: %s", msg);
	CHECK(raw_closed(fd), "oversized: open");
	close(fd);

	/* unknown opcode */
	fd = raw_connect();
	raw_send(fd, PROTO_MAGIC, 1, 999, 80, 0, NULL, 0);
	CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EBADRQC, "unknown opcode");
	CHECK(raw_closed(fd), "unknown opcode: open");
	close(fd);

	/* a truncated payload: CREATE of 5 bytes */
	fd = raw_connect();
	raw_send(fd, PROTO_MAGIC, 1, OP_CREATE, 81, 5, "\3\0abc", 5);
	CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EPROTO, "short CREATE");
	CHECK(raw_closed(fd), "short CREATE: open");
	close(fd);

	/* a wrong dtype or geometry is refused by the daemon itself, and the connection stays */
	fd = raw_connect();
	{
		struct wbuf b;
		wbuf_init(&b);
		struct msg_create_req m = { .name = "raw", .name_len = 3,
					    .geom = { 1, 1, 1, 8, 5, 0.f, 0 } };
		msg_create_req_encode(&b, &m);
		raw_send(fd, PROTO_MAGIC, 1, OP_CREATE, 85, (uint32_t)b.len, b.data, b.len);
		CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EINVAL, "dtype 5 accepted");
		CHECK(strstr(msg, "dtype") != NULL, "dtype error says why: %s", msg);
		wbuf_free(&b);
		wbuf_init(&b);
		m.geom = (struct proto_geometry){ 1, 3, 4, 8, 0, 0.f, 0 };
		msg_create_req_encode(&b, &m);
		raw_send(fd, PROTO_MAGIC, 1, OP_CREATE, 86, (uint32_t)b.len, b.data, b.len);
		CHECK(raw_reply(fd, NULL, msg, sizeof(msg)) == -EINVAL, "4 query heads over 3 KV heads accepted");
		wbuf_free(&b);
		uint8_t hi[8] = { 1 };
		raw_send(fd, PROTO_MAGIC, 1, OP_HELLO, 87, 8, hi, 8);
		CHECK(raw_reply(fd, &id, NULL, 0) == 0 && id == 87, "connection kept after EINVAL");
	}
	close(fd);

	/* requests pipelined before a bad frame are answered first, in order */
	fd = raw_connect();
	uint8_t hello[8] = { 1 };
	raw_send(fd, PROTO_MAGIC, 1, OP_HELLO, 1, 8, hello, 8);
	raw_send(fd, PROTO_MAGIC, 1, OP_HELLO, 2, 8, hello, 8);
	raw_send(fd, PROTO_MAGIC, 1, OP_HELLO, 3, 0xfffffff0u, NULL, 0);
	CHECK(raw_reply(fd, &id, NULL, 0) == 0 && id == 1, "pipelined 1");
	CHECK(raw_reply(fd, &id, NULL, 0) == 0 && id == 2, "pipelined 2");
	CHECK(raw_reply(fd, &id, NULL, 0) == -EMSGSIZE && id == 3, "pipelined bad 3");
	close(fd);

	/* a peer that leaves mid-frame */
	fd = raw_connect();
	send(fd, "MNMO\1\0", 6, MSG_NOSIGNAL);
	close(fd);
	fd = raw_connect();
	raw_send(fd, PROTO_MAGIC, 1, OP_ATTEND, 82, 4000, "xxxx", 4);
	close(fd);

	/* an fd with a frame other than SHM_ATTACH */
	fd = raw_connect();
	{
		int pass = memfd_create("x", MFD_CLOEXEC);
		struct proto_header h = { .magic = PROTO_MAGIC, .version = 1, .opcode = OP_HELLO,
					  .req_id = 83, .length = 8 };
		uint8_t fr[PROTO_HEADER_SIZE + 8] = { 0 };
		proto_header_encode(fr, &h);
		fr[PROTO_HEADER_SIZE] = 1;
		union { struct cmsghdr c; char b[CMSG_SPACE(sizeof(int))]; } ctl = { 0 };
		struct iovec iov = { fr, sizeof(fr) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass, sizeof(int));
		sendmsg(fd, &mh, MSG_NOSIGNAL);
		/* and another frame after it, which must not be run */
		raw_send(fd, PROTO_MAGIC, 1, OP_HELLO, 84, 8, hello, 8);
		close(pass);
		rc = raw_reply(fd, &id, msg, sizeof(msg));
		CHECK(rc == 0 && id == 83, "frame carrying the fd is answered (%d)", rc);
		rc = raw_reply(fd, &id, msg, sizeof(msg));
		CHECK(rc == -EBADMSG, "fd with HELLO: status %d", rc);
		CHECK(raw_closed(fd), "fd with HELLO: open");
	}
	close(fd);

	/* refusals that keep the connection */
	mnemo_client *c;
	CHECK(mnemo_connect(sock_path, &c) == 0, "connect");
	float q[H * G * D] = { 0 }, o[H * G * D], lse[H * G];
	CHECK(mnemo_attend(c, 9999, 0, MNEMO_POLICY_EXACT, 0, 10, q, o, lse, NULL) == -ENOENT,
	      "unknown context");
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, N + 1, q, o, lse, NULL) == -ERANGE,
	      "range past the end: %s", mnemo_last_error(c));
	CHECK(mnemo_attend(c, ctx, 5, MNEMO_POLICY_EXACT, 0, 10, q, o, lse, NULL) == -EINVAL, "bad layer");
	CHECK(mnemo_attend(c, ctx, 0, (enum mnemo_policy)77, 0, 10, q, o, lse, NULL) == -EINVAL, "bad policy");
	q[3] = NAN;
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, 10, q, o, lse, NULL) == -EINVAL &&
		      strstr(mnemo_last_error(c), "not finite"),
	      "a NaN query: %s", mnemo_last_error(c));
	q[3] = INFINITY;
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_QUEST, 100, UINT64_MAX, q, o, lse, NULL) == -EINVAL,
	      "an infinite query, quest");
	q[3] = 0;
	uint64_t rid;
	CHECK(mnemo_submit_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, 0, 10, q, H * D, &rid) == 0 &&
	      mnemo_wait_attend(c, rid, o, lse, H * G, D, NULL) == -EINVAL, "q of the wrong size");
	void *base;
	CHECK(mnemo_shm_attach(c, 1 << 20, &base) == 0, "attach");
	{
		/* an arena range past its end */
		int rfd = raw_connect();
		struct shm_arena a;
		shm_arena_create(4096, &a);
		struct wbuf b;
		wbuf_init(&b);
		msg_shm_attach_req_encode(&b, &(struct msg_shm_attach_req){ .size = 4096 });
		struct proto_header h = { .magic = PROTO_MAGIC, .version = 1, .opcode = OP_SHM_ATTACH,
					  .req_id = 90, .length = (uint32_t)b.len };
		uint8_t fr[PROTO_HEADER_SIZE + 8];
		proto_header_encode(fr, &h);
		memcpy(fr + PROTO_HEADER_SIZE, b.data, 8);
		sock_send_all(rfd, fr, sizeof(fr), a.fd);
		CHECK(raw_reply(rfd, NULL, msg, sizeof(msg)) == 0, "raw attach: %s", msg);
		wbuf_free(&b);
		wbuf_init(&b);
		struct msg_append_req m = { .ctx = ctx, .layer_begin = 0, .layer_count = 1, .token_begin = N,
					    .n_tokens = 1, .source = PROTO_SRC_SHM, .shm_offset = 4000,
					    .shm_length = 512 };
		msg_append_req_encode(&b, &m);
		raw_send(rfd, PROTO_MAGIC, 1, OP_APPEND, 91, (uint32_t)b.len, b.data, b.len);
		CHECK(raw_reply(rfd, NULL, msg, sizeof(msg)) == -EFAULT, "arena range past the end");
		/* the connection stays: a HELLO still works */
		raw_send(rfd, PROTO_MAGIC, 1, OP_HELLO, 92, 8, hello, 8);
		CHECK(raw_reply(rfd, &id, NULL, 0) == 0 && id == 92, "connection kept after EFAULT");
		wbuf_free(&b);
		shm_arena_close(&a);
		close(rfd);
	}
	mnemo_close(c);

	/* the good client never noticed */
	CHECK(mnemo_hello(good, NULL) == 0, "good client after the bad ones");
	check_attend(good, ctx, 1, 10, 600);
}

static void check_other_uid(uint64_t ctx)
{
	if (geteuid() != 0) {
		printf("SKIP other-uid checks: not root, cannot setuid\n");
		return;
	}
	/* 1. with the default modes another uid cannot even reach the socket */
	pid_t p = fork();
	if (p == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(3);
		mnemo_client *c;
		int rc = mnemo_connect(sock_path, &c);
		_exit(rc == -EACCES ? 0 : 1);
	}
	int st;
	waitpid(p, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other uid reached a 0600 socket (%d)", WEXITSTATUS(st));

	/* 2. opened up, the daemon itself refuses the other uid's requests */
	char run[300];
	snprintf(run, sizeof(run), "%s/run", dir);
	chmod(dir, 0755);
	chmod(run, 0755);
	chmod(sock_path, 0666);
	p = fork();
	if (p == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(3);
		mnemo_client *c;
		if (mnemo_connect(sock_path, &c))
			_exit(4);
		int fails = 0;
		struct mnemo_context_info ci;
		float q[H * G * D] = { 0 }, o[H * G * D], lse[H * G];
		uint64_t ids[1] = { 0 };
		uint8_t out[2 * H * D * 2];
		fails += mnemo_stat(c, ctx, NULL, &ci) != -EACCES;
		fails += mnemo_stat(c, 0, "itest", &ci) != -EACCES;
		fails += mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, 10, q, o, lse, NULL) != -EACCES;
		fails += mnemo_fetch(c, ctx, 0, ids, 1, out, sizeof(out)) != -EACCES;
		fails += mnemo_drop(c, ctx, NULL) != -EACCES;
		fails += mnemo_drop(c, 0, "itest") != -EACCES;
		uint64_t tok;
		fails += mnemo_seal(c, ctx, &tok) != -EACCES;
		uint8_t data[2 * 2 * H * D * 2] = { 0 };
		uint64_t ct;
		fails += mnemo_append(c, ctx, 0, L, N, 1, data, sizeof(data), &ct) != -EACCES;
		/* the prefix is another user's: LOOKUP finds nothing, TOKENS is refused */
		struct mnemo_lookup_info li;
		fails += mnemo_lookup(c, SALT, tok_ids, N, &li) != 0 || li.ctx != 0 || li.tokens != 0;
		fails += mnemo_tokens(c, ctx, SALT, N, tok_ids, 1, NULL) != -EACCES;
		struct mnemo_context_info *list;
		size_t n;
		if (mnemo_list(c, &list, &n) == 0) {
			fails += n != 0;
			free(list);
		} else {
			fails++;
		}
		/* its own context works */
		struct mnemo_geometry g = { 1, 1, 1, 8, MNEMO_F32, 0 };
		uint64_t mine;
		fails += mnemo_create(c, "nobodys", &g, &mine) != 0;
		fails += mnemo_drop(c, mine, NULL) != 0;
		mnemo_close(c);
		_exit(fails);
	}
	waitpid(p, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other uid: %d checks failed", WEXITSTATUS(st));

	/* 3. shared: the other uid reads it and gets what the owner gets; writes stay refused */
	mnemo_client *own;
	CHECK(mnemo_connect(sock_path, &own) == 0, "owner connects");
	float q[H * G * D], oo[H * G * D], lo[H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	struct mnemo_attend_opts op = { .budget = 300, .sinks = 4, .window = 16 };
	CHECK(mnemo_attend_opts(own, ctx, 1, MNEMO_POLICY_CENTROIDS2, &op, 0, UINT64_MAX, q, oo, lo, NULL) == 0,
	      "owner attend: %s", mnemo_last_error(own));
	struct mnemo_geometry g1 = { 1, 1, 1, 8, MNEMO_F32, 0 };
	uint64_t open_ctx;
	CHECK(mnemo_create(own, "open-one", &g1, &open_ctx) == 0 && mnemo_share(own, open_ctx, NULL, 1) == -EBUSY &&
	      mnemo_drop(own, open_ctx, NULL) == 0, "an open context was shared");
	CHECK(mnemo_share(own, ctx, NULL, 1) == 0, "share: %s", mnemo_last_error(own));
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(own, ctx, NULL, &ci) == 0 && ci.shared, "stat shows shared");
	for (int round = 0; round < 2; round++) {
		p = fork();
		if (p == 0) {
			if (setgid(65534) || setuid(65534))
				_exit(3);
			mnemo_client *c;
			if (mnemo_connect(sock_path, &c))
				_exit(4);
			int fails = 0, want = round ? -EACCES : 0;
			struct mnemo_context_info ci2;
			float o[H * G * D], lse[H * G];
			uint64_t ids[2] = { 0, N - 1 };
			uint8_t out[2 * H * 2 * D * 2];
			fails += mnemo_stat(c, ctx, NULL, &ci2) != want;
			fails += mnemo_fetch(c, ctx, 0, ids, 2, out, sizeof(out)) != want;
			int rc = mnemo_attend_opts(c, ctx, 1, MNEMO_POLICY_CENTROIDS2, &op, 0, UINT64_MAX, q, o, lse, NULL);
			fails += rc != want;
			if (!round)
				fails += memcmp(o, oo, sizeof(o)) != 0 || memcmp(lse, lo, sizeof(lse)) != 0;
			struct mnemo_lookup_info li;
			fails += mnemo_lookup(c, SALT, tok_ids, N, &li) != 0 || li.ctx != (round ? 0 : ctx);
			/* never the owner's to change */
			uint64_t tok;
			fails += mnemo_seal(c, ctx, &tok) != -EACCES;
			fails += mnemo_drop(c, ctx, NULL) != -EACCES;
			fails += mnemo_share(c, ctx, NULL, 0) != -EACCES;
			fails += mnemo_tokens(c, ctx, SALT, N, tok_ids, 1, NULL) != -EACCES;
			/* a continuation of a shared context: the owner's answer over the shared part */
			uint64_t cont = 0;
			rc = mnemo_continue(c, ctx, "nobodys-continuation", &cont);
			fails += rc != want;
			if (!rc) {
				fails += mnemo_attend_opts(c, cont, 1, MNEMO_POLICY_CENTROIDS2, &op, 0, UINT64_MAX, q, o,
							   lse, NULL) != 0;
				fails += memcmp(o, oo, sizeof(o)) != 0 || memcmp(lse, lo, sizeof(lse)) != 0;
				fails += mnemo_drop(c, cont, NULL) != 0;
			}
			mnemo_close(c);
			_exit(fails);
		}
		waitpid(p, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other uid, context %s: %d checks failed",
		      round ? "private again" : "shared", WEXITSTATUS(st));
		if (!round)
			CHECK(mnemo_share(own, ctx, NULL, 0) == 0, "unshare");
	}
	mnemo_close(own);
	chmod(sock_path, 0600);
}

static void check_sigterm(mnemo_client *c, uint64_t ctx)
{
	/* a request in flight when SIGTERM comes is still answered */
	float q[H * G * D], o[H * G * D], lse[H * G];
	for (int i = 0; i < H * G * D; i++)
		q[i] = check_uniform(&seed);
	uint64_t ids[8];
	for (int i = 0; i < 8; i++)
		CHECK(mnemo_submit_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, 0, UINT64_MAX, q, H * G * D, &ids[i]) == 0,
		      "submit before SIGTERM");
	kill(daemon_pid, SIGTERM);
	for (int i = 0; i < 8; i++)
		CHECK(mnemo_wait_attend(c, ids[i], o, lse, H * G, D, NULL) == 0, "in-flight %d lost: %s", i,
		      mnemo_last_error(c));
	int st;
	waitpid(daemon_pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mnemod exit status %d", WEXITSTATUS(st));
	CHECK(access(sock_path, F_OK) != 0, "socket file left behind");
}

/*
 * sinks and window: attended exactly on top of what the index picks, never
 * twice. With a small budget, when the picks miss the sinks and the window
 * (the loaded count tells), the answer is the merge of the plain policy
 * ATTEND with exact attention over sinks and window, computed here; with
 * every token in the budget, it is exact attention and nothing is loaded
 * twice.
 */
static void check_sinks_window(mnemo_client *c, uint64_t ctx)
{
	enum { SINKS = 16, WINDOW = 32, BUDGET = 50 };
	float q[H * G * D], oa[H * G * D], la[H * G], orr[H * G * D], lr[H * G];
	int found = 0;
	for (int attempt = 0; attempt < 12 && !found; attempt++) {
		for (int i = 0; i < H * G * D; i++)
			q[i] = check_uniform(&seed);
		struct mnemo_attend_opts plain = { .budget = BUDGET }, extra = { BUDGET, SINKS, WINDOW };
		struct mnemo_attend_info ia, ir;
		int rc = mnemo_attend_opts(c, ctx, 0, MNEMO_POLICY_QUEST, &plain, 0, UINT64_MAX, q, oa, la, &ia);
		rc |= mnemo_attend_opts(c, ctx, 0, MNEMO_POLICY_QUEST, &extra, 0, UINT64_MAX, q, orr, lr, &ir);
		CHECK(rc == 0, "attend with sinks and window: %s", mnemo_last_error(c));
		if (rc)
			return;
		CHECK(ir.loaded >= ia.loaded && ir.loaded <= ia.loaded + (uint64_t)(SINKS + WINDOW) * H,
		      "loaded %llu with extras, %llu without", (unsigned long long)ir.loaded,
		      (unsigned long long)ia.loaded);
		if (ir.loaded != ia.loaded + (uint64_t)(SINKS + WINDOW) * H)
			continue; /* the picks overlap the extras: try another query */
		found = 1;
		double worst = 0, worst_lse = 0;
		for (int hq = 0; hq < H * G; hq++) {
			int h = hq / G;
			double s[SINKS + WINDOW], mx = -INFINITY, sum = 0, ro[D] = { 0 };
			for (int i = 0; i < SINKS + WINDOW; i++) {
				int t = i < SINKS ? i : N - WINDOW + (i - SINKS);
				double acc = 0;
				for (int j = 0; j < D; j++)
					acc += (double)q[hq * D + j] * ref_k[0][h][t][j];
				s[i] = acc / sqrt(D);
				mx = fmax(mx, s[i]);
			}
			for (int i = 0; i < SINKS + WINDOW; i++) {
				int t = i < SINKS ? i : N - WINDOW + (i - SINKS);
				double p = exp(s[i] - mx);
				sum += p;
				for (int j = 0; j < D; j++)
					ro[j] += p * ref_v[0][h][t][j];
			}
			double le = mx + log(sum), lm = fmax(le, la[hq]);
			double lse = lm + log(exp(le - lm) + exp(la[hq] - lm));
			double num = 0, den = 0;
			for (int j = 0; j < D; j++) {
				double want = exp(le - lse) * ro[j] / sum + exp(la[hq] - lse) * oa[hq * D + j];
				num += pow(orr[hq * D + j] - want, 2);
				den += want * want;
			}
			worst = fmax(worst, sqrt(num / den));
			worst_lse = fmax(worst_lse, fabs(lr[hq] - lse));
		}
		CHECK(worst < 2e-3 && worst_lse < 1e-3, "sinks+window: relative error %g, lse error %g", worst,
		      worst_lse);
	}
	CHECK(found, "every query's picks overlapped the sinks or the window");
	/* everything in the budget: exact, each token once */
	struct mnemo_attend_opts all = { N, SINKS, WINDOW };
	struct mnemo_attend_info info;
	float oe[H * G * D], le[H * G];
	CHECK(mnemo_attend_opts(c, ctx, 0, MNEMO_POLICY_CENTROIDS2, &all, 0, UINT64_MAX, q, orr, lr, &info) == 0 &&
	      mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, oe, le, NULL) == 0,
	      "attend: %s", mnemo_last_error(c));
	double worst = 0;
	for (int i = 0; i < H * G; i++)
		worst = fmax(worst, fabs(lr[i] - le[i]));
	CHECK(info.loaded == (uint64_t)N * H && worst < 1e-3, "full budget with extras: loaded %llu, lse error %g",
	      (unsigned long long)info.loaded, worst);
}

/*
 * Prefix reuse: the chain libmnemo and the daemon compute equals XXH3
 * applied here by hand; LOOKUP finds the longest whole-chunk prefix by ids
 * and by hashes in about log2(chunks) probes; another salt misses; a
 * request that diverges inside a chunk matches up to the chunk before;
 * ids out of order, under another salt or past the context are refused.
 */
static void check_prefix(mnemo_client *c, uint64_t ctx)
{
	const uint32_t n = N, chunks = N / MNEMO_CHUNK_TOKENS;
	for (uint32_t i = 0; i < sizeof(tok_ids) / sizeof(tok_ids[0]); i++)
		tok_ids[i] = (uint32_t)check_rand(&seed);
	/* the chain by hand */
	static uint64_t mine[64], lib[64];
	uint64_t prev = 0;
	for (uint32_t k = 0; k < chunks; k++) {
		uint8_t le[MNEMO_CHUNK_TOKENS * 4];
		for (int i = 0; i < MNEMO_CHUNK_TOKENS; i++)
			for (int b = 0; b < 4; b++)
				le[4 * i + b] = (uint8_t)(tok_ids[k * MNEMO_CHUNK_TOKENS + i] >> (8 * b));
		prev = mine[k] = XXH3_64bits_withSeed(le, sizeof(le), prev ^ SALT);
	}
	CHECK(mnemo_prefix_hashes(SALT, tok_ids, n, lib) == chunks && !memcmp(lib, mine, chunks * 8),
	      "libmnemo's chain differs from XXH3 by hand");

	uint64_t got;
	CHECK(mnemo_tokens(c, ctx, SALT, 0, tok_ids, 3000, &got) == 0 && got == 3000 / MNEMO_CHUNK_TOKENS,
	      "tokens: %s", mnemo_last_error(c));
	CHECK(mnemo_tokens(c, ctx, SALT, 3001, tok_ids + 3001, 10, NULL) == -ERANGE, "a gap accepted");
	CHECK(mnemo_tokens(c, ctx, SALT + 1, 3000, tok_ids + 3000, 10, NULL) == -EINVAL, "another salt accepted");
	CHECK(mnemo_tokens(c, ctx, SALT, 3000, tok_ids + 3000, n - 3000 + 1, NULL) == -ERANGE,
	      "ids past the context accepted");
	CHECK(mnemo_tokens(c, ctx, SALT, 3000, tok_ids + 3000, n - 3000, &got) == 0 && got == chunks, "tokens 2");

	struct mnemo_lookup_info li;
	CHECK(mnemo_lookup(c, SALT, tok_ids, n, &li) == 0 && li.ctx == ctx &&
	      li.tokens == (uint64_t)chunks * MNEMO_CHUNK_TOKENS && li.probes <= 6,
	      "lookup: ctx %llu, %llu tokens, %u probes", (unsigned long long)li.ctx, (unsigned long long)li.tokens,
	      li.probes);
	CHECK(mnemo_lookup_hashes(c, mine, chunks, &li) == 0 && li.ctx == ctx &&
	      li.tokens == (uint64_t)chunks * MNEMO_CHUNK_TOKENS, "lookup by hashes");
	/* longer than stored: the stored part */
	CHECK(mnemo_lookup(c, SALT, tok_ids, n + 3 * 256, &li) == 0 && li.ctx == ctx &&
	      li.tokens == (uint64_t)chunks * MNEMO_CHUNK_TOKENS, "lookup of a longer prompt");
	CHECK(mnemo_lookup(c, SALT + 1, tok_ids, n, &li) == 0 && li.ctx == 0 && li.tokens == 0, "another salt matched");
	CHECK(mnemo_lookup(c, SALT, tok_ids, 255, &li) == 0 && li.ctx == 0 && li.tokens == 0, "less than a chunk");
	/* diverging inside chunk 10 */
	uint32_t keep = tok_ids[10 * 256 + 100];
	tok_ids[10 * 256 + 100] ^= 1;
	CHECK(mnemo_lookup(c, SALT, tok_ids, n, &li) == 0 && li.ctx == ctx && li.tokens == 10 * 256,
	      "diverging in chunk 10 matched %llu tokens", (unsigned long long)li.tokens);
	tok_ids[10 * 256 + 100] = keep;
	tok_ids[0] ^= 1;
	CHECK(mnemo_lookup(c, SALT, tok_ids, n, &li) == 0 && li.ctx == 0 && li.tokens == 0, "diverging at 0 matched");
	tok_ids[0] = keep = tok_ids[0] ^ 1;
}

/*
 * The prefix table at scale: 1,200 chunks per context grow the table past
 * its first size twice; a dropped context's entries stop matching while the
 * same ids given to a new context (entries behind the removed ones on the
 * same probe runs) are found.
 */
static void check_prefix_scale(mnemo_client *c)
{
	enum { T = 1200 * MNEMO_CHUNK_TOKENS };
	static uint32_t ids[T];
	static float kv[2 * 65536];
	for (uint32_t i = 0; i < T; i++)
		ids[i] = i * 2654435761u + 17;
	uint64_t ctx[2];
	for (int k = 0; k < 2; k++) {
		struct mnemo_geometry g = { 1, 1, 1, 1, MNEMO_F32, 0 };
		char name[32];
		snprintf(name, sizeof(name), "prefix-scale-%d", k);
		CHECK(mnemo_create(c, name, &g, &ctx[k]) == 0, "create %s", name);
		for (uint32_t t = 0; t < T; t += 65536) {
			uint32_t n = T - t < 65536 ? T - t : 65536;
			CHECK(mnemo_append(c, ctx[k], 0, 1, t, n, kv, (size_t)2 * n * 4, NULL) == 0, "append: %s",
			      mnemo_last_error(c));
		}
		uint64_t chunks;
		CHECK(mnemo_tokens(c, ctx[k], 5, 0, ids, T, &chunks) == 0 && chunks == 1200, "tokens %d", k);
		if (k == 0) {
			struct mnemo_lookup_info li;
			CHECK(mnemo_lookup(c, 5, ids, T, &li) == 0 && li.ctx == ctx[0] && li.tokens == T && li.probes <= 12,
			      "lookup at scale: ctx %llu, %llu tokens, %u probes", (unsigned long long)li.ctx,
			      (unsigned long long)li.tokens, li.probes);
			CHECK(mnemo_drop(c, ctx[0], NULL) == 0, "drop");
			CHECK(mnemo_lookup(c, 5, ids, T, &li) == 0 && li.ctx == 0, "a dropped context matched");
		}
	}
	struct mnemo_lookup_info li;
	CHECK(mnemo_lookup(c, 5, ids, T / 2 + 100, &li) == 0 && li.ctx == ctx[1] && li.tokens == T / 2,
	      "lookup after a drop: ctx %llu, %llu tokens", (unsigned long long)li.ctx, (unsigned long long)li.tokens);
	CHECK(mnemo_drop(c, ctx[1], NULL) == 0, "drop 2");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: test_daemon PATH-TO-MNEMOD\n");
		return 2;
	}
	seed = check_seed();
	make_data();
	start_daemon(argv[1]);

	mnemo_client *c;
	CHECK(mnemo_connect(sock_path, &c) == 0, "connect");
	struct mnemo_server_info si;
	CHECK(mnemo_hello(c, &si) == 0 && si.proto == 1 && si.workers == 2 && si.peer_uid == geteuid(),
	      "hello");
	uint64_t ctx = build_context(c);
	for (int layer = 0; layer < L; layer++) {
		check_attend(c, ctx, layer, 0, UINT64_MAX);
		check_attend(c, ctx, layer, 1, 2);
		check_attend(c, ctx, layer, 100, 6543);
	}
	check_fetch(c, ctx);
	check_queries(c, ctx);
	check_episodic(c, ctx);
	check_continuation(c, ctx);
	/* every policy, given every token, is exact attention (its index built on first use) */
	for (int p = MNEMO_POLICY_QUEST; p <= MNEMO_POLICY_EPISODIC; p++) {
		check_attend_policy(c, ctx, 1, 0, UINT64_MAX, (enum mnemo_policy)p, N);
		check_attend_policy(c, ctx, 0, 100, 6543, (enum mnemo_policy)p, N);
	}
	check_sinks_window(c, ctx);
	check_ann_extend(c);
	check_prefix(c, ctx);
	check_prefix_scale(c);
	{
		/* INDEX: every policy's indexes are in memory by now; exact and bad layers are refused */
		struct mnemo_index_info ii;
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_QUEST, 0, 0, &ii) == 0 && ii.present == (uint64_t)L * H &&
		      !ii.built && !ii.loaded, "INDEX of built indexes: %s", mnemo_last_error(c));
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_EXACT, 0, 0, &ii) == -EINVAL, "INDEX exact accepted");
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_QUEST, L, 0, &ii) == -EINVAL, "INDEX past the layers accepted");
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_QUEST, 1, 2, &ii) == -EINVAL, "INDEX of too many layers accepted");
		CHECK(mnemo_index(c, 12345, MNEMO_POLICY_QUEST, 0, 0, &ii) == -ENOENT, "INDEX of no context");
	}
	{
		struct mnemo_context_info *list;
		size_t n;
		int rc = mnemo_list(c, &list, &n);
		CHECK(rc == 0 && n == 1 && list[0].tokens == N && list[0].sealed &&
		      !strcmp(list[0].name, "itest") && list[0].geom.head_dim == D, "list");
		if (!rc)
			free(list);
		struct mnemo_daemon_info di;
		CHECK(mnemo_stat_daemon(c, &di) == 0 && di.contexts == 1 && di.host_used > 0 && di.workers == 2,
		      "daemon stat");
	}
	check_malformed(c, ctx);
	check_other_uid(ctx);
	{
		/* drop frees the memory, and the id is gone */
		struct mnemo_geometry g = { 1, 1, 1, 16, MNEMO_F32, 0 };
		uint64_t tmp;
		CHECK(mnemo_create(c, "tmp", &g, &tmp) == 0, "create tmp");
		uint8_t data[2 * 16 * 4 * 10] = { 0 };
		CHECK(mnemo_append(c, tmp, 0, 1, 0, 10, data, sizeof(data), NULL) == 0, "append tmp");
		CHECK(mnemo_drop(c, 0, "tmp") == 0, "drop tmp");
		struct mnemo_context_info ci;
		CHECK(mnemo_stat(c, tmp, NULL, &ci) == -ENOENT, "dropped context still there");
	}
	check_sigterm(c, ctx);
	mnemo_close(c);
	return check_exit();
}
