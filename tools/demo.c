/*
 * mnemo-demo: the main job in one program. Creates a context of a million
 * tokens (synthetic K/V, a small geometry), streams it into mnemod through
 * the shared-memory arena with a live progress line, seals it, and asks for
 * the far-context attention of a decode step. A "needle" token is planted so
 * that the answer is recognisable, and the result is checked against the
 * same attention computed here in double precision, then merged with a
 * local "recent window" partial the way a serving engine would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "mnemo.h"

static uint64_t opt_tokens = 1u << 20;
static uint32_t opt_kv = 2, opt_group = 4, opt_dim = 64, opt_chunk = 65536;
static uint64_t needle = 777777;
static const char *opt_socket;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Deterministic synthetic element: the client can recompute any of it. */
static float synth(uint64_t kind, uint64_t h, uint64_t t, uint64_t j)
{
	uint64_t z = ((kind * 0x9e3779b97f4a7c15ull) ^ (h << 48) ^ (t << 12) ^ j) + 0x632be59bd9b4e019ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (float)((double)(z >> 40) / 8388608.0 - 1.0);
}

static float key_at(uint32_t h, uint64_t t, uint32_t j, const float *q0)
{
	/* the needle's key points along KV head 0's first query, so it dominates */
	if (t == needle && h == 0)
		return 8.0f * q0[j];
	return 0.5f * synth(1, h, t, j);
}

static float val_at(uint32_t h, uint64_t t, uint32_t j)
{
	if (t == needle)
		return j == 0 ? 1.0f : 0.0f;   /* a recognisable value */
	return synth(2, h, t, j);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mnemo-demo [--socket PATH] [--tokens N] [--kv-heads N] [--group N] [--head-dim N]\n"
		"\n"
		"Streams a synthetic context into a running mnemod through shared memory,\n"
		"then runs one decode step's far-context attention and checks it.\n"
		"  --socket PATH   daemon socket (default: as mnemoctl)\n"
		"  --tokens N      context length (default 1048576)\n"
		"  --kv-heads N    KV heads (default 2)\n"
		"  --group N       query heads per KV head (default 4)\n"
		"  --head-dim N    head dimension (default 64)\n");
}

static int parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "mnemo-demo: %s needs a value\n", a);
			return -1;
		}
		const char *v = argv[++i];
		char *end;
		unsigned long long n = strtoull(v, &end, 10);
		bool num_ok = *v && !*end;
		if (!strcmp(a, "--socket"))
			opt_socket = v;
		else if (!strcmp(a, "--tokens") && num_ok && n >= 1 && n < (1ull << 32))
			opt_tokens = n;
		else if (!strcmp(a, "--kv-heads") && num_ok && n >= 1 && n <= 64)
			opt_kv = (uint32_t)n;
		else if (!strcmp(a, "--group") && num_ok && n >= 1 && n <= 64)
			opt_group = (uint32_t)n;
		else if (!strcmp(a, "--head-dim") && num_ok && n >= 1 && n <= 1024)
			opt_dim = (uint32_t)n;
		else {
			fprintf(stderr, "mnemo-demo: bad option %s %s\n", a, v);
			return -1;
		}
	}
	if (needle >= opt_tokens)
		needle = opt_tokens / 2;
	return 0;
}

int main(int argc, char **argv)
{
	if (parse_args(argc, argv))
		return 2;
	const uint32_t H = opt_kv, G = opt_group, D = opt_dim, HQ = H * G;
	const uint64_t N = opt_tokens;
	mnemo_client *c;
	const char *path = opt_socket ? opt_socket : mnemo_default_socket();
	int rc = mnemo_connect(path, &c);
	if (rc) {
		fprintf(stderr, "mnemo-demo: cannot connect to %s: %s\n", path, strerror(-rc));
		return 1;
	}
	struct mnemo_server_info si;
	if ((rc = mnemo_hello(c, &si))) {
		fprintf(stderr, "mnemo-demo: hello: %s\n", mnemo_last_error(c));
		return 1;
	}
	printf("mnemod %s at %s: %u workers, %u-token blocks\n", si.version, path, si.workers, si.block_tokens);

	float *q = malloc(sizeof(float) * HQ * D);
	for (uint32_t i = 0; i < HQ * D; i++)
		q[i] = synth(3, 0, i / D, i % D);

	char name[64];
	snprintf(name, sizeof(name), "demo-%d", (int)getpid());
	struct mnemo_geometry g = { .n_layers = 1, .n_kv_heads = H, .n_q_heads = HQ, .head_dim = D,
				    .dtype = MNEMO_BF16, .rope_theta = 10000.0f };
	uint64_t ctx;
	if ((rc = mnemo_create(c, name, &g, &ctx))) {
		fprintf(stderr, "mnemo-demo: create: %s\n", mnemo_last_error(c));
		return 1;
	}
	const double gib = (double)N * H * D * 2 * 2 / (1 << 30);
	printf("context \"%s\": %" PRIu64 " tokens, %u KV heads x %u query heads, d=%u, bf16 (%.2f GiB of K/V)\n",
	       name, N, H, HQ, D, gib);

	/* Two halves of the arena: one is filled while the other is in flight. */
	const size_t chunk_bytes = (size_t)2 * H * opt_chunk * D * 2;
	void *base;
	if ((rc = mnemo_shm_attach(c, 2 * chunk_bytes, &base))) {
		fprintf(stderr, "mnemo-demo: shm: %s\n", mnemo_last_error(c));
		return 1;
	}
	uint16_t *half[2] = { base, (uint16_t *)((uint8_t *)base + chunk_bytes) };
	uint64_t inflight[2] = { 0, 0 };
	double t0 = now_s(), last = 0, wait_s = 0;
	uint64_t done = 0;
	int slot = 0;
	for (uint64_t t = 0; t < N; t += opt_chunk, slot ^= 1) {
		uint32_t n = (uint32_t)(N - t < opt_chunk ? N - t : opt_chunk);
		if (inflight[slot]) {
			double w = now_s();
			if ((rc = mnemo_wait_append(c, inflight[slot], &done))) {
				fprintf(stderr, "\nmnemo-demo: append: %s\n", mnemo_last_error(c));
				return 1;
			}
			wait_s += now_s() - w;
			inflight[slot] = 0;
		}
		uint16_t *p = half[slot];
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < H; h++)
				for (uint32_t i = 0; i < n; i++)
					for (uint32_t j = 0; j < D; j++)
						*p++ = kv_f32_to_bf16(kv ? val_at(h, t + i, j) : key_at(h, t + i, j, q));
		if ((rc = mnemo_submit_append(c, ctx, 0, 1, t, n, half[slot], (size_t)2 * H * n * D * 2,
					      &inflight[slot]))) {
			fprintf(stderr, "\nmnemo-demo: append: %s\n", mnemo_last_error(c));
			return 1;
		}
		double now = now_s();
		if (now - last > 0.2 || t + n == N) {
			double el = now - t0, rate = (t + n) / el;
			printf("\rappending %10" PRIu64 " / %" PRIu64 " tokens  %5.1f%%  %8.0f tok/s  ETA %5.1f s ",
			       t + n, N, 100.0 * (t + n) / N, rate, (N - t - n) / rate);
			fflush(stdout);
			last = now;
		}
	}
	for (int s = 0; s < 2; s++)
		if (inflight[s] && (rc = mnemo_wait_append(c, inflight[s], &done))) {
			fprintf(stderr, "\nmnemo-demo: append: %s\n", mnemo_last_error(c));
			return 1;
		}
	double append_s = now_s() - t0;
	printf("\nappended %" PRIu64 " tokens in %.2f s (%.2f GB/s of K/V into the daemon, "
	       "%.2f s of it waiting on replies)\n", done, append_s, gib * 1.073741824 / append_s, wait_s);
	uint64_t sealed;
	if ((rc = mnemo_seal(c, ctx, &sealed))) {
		fprintf(stderr, "mnemo-demo: seal: %s\n", mnemo_last_error(c));
		return 1;
	}

	/* The decode step: far context = everything but the last 64 tokens, which
	 * the "engine" (this program) attends to itself. */
	const uint64_t window = N > 128 ? 64 : 0, far_end = N - window;
	float *o = malloc(sizeof(float) * HQ * D), *lse = malloc(sizeof(float) * HQ);
	struct mnemo_attend_info info;
	double a0 = now_s();
	rc = mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, far_end, q, o, lse, &info);
	double attend_ms = (now_s() - a0) * 1e3;
	if (rc) {
		fprintf(stderr, "mnemo-demo: attend: %s\n", mnemo_last_error(c));
		return 1;
	}
	printf("ATTEND over %" PRIu64 " far tokens x %u KV heads: %.1f ms round trip (%.1f ms computing in "
	       "mnemod, %.2f GB/s of K/V)\n", far_end, H, attend_ms, info.compute_ns / 1e6,
	       (double)far_end * H * D * 4 / (info.compute_ns ? info.compute_ns : 1));

	/* Check every query head against double precision over the same bf16 values. */
	printf("checking against a double-precision reference computed here...\n");
	double worst = 0, worst_lse = 0;
	double *ro = malloc(sizeof(double) * G * D), *mx = malloc(sizeof(double) * G),
	       *sum = malloc(sizeof(double) * G);
	float *krow = malloc(sizeof(float) * D), *vrow = malloc(sizeof(float) * D);
	for (uint32_t h = 0; h < H; h++) {
		for (uint32_t g2 = 0; g2 < G; g2++) {
			mx[g2] = -INFINITY;
			sum[g2] = 0;
		}
		memset(ro, 0, sizeof(double) * G * D);
		/* two passes (max, then sum) stay exact without storing a million scores;
		 * each key row is made once per pass and serves the whole group */
		for (int pass = 0; pass < 2; pass++)
			for (uint64_t t = 0; t < far_end; t++) {
				for (uint32_t j = 0; j < D; j++)
					krow[j] = kv_bf16_to_f32(kv_f32_to_bf16(key_at(h, t, j, q)));
				if (pass)
					for (uint32_t j = 0; j < D; j++)
						vrow[j] = kv_bf16_to_f32(kv_f32_to_bf16(val_at(h, t, j)));
				for (uint32_t g2 = 0; g2 < G; g2++) {
					const float *qh = q + (size_t)(h * G + g2) * D;
					double s = 0;
					for (uint32_t j = 0; j < D; j++)
						s += (double)qh[j] * krow[j];
					s /= sqrt((double)D);
					if (pass == 0) {
						mx[g2] = s > mx[g2] ? s : mx[g2];
						continue;
					}
					double p = exp(s - mx[g2]);
					sum[g2] += p;
					for (uint32_t j = 0; j < D; j++)
						ro[g2 * D + j] += p * vrow[j];
				}
			}
		for (uint32_t g2 = 0; g2 < G; g2++) {
			uint32_t hq = h * G + g2;
			double num = 0, den = 0;
			for (uint32_t j = 0; j < D; j++) {
				double r = ro[g2 * D + j] / sum[g2];
				num += pow(o[hq * D + j] - r, 2);
				den += r * r;
			}
			worst = fmax(worst, sqrt(num / den));
			worst_lse = fmax(worst_lse, fabs(lse[hq] - (mx[g2] + log(sum[g2]))));
		}
	}
	free(mx);
	free(sum);
	free(krow);
	free(vrow);
	printf("  worst relative error of o over %u query heads: %.2e; of lse: %.2e  %s\n", HQ, worst,
	       worst_lse, worst < 2e-3 && worst_lse < 1e-3 ? "OK" : "MISMATCH");
	printf("  needle at token %" PRIu64 ": head 0 puts weight %.4f on it (o[0] of query head 0)\n",
	       needle, o[0]);

	/* Merge with the window partial, as the serving engine does. */
	if (window) {
		float *wo = calloc(D, sizeof(float));
		float m = -INFINITY, l = 0;
		float *acc = calloc(D, sizeof(float));
		for (uint64_t t = far_end; t < N; t++) {
			float s = 0;
			for (uint32_t j = 0; j < D; j++)
				s += q[j] * kv_bf16_to_f32(kv_f32_to_bf16(key_at(0, t, j, q)));
			s /= sqrtf((float)D);
			float nm = s > m ? s : m, sc = expf(m - nm), p = expf(s - nm);
			l = l * sc + p;
			for (uint32_t j = 0; j < D; j++)
				acc[j] = acc[j] * sc + p * kv_bf16_to_f32(kv_f32_to_bf16(val_at(0, t, j)));
			m = nm;
		}
		for (uint32_t j = 0; j < D; j++)
			wo[j] = acc[j] / l;
		float wl = m + logf(l);
		mnemo_merge(D, wo, &wl, o, lse[0]);
		printf("  merged with the local %" PRIu64 "-token window: query head 0 lse %.3f (far %.3f)\n",
		       window, wl, lse[0]);
		free(wo);
		free(acc);
	}
	struct mnemo_daemon_info di;
	if (!mnemo_stat_daemon(c, &di))
		printf("daemon: %u contexts, host memory %.1f MiB used of %.1f GiB, kernels %s\n", di.contexts,
		       di.host_used / 1048576.0, di.host_budget / 1073741824.0, di.kernels);
	mnemo_drop(c, ctx, NULL);
	mnemo_close(c);
	free(q);
	free(o);
	free(lse);
	free(ro);
	return worst < 2e-3 && worst_lse < 1e-3 ? 0 : 1;
}
