/*
 * mnemo-bench: benchmarks of mnemod, each beside a baseline measured in the
 * same run (these machines are shared and noisy: only ratios travel).
 *
 *   ipc     round trip of a minimal request (HELLO) vs a raw AF_UNIX
 *           ping-pong of the same sizes; APPEND through the shm arena vs
 *           memcpy of the same bytes
 *   attend  exact ATTEND for one GQA group at 128K and 1M tokens vs the time
 *           to stream the same K/V bytes with the same number of threads
 *   tier    the SSD tier's sequential write-through and random block reads
 *           vs fio on the same file system, block size and queue depth
 *
 * Output: a table, or one JSON object per line with --json (DESIGN.md §9).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "bench_retrieval.h"
#include "bench_daemon.h"
#include "bench_decode.h"
#include "bench_segment.h"
#include "bench_util.h"
#include "kernels.h"
#include "mnemo.h"
#include "record.h"
#include "ssd.h"

static int opt_json;
static const char *opt_socket, *opt_mnemod, *opt_ssd, *opt_host_mem, *opt_estimates;
static char opt_rerank_arg[32] = "0", opt_cohere_arg[32] = "0";
static const char *opt_block_tokens = "64";
static unsigned opt_workers;
static uint64_t opt_tokens[8] = { 131072, 1048576 };
static unsigned opt_n_tokens = 2, opt_iters = 20;
static bool opt_tokens_given;
static const char *opt_dir;
static uint64_t opt_tier_bytes = 1ull << 30;
static unsigned opt_tier_seconds = 3, opt_rounds = 5;
static enum seg_metric opt_metric = SEG_MODULARITY;
static double opt_gammas[16] = { 1.0 };
static unsigned long long opt_steps = 16;
static unsigned opt_exact_layers = 2;
static const char *opt_host_mem_arg, *opt_estimates_arg = "off";
static const char *opt_stream_sync = "16G";   /* mnemod's --stream-sync in every suite */
static int policies_given, budgets_given, opt_no_exact_step;
static unsigned opt_n_gammas = 1;
static struct bench_retrieval_opts ropt = {
	.policies = { "quest", "blocks", "centroids", "centroids2", "faiss-ivf", "faiss-hnsw" },
	.n_policies = 6,
	.budgets = { 0.01, 0.02, 0.05 },
	.n_budgets = 3,
	.queries = 16,
};

/* Split "a,b,c" into at most @p max pieces (the string is kept, not copied). */
static unsigned split_list(char *s, const char **out, unsigned max)
{
	unsigned n = 0;
	char *save, *tok;
	for (tok = strtok_r(s, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save))
		out[n++] = tok;
	return n;
}

static char tmpdir[128], sock_path[256];
static pid_t daemon_pid = -1;
static bool keep_tmpdir; /* a restart: the next connect_daemon() starts on the same data */


static void die(const char *what, mnemo_client *c, int rc)
{
	fprintf(stderr, "mnemo-bench: %s: %s\n", what, c && mnemo_last_error(c)[0] ? mnemo_last_error(c) : strerror(-rc));
	if (daemon_pid > 0)
		kill(daemon_pid, SIGKILL);
	exit(1);
}

/* ---- the daemon under test ---- */

/*
 * The first of @p rel (paths relative to this binary's folder) that is an
 * executable, else @p fallback (looked up on PATH).
 */
static void beside_self(const char *const *rel, unsigned n_rel, const char *fallback, char *out, size_t cap)
{
	char self[PATH_MAX - 32];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash = NULL;
	if (n > 0) {
		self[n] = 0;
		slash = strrchr(self, '/');
	}
	if (slash) {
		*slash = 0;
		for (unsigned i = 0; i < n_rel; i++) {
			snprintf(out, cap, "%s/%s", self, rel[i]);
			if (access(out, X_OK) == 0)
				return;
		}
	}
	snprintf(out, cap, "%s", fallback);
}

static void find_mnemod(char *out, size_t cap)
{
	if (opt_mnemod) {
		snprintf(out, cap, "%s", opt_mnemod);
		return;
	}
	/* the build tree keeps it at ../daemon/mnemod beside tools/; an install beside mnemo-bench */
	static const char *const rel[] = { "../daemon/mnemod", "mnemod" };
	beside_self(rel, 2, "mnemod", out, cap);
}

static mnemo_client *connect_daemon(const char *argv0)
{
	mnemo_client *c;
	if (opt_socket) {
		int rc = mnemo_connect(opt_socket, &c);
		if (rc)
			die("connect", NULL, rc);
		return c;
	}
	if (daemon_pid < 0) {
		char bin[PATH_MAX], workers[16];
		find_mnemod(bin, sizeof(bin));
		if (!keep_tmpdir) {
			snprintf(tmpdir, sizeof(tmpdir), "/tmp/mnemo-bench-XXXXXX");
			if (!mkdtemp(tmpdir))
				die("mkdtemp", NULL, -errno);
		}
		keep_tmpdir = false;
		snprintf(sock_path, sizeof(sock_path), "%s/mnemod.sock", tmpdir);
		snprintf(workers, sizeof(workers), "%u", opt_workers);
		char data[200];
		snprintf(data, sizeof(data), "%s/data", tmpdir);
		daemon_pid = fork();
		if (daemon_pid == 0) {
			/* RAM only: ipc and attend measure the transport and the kernels;
			 * the tier suite measures the SSD path on its own */
			execlp(bin, bin, "--socket", sock_path, "--data-dir", data, "--workers", workers,
			       "--log-level", "warn", "--ssd-dir", opt_ssd ? opt_ssd : "none", "--host-mem",
			       opt_host_mem ? opt_host_mem : "auto", "--stream-sync", opt_stream_sync, "--estimates",
			       opt_estimates ? opt_estimates : "on", "--quest-rerank", opt_rerank_arg, "--quest-cohere",
			       opt_cohere_arg, "--block-tokens", opt_block_tokens, (char *)NULL);
			fprintf(stderr, "mnemo-bench: cannot run %s: %s\n", bin, strerror(errno));
			_exit(127);
		}
	}
	for (int i = 0; i < 200; i++) {
		if (mnemo_connect(sock_path, &c) == 0)
			return c;
		usleep(50000);
	}
	die("mnemod did not come up", NULL, -ETIMEDOUT);
	return NULL;
}

static void stop_daemon(void)
{
	if (daemon_pid <= 0)
		return;
	kill(daemon_pid, SIGTERM);
	int st;
	waitpid(daemon_pid, &st, 0);
	daemon_pid = -1;
	if (keep_tmpdir)
		return;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "mnemo-bench: could not remove %s\n", tmpdir);
}

/* ---- ipc ---- */

static double *raw_pingpong(size_t n, size_t req, size_t rep)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		die("socketpair", NULL, -errno);
	pid_t p = fork();
	if (p == 0) {
		close(sv[0]);
		char buf[4096];
		for (;;) {
			size_t have = 0;
			while (have < req) {
				ssize_t r = recv(sv[1], buf + have, req - have, 0);
				if (r <= 0)
					_exit(0);
				have += (size_t)r;
			}
			if (send(sv[1], buf, rep, MSG_NOSIGNAL) != (ssize_t)rep)
				_exit(0);
		}
	}
	close(sv[1]);
	double *t = malloc(sizeof(double) * n);
	char buf[4096] = { 0 };
	for (size_t i = 0; i < n + 1000; i++) {
		double t0 = now_s();
		send(sv[0], buf, req, MSG_NOSIGNAL);
		size_t have = 0;
		while (have < rep) {
			ssize_t r = recv(sv[0], buf + have, rep - have, 0);
			if (r <= 0)
				die("raw ping-pong", NULL, -EPIPE);
			have += (size_t)r;
		}
		if (i >= 1000)
			t[i - 1000] = (now_s() - t0) * 1e6;
	}
	close(sv[0]);
	waitpid(p, NULL, 0);
	return t;
}

static void bench_ipc(const char *argv0)
{
	mnemo_client *c = connect_daemon(argv0);
	const size_t n = 20000;
	double *ours = malloc(sizeof(double) * n);
	struct mnemo_server_info si;
	for (size_t i = 0; i < n + 1000; i++) {
		double t0 = now_s();
		int rc = mnemo_hello(c, &si);
		if (rc)
			die("hello", c, rc);
		if (i >= 1000)
			ours[i - 1000] = (now_s() - t0) * 1e6;
	}
	/* HELLO is a 32+8-byte request and a 32+~40-byte reply */
	double *raw = raw_pingpong(n, 40, 72);
	double p50 = pct(ours, n, 0.5), p99 = pct(ours, n, 0.99);
	double b50 = pct(raw, n, 0.5), b99 = pct(raw, n, 0.99);
	if (opt_json)
		printf("{\"suite\":\"ipc\",\"metric\":\"rtt\",\"p50_us\":%.2f,\"p99_us\":%.2f,"
		       "\"baseline\":\"raw_socket\",\"baseline_p50_us\":%.2f,\"baseline_p99_us\":%.2f,"
		       "\"ratio\":%.3f,\"ratio_of\":\"p50_us\",\"n\":%zu}\n", p50, p99, b50, b99, p50 / b50, n);
	else
		printf("ipc rtt        HELLO p50 %7.2f us  p99 %7.2f us | raw AF_UNIX ping-pong p50 %7.2f us  p99 %7.2f us | ratio %.2f\n",
		       p50, p99, b50, b99, p50 / b50);
	free(ours);
	free(raw);

	/* APPEND through shm: 8 KV heads x d128 bf16 = 4 KiB per token */
	const uint32_t H = 8, D = 128, chunk = 4096;
	const size_t chunk_bytes = (size_t)2 * H * chunk * D * 2;
	const uint64_t tokens = 1u << 18;                 /* 1 GiB per round */
	const int rounds = 3;
	void *base;
	int rc = mnemo_shm_attach(c, 2 * chunk_bytes, &base);
	if (rc)
		die("shm attach", c, rc);
	memset(base, 0x3c, 2 * chunk_bytes);
	double best_ours = 0;
	for (int r = 0; r < rounds; r++) {
		struct mnemo_geometry g = { 1, H, H * 4, D, MNEMO_BF16, 10000.f };
		uint64_t ctx;
		char name[32];
		snprintf(name, sizeof(name), "bench-append-%d", r);
		if ((rc = mnemo_create(c, name, &g, &ctx)))
			die("create", c, rc);
		uint64_t inflight[2] = { 0, 0 };
		double t0 = now_s();
		int slot = 0;
		for (uint64_t t = 0; t < tokens; t += chunk, slot ^= 1) {
			if (inflight[slot] && (rc = mnemo_wait_append(c, inflight[slot], NULL)))
				die("append", c, rc);
			rc = mnemo_submit_append(c, ctx, 0, 1, t, chunk, (uint8_t *)base + slot * chunk_bytes,
						 chunk_bytes, &inflight[slot]);
			if (rc)
				die("append", c, rc);
		}
		for (int s = 0; s < 2; s++)
			if (inflight[s] && (rc = mnemo_wait_append(c, inflight[s], NULL)))
				die("append", c, rc);
		double gbps = tokens * (double)2 * H * D * 2 / (now_s() - t0) / 1e9;
		if (gbps > best_ours)
			best_ours = gbps;
		mnemo_drop(c, ctx, NULL);
	}
	/* memcpy of the same chunks into one buffer of the same total size */
	size_t total = tokens * (size_t)2 * H * D * 2;
	uint8_t *dst = malloc(total);
	memset(dst, 0, total);
	double best_memcpy = 0;
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s();
		for (size_t off = 0; off < total; off += chunk_bytes)
			memcpy(dst + off, (uint8_t *)base + ((off / chunk_bytes) & 1) * chunk_bytes, chunk_bytes);
		double gbps = total / (now_s() - t0) / 1e9;
		if (gbps > best_memcpy)
			best_memcpy = gbps;
	}
	free(dst);
	if (opt_json)
		printf("{\"suite\":\"ipc\",\"metric\":\"append_shm\",\"gbps\":%.3f,\"baseline\":\"memcpy\","
		       "\"baseline_gbps\":%.3f,\"ratio\":%.3f,\"ratio_of\":\"gbps\",\"bytes\":%zu,\"chunk_bytes\":%zu}\n",
		       best_ours, best_memcpy, best_ours / best_memcpy, total, chunk_bytes);
	else
		printf("ipc append_shm %.2f GB/s (best of %d x %.1f GiB, %zu MiB chunks) | memcpy %.2f GB/s | ratio %.2f\n",
		       best_ours, rounds, total / 1073741824.0, chunk_bytes >> 20, best_memcpy,
		       best_ours / best_memcpy);
	mnemo_close(c);
}

/* ---- prefix ---- */

/*
 * LOOKUP of a 1M-token prompt whose whole prefix a context holds: by ids
 * (the daemon hashes 4 MiB of ids) and by the client's chain hashes (32 KiB),
 * beside the client-side hashing and a HELLO round trip in the same run.
 */
static void bench_prefix(const char *argv0)
{
	mnemo_client *c = connect_daemon(argv0);
	const uint32_t N = 1u << 20, chunk = 1u << 16, D = 8;
	struct mnemo_geometry g = { 1, 1, 1, D, MNEMO_F32, 0 };
	uint64_t ctx;
	int rc = mnemo_create(c, "bench-prefix", &g, &ctx);
	if (rc)
		die("create", c, rc);
	float *kv = calloc((size_t)2 * chunk * D, sizeof(float));
	uint32_t *ids = malloc((size_t)N * 4);
	uint64_t *h = malloc((size_t)(N / MNEMO_CHUNK_TOKENS) * 8);
	for (uint32_t i = 0; i < N; i++)
		ids[i] = i * 2654435761u;
	for (uint32_t t = 0; t < N; t += chunk)
		if ((rc = mnemo_append(c, ctx, 0, 1, t, chunk, kv, (size_t)2 * chunk * D * 4, NULL)))
			die("append", c, rc);
	if ((rc = mnemo_tokens(c, ctx, 42, 0, ids, N, NULL)))
		die("tokens", c, rc);
	enum { ITERS = 200 };
	double t_ids[ITERS], t_h[ITERS], t_hash[ITERS], t_hello[ITERS];
	struct mnemo_lookup_info li;
	struct mnemo_server_info si;
	uint32_t probes = 0;
	for (int i = 0; i < ITERS; i++) {
		double t0 = now_s();
		if ((rc = mnemo_lookup(c, 42, ids, N, &li)) || li.tokens != N)
			die("lookup by ids", c, rc ? rc : -EPROTO);
		double t1 = now_s();
		size_t k = mnemo_prefix_hashes(42, ids, N, h);
		double t2 = now_s();
		if ((rc = mnemo_lookup_hashes(c, h, (uint32_t)k, &li)) || li.tokens != N)
			die("lookup by hashes", c, rc ? rc : -EPROTO);
		double t3 = now_s();
		if ((rc = mnemo_hello(c, &si)))
			die("hello", c, rc);
		t_hello[i] = (now_s() - t3) * 1e3;
		t_ids[i] = (t1 - t0) * 1e3;
		t_hash[i] = (t2 - t1) * 1e3;
		t_h[i] = (t3 - t2) * 1e3;
		probes = li.probes;
	}
	double a = pct(t_ids, ITERS, 0.5), b = pct(t_h, ITERS, 0.5), hh = pct(t_hash, ITERS, 0.5),
	       rt = pct(t_hello, ITERS, 0.5);
	if (opt_json)
		printf("{\"suite\":\"prefix\",\"tokens\":%u,\"lookup_ids_p50_ms\":%.4f,\"lookup_ids_p99_ms\":%.4f,"
		       "\"lookup_hashes_p50_ms\":%.4f,\"client_hash_p50_ms\":%.4f,\"probes\":%u,"
		       "\"baseline\":\"hello_rtt\",\"baseline_p50_ms\":%.4f}\n",
		       N, a, pct(t_ids, ITERS, 0.99), b, hh, probes, rt);
	else
		printf("prefix lookup  %u tokens: by ids p50 %.3f ms (p99 %.3f) | by hashes p50 %.3f ms + client "
		       "hashing %.3f ms | %u probes | HELLO rtt %.3f ms\n",
		       N, a, pct(t_ids, ITERS, 0.99), b, hh, probes, rt);
	mnemo_drop(c, ctx, NULL);
	free(kv);
	free(ids);
	free(h);
	mnemo_close(c);
}

/* ---- attend ---- */

struct stream_arg {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
};

static void *stream_part(void *arg)
{
	struct stream_arg *a = arg;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t i = 0;
	for (; i + 4 <= a->n; i += 4) {
		s0 += a->p[i];
		s1 += a->p[i + 1];
		s2 += a->p[i + 2];
		s3 += a->p[i + 3];
	}
	for (; i < a->n; i++)
		s0 += a->p[i];
	a->sum = s0 + s1 + s2 + s3;
	return NULL;
}

/* Seconds to read @p bytes once with @p threads threads. */
static double stream_once(const uint64_t *buf, size_t words, unsigned threads)
{
	pthread_t th[64];
	struct stream_arg a[64];
	double t0 = now_s();
	for (unsigned i = 0; i < threads; i++) {
		size_t lo = words * i / threads, hi = words * (i + 1) / threads;
		a[i] = (struct stream_arg){ .p = buf + lo, .n = hi - lo };
		pthread_create(&th[i], NULL, stream_part, &a[i]);
	}
	uint64_t s = 0;
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		s += a[i].sum;
	}
	double dt = now_s() - t0;
	__asm__ volatile("" : : "r"(s));
	return dt;
}

static void bench_attend(const char *argv0)
{
	mnemo_client *c = connect_daemon(argv0);
	struct mnemo_server_info si;
	int rc = mnemo_hello(c, &si);
	if (rc)
		die("hello", c, rc);
	struct mnemo_daemon_info di;
	mnemo_stat_daemon(c, &di);
	enum { D = 128, G = 4 };
	const uint32_t chunk = 16384;
	const size_t chunk_bytes = (size_t)2 * chunk * D * 2;
	void *base;
	if ((rc = mnemo_shm_attach(c, chunk_bytes, &base)))
		die("shm attach", c, rc);
	uint16_t *p = base;
	uint64_t s = 0x1234;
	for (size_t i = 0; i < chunk_bytes / 2; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = kv_f32_to_bf16((float)((int64_t)(s >> 33) % 2000 - 1000) / 1000.0f);
	}
	if (!opt_json)
		printf("attend: exact, one KV head with %u query heads, d=%u, bf16; mnemod with %u workers, kernels %s\n",
		       G, D, si.workers, di.kernels);
	for (unsigned ti = 0; ti < opt_n_tokens; ti++) {
		uint64_t N = opt_tokens[ti];
		struct mnemo_geometry g = { 1, 1, G, D, MNEMO_BF16, 10000.f };
		uint64_t ctx;
		char name[32];
		snprintf(name, sizeof(name), "bench-attend-%" PRIu64, N);
		if ((rc = mnemo_create(c, name, &g, &ctx)))
			die("create", c, rc);
		for (uint64_t t = 0; t < N; t += chunk) {
			uint32_t n = (uint32_t)(N - t < chunk ? N - t : chunk);
			/* keys then values of n tokens: the first n rows of each half */
			if (n < chunk)
				memmove((uint8_t *)base + (size_t)n * D * 2, (uint8_t *)base + chunk_bytes / 2,
					(size_t)n * D * 2);
			if ((rc = mnemo_append(c, ctx, 0, 1, t, n, base, (size_t)2 * n * D * 2, NULL)))
				die("append", c, rc);
		}
		float q[G * D], o[G * D], lse[G];
		for (unsigned i = 0; i < G * D; i++)
			q[i] = (float)((i * 37) % 100) / 100.0f - 0.5f;
		double *t_ms = malloc(sizeof(double) * opt_iters), *c_ms = malloc(sizeof(double) * opt_iters);
		for (unsigned i = 0; i < opt_iters + 2; i++) {
			struct mnemo_attend_info info;
			double t0 = now_s();
			if ((rc = mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o, lse, &info)))
				die("attend", c, rc);
			if (i >= 2) {
				t_ms[i - 2] = (now_s() - t0) * 1e3;
				c_ms[i - 2] = info.compute_ns / 1e6;
			}
		}
		mnemo_drop(c, ctx, NULL);
		/* the floor: stream the same bytes with as many threads as mnemod has workers */
		size_t bytes = (size_t)N * D * 2 * 2;
		uint64_t *buf = malloc(bytes);
		memset(buf, 1, bytes);
		double *f_ms = malloc(sizeof(double) * opt_iters);
		for (unsigned i = 0; i < opt_iters; i++)
			f_ms[i] = stream_once(buf, bytes / 8, si.workers) * 1e3;
		free(buf);
		double p50 = pct(t_ms, opt_iters, 0.5), p99 = pct(t_ms, opt_iters, 0.99);
		double cp50 = pct(c_ms, opt_iters, 0.5), floor_ms = pct(f_ms, opt_iters, 0.5);
		if (opt_json)
			printf("{\"suite\":\"attend\",\"policy\":\"exact\",\"tokens\":%" PRIu64 ",\"head_dim\":%u,"
			       "\"group\":%u,\"dtype\":\"bf16\",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"compute_p50_ms\":%.3f,"
			       "\"floor_ms\":%.3f,\"ratio\":%.3f,\"ratio_of\":\"p50_ms/floor_ms\",\"bytes\":%zu,"
			       "\"workers\":%u,\"kernels\":\"%s\"}\n",
			       N, D, G, p50, p99, cp50, floor_ms, p50 / floor_ms, bytes, si.workers, di.kernels);
		else
			printf("attend %8" PRIu64 " tokens (%4zu MiB): p50 %8.2f ms p99 %8.2f ms (compute %8.2f) | stream floor %8.2f ms (%5.1f GB/s) | ratio %.2f\n",
			       N, bytes >> 20, p50, p99, cp50, floor_ms, bytes / floor_ms / 1e6, p50 / floor_ms);
		free(t_ms);
		free(c_ms);
		free(f_ms);
	}
	mnemo_close(c);
}


/* ---- tier ---- */

/* The catalog's side of the tier bench: each slot's identity-seeded checksum,
 * recorded as it was written, as the store records a block's. */
struct tier_check {
	size_t block_bytes;
	const uint64_t *sums;     /* [slot] */
};

/* A block read back must match the checksum recorded for its slot, as the store checks. */
static int check_block(struct ssd_io *io)
{
	const struct tier_check *tc = io->arg;
	return record_block_checksum(io->buf, tc->block_bytes, 1, 0, 0, io->slot) == tc->sums[io->slot] ? 0 :
														  -EBADMSG;
}

/* Run fio with @p args and return the bandwidth of @p kind ("read"/"write") in GB/s. */
static double fio_gbps(const char *args, const char *kind)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "fio --output-format=json %s 2>/dev/null", args);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap);
	size_t r;
	while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0)
		n += r;
	buf[n] = 0;
	int st = pclose(p);
	double gbps = -1;
	/* fio prints notes before the JSON on some versions */
	char *start = strchr(buf, '{');
	struct json_object *root = start ? json_tokener_parse(start) : NULL, *jobs, *job, *dir, *bw;
	if (st == 0 && root && json_object_object_get_ex(root, "jobs", &jobs) &&
	    (job = json_object_array_get_idx(jobs, 0)) && json_object_object_get_ex(job, kind, &dir) &&
	    json_object_object_get_ex(dir, "bw_bytes", &bw))
		gbps = (double)json_object_get_int64(bw) / 1e9;
	json_object_put(root);
	free(buf);
	return gbps;
}

static void bench_tier(const char *argv0)
{
	const char *base = opt_dir ? opt_dir : "/var/tmp";
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/mnemo-bench-tier-XXXXXX", base);
	if (!mkdtemp(dir))
		die("mkdtemp", NULL, -errno);
	struct ssd *s;
	int rc = ssd_open(dir, 0, &s);
	if (rc)
		die("ssd tier (the folder must allow O_DIRECT)", NULL, rc);
	/* a block of d=128 bf16 with 64 tokens: 32 KiB of K/V filling its slot */
	const uint32_t slot = ssd_slot_bytes(2 * 64 * 128 * 2);
	const size_t block_bytes = 2 * 64 * 128 * 2;
	const uint64_t n_slots = opt_tier_bytes / slot;
	struct ssd_file *f;
	if ((rc = ssd_file_open(s, 1, slot, true, &f)))
		die("block file", NULL, rc);
	/* one buffer per I/O of a call, so that no two I/Os in flight share memory */
	const unsigned per_call = 1024, qd_write = 32;
	uint8_t *bufs;
	if (posix_memalign((void **)&bufs, SSD_ALIGN, (size_t)slot * per_call))
		die("memory", NULL, -ENOMEM);
	for (unsigned k = 0; k < per_call; k++) {
		uint8_t *b = bufs + (size_t)k * slot;
		for (size_t i = 0; i < block_bytes; i++)
			b[i] = (uint8_t)(i * 7 + k);
	}
	uint64_t *sums = malloc(n_slots * sizeof(uint64_t));
	if (!sums)
		die("memory", NULL, -ENOMEM);
	const struct tier_check tcheck = { block_bytes, sums };
	struct ssd_io *ios = calloc(per_call, sizeof(*ios));

	/* sequential write-through: slot allocation, checksums, 32 writes in flight,
	 * one sync; rounds alternate with fio's, best of each (the disk is shared) */
	double ow[16], fw[16];
	char args[1536];
	for (unsigned round = 0; round < opt_rounds; round++) {
		if (round) {
			ssd_file_remove(f);
			if ((rc = ssd_file_open(s, 1, slot, true, &f)))
				die("block file", NULL, rc);
		}
		/* as an APPEND does: every block of the batch prepared, then one submission */
		struct ssd_io *wios = calloc(n_slots, sizeof(*wios));
		double t0 = now_s();
		for (uint64_t i = 0; i < n_slots; i++) {
			uint64_t sl;
			if ((rc = ssd_slot_alloc(f, &sl)))
				die("slot", NULL, rc);
			uint8_t *b = bufs + (size_t)(i % per_call) * slot;
			if (sl >= n_slots)
				die("slot", NULL, -ERANGE);
			sums[sl] = record_block_checksum(b, block_bytes, 1, 0, 0, sl);   /* the work a real write does */
			wios[i] = (struct ssd_io){ .f = f, .slot = sl, .buf = b, .write = true };
		}
		if ((rc = ssd_submit_qd(s, wios, (unsigned)n_slots, qd_write)))
			die("write", NULL, rc);
		free(wios);
		if ((rc = ssd_sync(f)))
			die("sync", NULL, rc);
		ow[round] = (double)n_slots * slot / (now_s() - t0) / 1e9;
		snprintf(args, sizeof(args), "--name=seqwrite --filename=%s/fio.dat --size=%llu --bs=%u --rw=write "
			 "--ioengine=io_uring --direct=1 --iodepth=%u --end_fsync=1", dir,
			 (unsigned long long)n_slots * slot, slot, qd_write);
		fw[round] = fio_gbps(args, "write");
		snprintf(args, sizeof(args), "%s/fio.dat", dir);
		unlink(args);
	}
	/* medians: the shared disk swings by 2x from one second to the next */
	double ours_w = pct(ow, opt_rounds, 0.5), fio_w = pct(fw, opt_rounds, 0.5);
	if (opt_json)
		printf("{\"suite\":\"tier\",\"metric\":\"seqwrite\",\"qd\":%u,\"block_kib\":%u,\"gbps\":%.3f,"
		       "\"fio_gbps\":%.3f,\"ratio\":%.3f,\"ratio_of\":\"gbps\",\"bytes\":%llu,\"dir\":\"%s\"}\n",
		       qd_write, slot / 1024, ours_w, fio_w, ours_w / fio_w,
		       (unsigned long long)n_slots * slot, base);
	else
		printf("tier seqwrite  qd%-3u %u KiB: %.2f GB/s | fio %.2f GB/s | ratio %.2f  (%.1f GiB in %s)\n",
		       qd_write, slot / 1024, ours_w, fio_w, ours_w / fio_w,
		       (double)n_slots * slot / 1073741824.0, base);

	/* random reads of blocks not in RAM (O_DIRECT: never the page cache), each verified */
	const unsigned qds[2] = { 1, 32 };
	for (int qi = 0; qi < 2; qi++) {
		unsigned qd = qds[qi];
		uint64_t rs = 0x9e3779b97f4a7c15ull;
		unsigned calls_n = qd == 1 ? 64 : per_call;
		double orr[16], frr[16];
		for (unsigned round = 0; round < opt_rounds; round++) {
			uint64_t reads = 0;
			double start = now_s(), end = start + opt_tier_seconds;
			while (now_s() < end) {
				for (unsigned k = 0; k < calls_n; k++) {
					rs = rs * 6364136223846793005ull + 1442695040888963407ull;
					ios[k] = (struct ssd_io){ .f = f, .slot = (rs >> 20) % n_slots,
								  .buf = bufs + (size_t)k * slot,
								  .check = check_block, .arg = (void *)&tcheck };
				}
				if ((rc = ssd_submit_qd(s, ios, calls_n, qd)))
					die(rc == -EBADMSG ? "a block read back wrong" : "read", NULL, rc);
				reads += calls_n;
			}
			orr[round] = (double)reads * slot / (now_s() - start) / 1e9;
			snprintf(args, sizeof(args), "--name=randread --filename=%s/ctx-%016llx.blk --bs=%u --rw=randread "
				 "--ioengine=io_uring --direct=1 --iodepth=%u --runtime=%u --time_based --size=%llu", dir, 1ull,
				 slot, qd, opt_tier_seconds, (unsigned long long)n_slots * slot);
			frr[round] = fio_gbps(args, "read");
		}
		double ours = pct(orr, opt_rounds, 0.5), fio_r = pct(frr, opt_rounds, 0.5);
		if (opt_json)
			printf("{\"suite\":\"tier\",\"metric\":\"randread\",\"qd\":%u,\"block_kib\":%u,\"gbps\":%.3f,"
			       "\"fio_gbps\":%.3f,\"ratio\":%.3f,\"ratio_of\":\"gbps\",\"iops\":%.0f,\"dir\":\"%s\"}\n",
			       qd, slot / 1024, ours, fio_r, ours / fio_r, ours * 1e9 / slot, base);
		else
			printf("tier randread  qd%-3u %u KiB: %.2f GB/s (%.0f IOPS, checksums verified) | fio %.2f GB/s | ratio %.2f\n",
			       qd, slot / 1024, ours, ours * 1e9 / slot, fio_r, ours / fio_r);
	}
	free(ios);
	free(bufs);
	free(sums);
	ssd_file_remove(f);
	ssd_close(s);

	/* APPEND through a daemon whose SSD tier is on the same file system:
	 * what write-through costs a client, beside fio's sequential write */
	stop_daemon();
	char ssd[600];
	snprintf(ssd, sizeof(ssd), "%s/daemon-ssd", dir);
	opt_ssd = ssd;
	mnemo_client *c = connect_daemon(argv0);
	enum { H = 8, D = 128 };
	const uint32_t chunk = 16384;                 /* 64 MiB per APPEND */
	const size_t chunk_bytes = (size_t)2 * H * chunk * D * 2;
	void *arena;
	if ((rc = mnemo_shm_attach(c, 2 * chunk_bytes, &arena)))
		die("shm attach", c, rc);
	memset(arena, 0x3c, 2 * chunk_bytes);
	const uint64_t tokens = opt_tier_bytes / ((uint64_t)2 * H * D * 2) / chunk * chunk;
	double ap[16];
	for (unsigned round = 0; round < opt_rounds; round++) {
		struct mnemo_geometry g = { 1, H, H * 4, D, MNEMO_BF16, 10000.f };
		uint64_t ctx, inflight[2] = { 0, 0 };
		char name[32];
		snprintf(name, sizeof(name), "bench-durable-%u", round);
		if ((rc = mnemo_create(c, name, &g, &ctx)))
			die("create", c, rc);
		double t0 = now_s();
		int slot_i = 0;
		for (uint64_t t = 0; t < tokens; t += chunk, slot_i ^= 1) {
			if (inflight[slot_i] && (rc = mnemo_wait_append(c, inflight[slot_i], NULL)))
				die("append", c, rc);
			if ((rc = mnemo_submit_append(c, ctx, 0, 1, t, chunk, (uint8_t *)arena + slot_i * chunk_bytes,
						      chunk_bytes, &inflight[slot_i])))
				die("append", c, rc);
		}
		for (int k = 0; k < 2; k++)
			if (inflight[k] && (rc = mnemo_wait_append(c, inflight[k], NULL)))
				die("append", c, rc);
		ap[round] = (double)tokens * 2 * H * D * 2 / (now_s() - t0) / 1e9;
		mnemo_drop(c, ctx, NULL);
	}
	mnemo_close(c);
	stop_daemon();
	opt_ssd = NULL;
	double ours_a = pct(ap, opt_rounds, 0.5);
	if (opt_json)
		printf("{\"suite\":\"tier\",\"metric\":\"append_durable\",\"qd\":128,\"block_kib\":%u,\"gbps\":%.3f,"
		       "\"fio_gbps\":%.3f,\"ratio\":%.3f,\"ratio_of\":\"gbps\",\"append_mib\":%zu,\"dir\":\"%s\"}\n",
		       slot / 1024, ours_a, fio_w, ours_a / fio_w, chunk_bytes >> 20, base);
	else
		printf("tier append    durable APPENDs of %zu MiB through mnemod: %.2f GB/s of K/V | fio seqwrite %.2f GB/s | ratio %.2f\n",
		       chunk_bytes >> 20, ours_a, fio_w, ours_a / fio_w);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "mnemo-bench: could not remove %s\n", dir);
}

/* ---- preload: mnemo-preload of a trace vs fio's sequential write ---- */

mnemo_client *bench_daemon_start(const char *argv0, const char *ssd_dir, const char *host_mem,
				 const char *estimates)
{
	opt_ssd = ssd_dir;
	opt_host_mem = host_mem;
	opt_estimates = estimates;
	return connect_daemon(argv0);
}

void bench_daemon_stop(void)
{
	stop_daemon();
	opt_ssd = NULL;
	opt_host_mem = NULL;
	opt_estimates = NULL;
}

const char *bench_daemon_socket(void)
{
	return opt_socket ? opt_socket : sock_path;
}

/* mnemo-preload beside this binary (the build tree and an install keep them together). */
void bench_find_preload(char *out, size_t cap)
{
	static const char *const rel[] = { "mnemo-preload" };
	beside_self(rel, 1, "mnemo-preload", out, cap);
}

/*
 * Rounds alternate: mnemo-preload streams the trace into a mnemod whose SSD
 * tier lives in --dir (every APPEND durable before its reply), the context
 * is dropped, then fio writes as many bytes sequentially to the same file
 * system (io_uring, O_DIRECT, 1 MiB blocks, queue depth 4, fsync at the
 * end) and its file is removed. Medians of the rounds, and their ratio.
 */
/*
 * One preload of @p N generated tokens of a 1B model's geometry (16 layers,
 * 8 KV heads, head_dim 64, bf16) through @p c, as mnemo-preload streams a
 * trace: 16K-token chunks in two halves of an shm arena, two APPENDs in
 * flight, each STREAM and durable before its reply. The values are random
 * bf16 in +-[1, 2), generated in the arena (about 10 GB/s here, so the disk
 * sets the pace). For contexts whose trace would not fit on the disk beside
 * the tier's copy. Returns the seconds from the first fill to the last reply.
 */
static double preload_synthetic(mnemo_client *c, const char *name, uint64_t N, uint64_t *bytes)
{
	enum { L = 16, H = 8, QH = 32, D = 64 };
	const uint64_t chunk = 16384, tok_bytes = (uint64_t)L * 2 * H * D * 2, half = chunk * tok_bytes;
	struct mnemo_geometry g = { L, H, QH, D, MNEMO_BF16, 500000.f };
	uint64_t ctx;
	int rc = mnemo_create(c, name, &g, &ctx);
	if (rc)
		die("create", c, rc);
	void *arena;
	if ((rc = mnemo_shm_attach(c, 2 * half, &arena)))
		die("shm attach", c, rc);
	uint64_t pending[2] = { 0, 0 }, r = 0x9e3779b97f4a7c15ull ^ N;
	int busy[2] = { 0, 0 };
	unsigned k = 0;
	double t0 = now_s();
	for (uint64_t t = 0; t < N; t += chunk, k ^= 1) {
		const uint64_t n = N - t < chunk ? N - t : chunk;
		if (busy[k] && (rc = mnemo_wait_append(c, pending[k], NULL)))
			die("APPEND", c, rc);
		uint64_t *w = (uint64_t *)((uint8_t *)arena + k * half);
		for (uint64_t i = 0; i < n * tok_bytes / 8; i++) {
			r ^= r << 13;
			r ^= r >> 7;
			r ^= r << 17;
			w[i] = (r & 0x807f807f807f807full) | 0x3f803f803f803f80ull;
		}
		/* the last APPEND is a sync point: the time includes durability */
		if ((rc = mnemo_submit_append_ex(c, ctx, 0, L, t, (uint32_t)n, w, n * tok_bytes,
						 MNEMO_APPEND_STREAM | (t + n >= N ? MNEMO_APPEND_SYNC : 0), &pending[k])))
			die("APPEND", c, rc);
		busy[k] = 1;
	}
	for (unsigned i = 0; i < 2; i++, k ^= 1)
		if (busy[k] && (rc = mnemo_wait_append(c, pending[k], NULL)))
			die("APPEND", c, rc);
	const double s = now_s() - t0;
	*bytes = N * tok_bytes;
	return s;
}

/* Write back and drop the page cache: 1, or 0 when this process may not. */
static int drop_page_cache(void)
{
	sync();
	FILE *dc = fopen("/proc/sys/vm/drop_caches", "w");
	if (!dc)
		return 0;
	const int ok = fputs("3\n", dc) >= 0;
	return fclose(dc) == 0 && ok;
}

static void bench_preload(const char *argv0, const char *trace)
{
	const char *base = opt_dir ? opt_dir : "/var/tmp";
	char dir[512], ssd[600], bin[PATH_MAX], cmd[2 * PATH_MAX + 1024];
	snprintf(dir, sizeof(dir), "%s/mnemo-bench-preload-XXXXXX", base);
	if (!mkdtemp(dir))
		die("mkdtemp", NULL, -errno);
	snprintf(ssd, sizeof(ssd), "%s/daemon-ssd", dir);
	opt_ssd = ssd;
	bench_find_preload(bin, sizeof(bin));
	mnemo_client *c = connect_daemon(argv0);
	double ours[16], theirs[16];
	uint64_t bytes = 0;
	for (unsigned round = 0; round < opt_rounds; round++) {
		char name[32];
		snprintf(name, sizeof(name), "bench-preload-%u", round);
		if (!trace) {
			const double s = preload_synthetic(c, name, opt_tokens[0], &bytes);
			ours[round] = (double)bytes / s / 1e9;
			goto dropped;
		}
		/* the trace is read from its disk in every round, not from a page
		 * cache the previous round filled (16 GiB fits in this RAM) */
		const int cold = drop_page_cache();
		if (!round && !opt_json)
			fprintf(stderr, "preload: %s\n", cold ? "page cache dropped before each round: the trace is read from "
								 "its disk" : "page cache kept (not permitted to drop): "
									      "later rounds may read the trace from RAM");
		snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' --name %s --json --quiet --chunk 16384 '%s'", bin, sock_path,
			 name, trace);
		FILE *p = popen(cmd, "r");
		char line[8192] = "";
		size_t n = p ? fread(line, 1, sizeof(line) - 1, p) : 0;
		line[n] = 0;
		int st = p ? pclose(p) : -1;
		struct json_object *root = json_tokener_parse(line), *v;
		double s = 0;
		if (st != 0 || !root || !json_object_object_get_ex(root, "bytes", &v) ||
		    !(bytes = (uint64_t)json_object_get_int64(v)) || !json_object_object_get_ex(root, "stream_s", &v) ||
		    !((s = json_object_get_double(v)) > 0)) {
			json_object_put(root);
			die("mnemo-preload failed (run it alone to see why)", NULL, -EIO);
		}
		json_object_put(root);
		ours[round] = (double)bytes / s / 1e9;
dropped:;
		int rc = mnemo_drop(c, 0, name);
		if (rc)
			die("drop", c, rc);
		char args[1200];
		snprintf(args, sizeof(args), "--name=seqwrite --filename=%s/fio.dat --size=%llu --bs=1M --rw=write "
			 "--ioengine=io_uring --direct=1 --iodepth=4 --end_fsync=1", dir, (unsigned long long)bytes);
		theirs[round] = fio_gbps(args, "write");
		snprintf(args, sizeof(args), "%s/fio.dat", dir);
		unlink(args);
		if (theirs[round] <= 0)
			die("fio failed (is it installed?)", NULL, -EIO);
		if (!opt_json)
			fprintf(stderr, "round %u: preload %.2f GB/s, fio %.2f GB/s, ratio %.2f\n", round + 1, ours[round],
				theirs[round], ours[round] / theirs[round]);
	}
	/* each round against the fio round beside it: the disk drifts by 2x over
	 * minutes, so the ratio is the median of the rounds' ratios */
	double ratios[16];
	for (unsigned i = 0; i < opt_rounds; i++)
		ratios[i] = ours[i] / theirs[i];
	double ratio = pct(ratios, opt_rounds, 0.5);
	double a = pct(ours, opt_rounds, 0.5), b = pct(theirs, opt_rounds, 0.5);
	if (opt_json)
		printf("{\"suite\":\"preload\",\"metric\":\"stream\",\"bytes\":%llu,\"gbps\":%.3f,\"fio_gbps\":%.3f,"
		       "\"ratio\":%.3f,\"ratio_of\":\"median over rounds of gbps/fio_gbps\",\"rounds\":%u,"
		       "\"trace\":\"%s\",\"dir\":\"%s\"}\n",
		       (unsigned long long)bytes, a, b, ratio, opt_rounds, trace ? trace : "generated", base);
	else
		printf("preload        %s: %.2f GiB of K/V, %.2f GB/s | fio seqwrite %.2f GB/s (medians of %u rounds) | "
		       "ratio %.2f (median of the rounds' ratios)\n",
		       trace ? trace : "generated", (double)bytes / (1ull << 30), a, b, opt_rounds, ratio);
	fflush(stdout);
	if (!trace)
		goto done;   /* restart needs indexes over real keys: a trace's */

	/*
	 * Restart to first ATTEND: preloaded and indexed once, then per policy
	 * two daemon restarts, after a sync, one with the page cache kept (a
	 * restart of the daemon alone: the side files may still be cached, the
	 * blocks are read with O_DIRECT either way) and one with it dropped when this
	 * process may (as after a reboot); each time connect, STAT by name, and
	 * the first ATTEND of layer 0 (every KV head, budget 2% or each of
	 * --budgets, the index loaded from its side file), timed from the
	 * connect; then a second ATTEND, warm.
	 */
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' --name attach --json --quiet --chunk 16384 --policies "
		 "quest,blocks '%s' > /dev/null", bin, sock_path, trace);
	if (system(cmd) != 0)
		die("mnemo-preload --policies quest,blocks failed", NULL, -EIO);
	static const enum mnemo_policy pols[2] = { MNEMO_POLICY_BLOCKS, MNEMO_POLICY_QUEST };
	static const char *const pol_names[2] = { "blocks", "quest" };
	/* restarts per policy and page-cache state: single restarts of this disk
	 * swing by 2x, so each is repeated, kept and dropped taking turns */
	enum { RESTARTS = 3 };
	const unsigned n_rb = budgets_given ? ropt.n_budgets : 1;
	for (int at = 0; at < (int)n_rb * 2 * 2 * RESTARTS; at++) {
		const int run = at % (2 * 2 * RESTARTS), bi = at / (2 * 2 * RESTARTS);
		const int pi = run / (2 * RESTARTS), want_cold = run % 2, round = (run / 2) % RESTARTS;
		const double bf = budgets_given ? ropt.budgets[bi] : 0.02;
		mnemo_close(c);
		keep_tmpdir = true;
		stop_daemon();
		/* either way the disk is idle first: the side files the index builds
		 * just wrote (1 GiB of quest bounds at 512K) are not still being
		 * written back under the first ATTEND, as they would not be when a
		 * preloaded context is attached to later */
		sync();
		const int dropped = want_cold ? drop_page_cache() : 0;
		double t0 = now_s();
		c = connect_daemon(argv0);
		double up = now_s() - t0;
		t0 = now_s();
		mnemo_client *c2;
		struct mnemo_context_info ci;
		int rc = mnemo_connect(sock_path, &c2);
		if (!rc)
			rc = mnemo_stat(c2, 0, "attach", &ci);
		if (rc)
			die("attach after restart", c2, rc);
		const size_t nq = (size_t)ci.geom.n_q_heads * ci.geom.head_dim;
		float *q = malloc(nq * sizeof(float)), *o = malloc(nq * sizeof(float)), *l = malloc(ci.geom.n_q_heads * 4);
		for (size_t i = 0; i < nq; i++)
			q[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
		const double bt = bf >= 1 ? bf : bf * (double)ci.tokens;
		const uint32_t budget = bt < 1 ? 1 : bt > UINT32_MAX ? UINT32_MAX : (uint32_t)bt;
		struct mnemo_attend_info ai;
		if ((rc = mnemo_attend_ex(c2, ci.id, 0, pols[pi], budget, 0, UINT64_MAX, q, o, l, &ai)))
			die("first ATTEND", c2, rc);
		const double first = now_s() - t0;
		t0 = now_s();
		if ((rc = mnemo_attend_ex(c2, ci.id, 0, pols[pi], budget, 0, UINT64_MAX, q, o, l, &ai)))
			die("second ATTEND", c2, rc);
		const double second = now_s() - t0;
		struct mnemo_daemon_info di;
		mnemo_stat_daemon(c2, &di);
		mnemo_close(c2);
		free(q);
		free(o);
		free(l);
		if (opt_json)
			printf("{\"suite\":\"preload\",\"metric\":\"restart_first_attend\",\"policy\":\"%s\","
			       "\"first_ms\":%.2f,\"second_ms\":%.2f,\"ratio\":%.2f,\"ratio_of\":\"first_ms/second_ms\","
			       "\"daemon_start_ms\":%.1f,\"index_loads\":%llu,\"index_builds\":%llu,\"ssd_reads\":%llu,"
			       "\"cold_cache\":%s,\"tokens\":%llu,\"budget\":%u,\"round\":%d}\n",
			       pol_names[pi], first * 1e3, second * 1e3, first / second, up * 1e3,
			       (unsigned long long)di.index_loads, (unsigned long long)di.index_builds,
			       (unsigned long long)di.ssd_reads, dropped ? "true" : "false", (unsigned long long)ci.tokens,
			       budget, round + 1);
		else
			printf("restart %d/%d    %-6s budget %u: attach + first ATTEND of layer 0 %.1f ms (%llu indexes "
			       "loaded, %llu built, %llu SSD reads), second %.1f ms; daemon up in %.0f ms; page cache %s\n",
			       round + 1, RESTARTS, pol_names[pi], budget, first * 1e3, (unsigned long long)di.index_loads,
			       (unsigned long long)di.index_builds, (unsigned long long)di.ssd_reads, second * 1e3, up * 1e3,
			       dropped ? "dropped" : want_cold ? "kept (not permitted to drop)" : "kept");
		fflush(stdout);
	}
done:
	mnemo_close(c);
	stop_daemon();
	opt_ssd = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "mnemo-bench: could not remove %s\n", dir);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mnemo-bench SUITE [options]\n"
		"\n"
		"Suites:\n"
		"  ipc       HELLO round trip vs a raw AF_UNIX ping-pong; APPEND through shm vs memcpy\n"
		"  attend    exact ATTEND of one GQA group (4 query heads, d=128, bf16) vs the time\n"
		"            to stream the same bytes with as many threads as mnemod has workers\n"
		"  tier      SSD tier: sequential write-through and random block reads (queue\n"
		"            depths 1 and 32, checksums verified) vs fio with io_uring, O_DIRECT,\n"
		"            the same block size and the same file system (--dir)\n"
		"  retrieval every policy at a sweep of budgets on a trace's decode queries\n"
		"            (--trace FILE, DESIGN.md section 7), scored against exact attention\n"
		"            computed in the same run: mass recall, oracle-relative mass recall,\n"
		"            top-100 recall, output and lse error, scanned and loaded fractions,\n"
		"            p50/p99 per query group beside exact's, build time\n"
		"  segment   EM-LLM's segmentation of one layer of a trace (--trace FILE), from\n"
		"            surprise and from key novelty, unrefined and refined on the key graph:\n"
		"            boundary F1 against the trace's planted episodes, modularity or\n"
		"            conductance before and after, tokens per minute on one thread\n"
		"  preload   mnemo-preload of a trace (--trace FILE) into a mnemod whose SSD tier is\n"
		"            in --dir, against fio's sequential write of as many bytes there\n"
		"            (io_uring, O_DIRECT, 1 MiB, queue depth 4), rounds alternating; then\n"
		"            the time from a daemon restart to the first ATTEND (blocks and quest,\n"
		"            page cache kept and dropped). With --tokens N\n"
		"            instead of a trace, the bench generates the K/V itself and streams\n"
		"            it as mnemo-preload does (no restart part)\n"
		"  decode    decode steps over every layer of a trace (--trace FILE) preloaded into\n"
		"            a mnemod with its SSD tier in --dir and --host-mem: step latency,\n"
		"            SSD bytes per step, mass recall against exact ATTEND of --exact-layers\n"
		"            layers per step, and the exact step estimated from them\n"
		"  prefix    LOOKUP of a 1M-token prompt held by a context, by ids and by chain\n"
		"            hashes, beside a HELLO round trip\n"
		"  all       ipc, attend, tier and prefix\n"
		"\n"
		"Options:\n"
		"  --json            one JSON object per result line (DESIGN.md section 9)\n"
		"  --socket PATH     measure a running mnemod instead of starting one\n"
		"  --mnemod PATH     the mnemod binary to start (default: the one in this build tree)\n"
		"  --workers N       worker threads of the started mnemod (default: one per core)\n"
		"  --tokens N[,N..]  context lengths for attend (default 131072,1048576); preload\n"
		"                    without --trace: generate N tokens of a 1B model's geometry\n"
		"                    (16 layers, 8 KV heads, head_dim 64, bf16) in the bench\n"
		"  --iters N         timed repetitions per point (default 20)\n"
		"  --dir PATH        tier, preload: the file system to measure (default /var/tmp)\n"
		"  --tier-bytes SIZE tier: bytes written and then read at random (default 1G)\n"
		"  --seconds N       tier: seconds per random-read round (default 3)\n"
		"  --rounds N        tier, preload: rounds alternating with fio, medians reported\n"
		"                    (default 5)\n"
		"  --trace FILE      retrieval: the safetensors trace (mnemo-kvgen writes them)\n"
		"  --policies LIST   retrieval: comma-separated (default quest,blocks,centroids,\n"
		"                    centroids2,faiss-ivf,faiss-hnsw); decode: (default centroids2)\n"
		"  --budgets LIST    retrieval, decode: fractions of the tokens (< 1) or token counts\n"
		"                    (default 0.01,0.02,0.05); preload: the restarts' first ATTEND\n"
		"                    budgets (default 0.02)\n"
		"  --coarse-factor X retrieval: centroids2 scores the fine clusters of coarse\n"
		"                    clusters holding X times the budget (default 2)\n"
		"  --block-tokens N  the mnemod the bench starts: tokens per block (default 64)\n"
		"  --rerank R        retrieval: quest keeps 4-bit codes of the keys and reranks\n"
		"                    its R x budget best pages' tokens from them (reported as\n"
		"                    quest-rR); decode: mnemod's --quest-rerank\n"
		"  --cohere C        with --rerank: the share C in [0, 1) of the budget filled\n"
		"                    from the pages the rest of the pick holds (reported as\n"
		"                    quest-rR-cC); decode: mnemod's --quest-cohere\n"
		"  --beam-factor X   retrieval: ann's beam width as a share of the budget\n"
		"                    (default 1)\n"
		"  --index-dir DIR   retrieval: save built indexes in DIR and load them on\n"
		"                    later runs (keyed by trace, policy, head, layer, tokens)\n"
		"  --heads N         retrieval: KV heads to measure; segment: KV heads the key\n"
		"                    graph sums over (default: all)\n"
		"  --queries N       retrieval: decode queries per head (default 16)\n"
		"  --layer N         retrieval, segment: the layer (default 0)\n"
		"  --metric NAME     segment: modularity (default) or conductance\n"
		"  --steps N         decode: steps (default 16)\n"
		"  --exact-layers N  decode: layers per step attended exactly too (default 2)\n"
		"  --host-mem SIZE   decode: mnemod's host-RAM budget (default: its own, half of RAM)\n"
		"  --stream-sync SIZE  mnemod's bytes streamed between sync points (default 16G;\n"
		"                    0: every APPEND durable at its reply)\n"
		"  --no-exact-step   decode: skip the one whole exact step measured at the end\n"
		"  --estimates on|off  decode: mnemod's --estimates (default off, so that every\n"
		"                    policy's mass recall is measured: with estimates the lse of\n"
		"                    centroids* holds estimated mass, and only the output error is)\n"
		"  --gamma LIST      segment: the boundary rule's gamma, comma-separated;\n"
		"                    retrieval: episodic's, the first of the list (default 1)\n"
		"  -h, --help        this help\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *suite = argv[1];
	if (!strcmp(suite, "-h") || !strcmp(suite, "--help")) {
		usage(stdout);
		return 0;
	}
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			opt_json = 1;
		} else if (!strcmp(a, "--socket") && v) {
			opt_socket = v;
			i++;
		} else if (!strcmp(a, "--mnemod") && v) {
			opt_mnemod = v;
			i++;
		} else if (!strcmp(a, "--workers") && v) {
			opt_workers = (unsigned)strtoul(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--dir") && v) {
			opt_dir = v;
			i++;
		} else if (!strcmp(a, "--tier-bytes") && v && strtoull(v, NULL, 10) > 0) {
			char *end;
			opt_tier_bytes = strtoull(v, &end, 10);
			if (*end == 'G' || *end == 'g')
				opt_tier_bytes <<= 30;
			else if (*end == 'M' || *end == 'm')
				opt_tier_bytes <<= 20;
			i++;
		} else if (!strcmp(a, "--trace") && v) {
			ropt.trace = v;
			i++;
		} else if (!strcmp(a, "--policies") && v) {
			ropt.n_policies = split_list(argv[++i], ropt.policies, 16);
			policies_given = 1;
		} else if (!strcmp(a, "--budgets") && v) {
			const char *b[16];
			unsigned n = split_list(argv[++i], b, 16);
			ropt.n_budgets = 0;
			budgets_given = 1;
			for (unsigned k = 0; k < n; k++) {
				char *end;
				double x = strtod(b[k], &end);
				if (*end || !(x > 0)) {
					fprintf(stderr, "mnemo-bench: bad budget %s\n", b[k]);
					return 2;
				}
				ropt.budgets[ropt.n_budgets++] = x;
			}
		} else if (!strcmp(a, "--coarse-factor") && v) {
			char *end;
			ropt.coarse_factor = strtod(v, &end);
			if (*end || !(ropt.coarse_factor >= 1)) {
				fprintf(stderr, "mnemo-bench: --coarse-factor wants a number >= 1\n");
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--block-tokens") && v && atoi(v) >= 1 && atoi(v) <= 256) {
			opt_block_tokens = v;
			i++;
		} else if (!strcmp(a, "--rerank") && v) {
			char *end;
			ropt.rerank = strtod(v, &end);
			if (*end || !(ropt.rerank > 1 && ropt.rerank <= 1024)) {
				fprintf(stderr, "mnemo-bench: --rerank wants a number in (1, 1024]\n");
				return 2;
			}
			snprintf(opt_rerank_arg, sizeof(opt_rerank_arg), "%g", ropt.rerank);
			i++;
		} else if (!strcmp(a, "--cohere") && v) {
			char *end;
			ropt.cohere = strtod(v, &end);
			if (*end || end == v || !(ropt.cohere >= 0 && ropt.cohere < 1)) {
				fprintf(stderr, "mnemo-bench: --cohere wants a number in [0, 1)\n");
				return 2;
			}
			snprintf(opt_cohere_arg, sizeof(opt_cohere_arg), "%g", ropt.cohere);
			i++;
		} else if (!strcmp(a, "--beam-factor") && v) {
			char *end;
			ropt.beam_factor = strtod(v, &end);
			if (*end || !(ropt.beam_factor > 0 && ropt.beam_factor <= 1e6)) {
				fprintf(stderr, "mnemo-bench: --beam-factor wants a number > 0\n");
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--index-dir") && v) {
			ropt.index_dir = v;
			i++;
		} else if (!strcmp(a, "--heads") && v) {
			ropt.heads = strtoull(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--queries") && v) {
			ropt.queries = strtoull(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--steps") && v && atoi(v) > 0) {
			opt_steps = strtoull(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--exact-layers") && v && atoi(v) > 0) {
			opt_exact_layers = (unsigned)atoi(v);
			i++;
		} else if (!strcmp(a, "--no-exact-step")) {
			opt_no_exact_step = 1;
		} else if (!strcmp(a, "--estimates") && v && (!strcmp(v, "on") || !strcmp(v, "off"))) {
			opt_estimates_arg = v;
			i++;
		} else if (!strcmp(a, "--host-mem") && v) {
			opt_host_mem_arg = v;
			i++;
		} else if (!strcmp(a, "--stream-sync") && v) {
			opt_stream_sync = v;
			i++;
		} else if (!strcmp(a, "--gamma") && v) {
			opt_n_gammas = 0;
			char *dup = strdup(v), *save, *tok;
			for (tok = strtok_r(dup, ",", &save); tok && opt_n_gammas < 16; tok = strtok_r(NULL, ",", &save)) {
				char *end;
				double g = strtod(tok, &end);
				if (*end || !(g > 0 && g < 100)) {
					fprintf(stderr, "mnemo-bench: bad gamma %s (0 < gamma < 100)\n", tok);
					free(dup);
					return 2;
				}
				opt_gammas[opt_n_gammas++] = g;
			}
			free(dup);
			i++;
		} else if (!strcmp(a, "--metric") && v) {
			if (!strcmp(v, "modularity")) {
				opt_metric = SEG_MODULARITY;
			} else if (!strcmp(v, "conductance")) {
				opt_metric = SEG_CONDUCTANCE;
			} else {
				fprintf(stderr, "mnemo-bench: --metric is modularity or conductance, not %s\n", v);
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--layer") && v) {
			ropt.layer = (unsigned)strtoul(v, NULL, 10);
			i++;
		} else if (!strcmp(a, "--rounds") && v && atoi(v) > 0 && atoi(v) <= 16) {
			opt_rounds = (unsigned)atoi(v);
			i++;
		} else if (!strcmp(a, "--seconds") && v && atoi(v) > 0) {
			opt_tier_seconds = (unsigned)atoi(v);
			i++;
		} else if (!strcmp(a, "--iters") && v && atoi(v) > 0) {
			opt_iters = (unsigned)atoi(v);
			i++;
		} else if (!strcmp(a, "--tokens") && v) {
			opt_n_tokens = 0;
			opt_tokens_given = true;
			char *dup = strdup(v), *save, *tok;
			for (tok = strtok_r(dup, ",", &save); tok && opt_n_tokens < 8; tok = strtok_r(NULL, ",", &save)) {
				char *end;
				unsigned long long n = strtoull(tok, &end, 10);
				if (*end || n == 0 || n >= (1ull << 32)) {
					fprintf(stderr, "mnemo-bench: bad token count %s\n", tok);
					return 2;
				}
				opt_tokens[opt_n_tokens++] = n;
			}
			free(dup);
			i++;
		} else {
			fprintf(stderr, "mnemo-bench: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!opt_workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		opt_workers = n > 0 ? (unsigned)n : 1;
	}
	int all = !strcmp(suite, "all");
	if (!strcmp(suite, "decode")) {
		if (!ropt.trace) {
			fprintf(stderr, "mnemo-bench: decode needs --trace FILE\n");
			return 2;
		}
		struct bench_decode_opts dopt = { .trace = ropt.trace, .json = opt_json, .n_policies = ropt.n_policies,
						  .n_budgets = ropt.n_budgets, .steps = opt_steps,
						  .exact_layers = opt_exact_layers, .host_mem = opt_host_mem_arg,
						  .exact_step = !opt_no_exact_step,
						  .estimates = !strcmp(opt_estimates_arg, "on"),
						  .quest_rerank = ropt.rerank, .quest_cohere = ropt.cohere,
						  .dir = opt_dir };
		memcpy(dopt.policies, ropt.policies, sizeof(dopt.policies));
		memcpy(dopt.budgets, ropt.budgets, sizeof(dopt.budgets));
		if (!policies_given) {
			dopt.policies[0] = "centroids2";
			dopt.n_policies = 1;
		}
		return bench_decode(argv[0], &dopt) ? 1 : 0;
	}
	if (!strcmp(suite, "preload")) {
		if (!ropt.trace && !opt_tokens_given) {
			fprintf(stderr, "mnemo-bench: preload needs --trace FILE, or --tokens N to generate its data\n");
			return 2;
		}
		bench_preload(argv[0], ropt.trace);
		return 0;
	}
	if (!strcmp(suite, "segment")) {
		if (!ropt.trace) {
			fprintf(stderr, "mnemo-bench: segment needs --trace FILE\n");
			return 2;
		}
		struct bench_segment_opts so = { .trace = ropt.trace, .json = opt_json, .layer = ropt.layer,
						 .heads = ropt.heads, .metric = opt_metric, .n_gammas = opt_n_gammas };
		memcpy(so.gammas, opt_gammas, sizeof(so.gammas));
		return bench_segment(&so) ? 1 : 0;
	}
	if (!strcmp(suite, "retrieval")) {
		if (!ropt.trace) {
			fprintf(stderr, "mnemo-bench: retrieval needs --trace FILE\n");
			return 2;
		}
		ropt.json = opt_json;
		ropt.gamma = opt_gammas[0];
		return bench_retrieval(&ropt) ? 1 : 0;
	}
	if (!all && strcmp(suite, "ipc") && strcmp(suite, "attend") && strcmp(suite, "tier") &&
	    strcmp(suite, "prefix")) {
		fprintf(stderr, "mnemo-bench: unknown suite %s\n", suite);
		usage(stderr);
		return 2;
	}
	if (all || !strcmp(suite, "ipc"))
		bench_ipc(argv[0]);
	if (all || !strcmp(suite, "attend"))
		bench_attend(argv[0]);
	if (all || !strcmp(suite, "tier"))
		bench_tier(argv[0]);
	if (all || !strcmp(suite, "prefix"))
		bench_prefix(argv[0]);
	stop_daemon();
	return 0;
}
