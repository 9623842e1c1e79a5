/*
 * mnemo-preload against a real mnemod, on a trace mnemo-kvgen writes:
 *   - killed (SIGKILL) in the middle of streaming, it resumes from the
 *     context's durable length when run again, and the stored K/V then
 *     equal the file's byte for byte (FETCH of random tokens of every
 *     layer);
 *   - its indexes are built once: a second run finds them in memory, and
 *     after a daemon restart they are loaded, not built; ann among them,
 *     which only the trace's prefill queries (sent once) make possible,
 *     and episodic, segmented by the trace's surprise (STAT says so,
 *     before and after the restart);
 *   - the trace's token ids come along: LOOKUP of them under the salt
 *     finds the context, under another salt nothing;
 *   - bad input is refused with exit status 2 and nothing created.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../check.h"
#include "harness.h"
#include "safetensors.h"

enum { L = 2, H = 2, QH = 8, D = 64, N = 24576 };
static uint64_t seed;

/* Run argv to its end (or kill it once @p kill_when returns true); returns its status. */
static int run(char *const *argv, struct daemon *d, uint64_t ctx_tokens_before_kill)
{
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	if (ctx_tokens_before_kill) {
		mnemo_client *c = NULL;
		for (int i = 0; i < 2000; i++) {
			struct mnemo_context_info ci;
			if (!c && mnemo_connect(d->sock, &c))
				c = NULL;
			if (c && mnemo_stat(c, 0, "pre", &ci) == 0 && ci.tokens >= ctx_tokens_before_kill) {
				kill(pid, SIGKILL);
				break;
			}
			usleep(2000);
		}
		if (c)
			mnemo_close(c);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: test_preload MNEMOD MNEMO-PRELOAD MNEMO-KVGEN\n");
		return 2;
	}
	seed = check_seed();
	struct daemon d;
	daemon_init(&d, argv[1]);
	char trace[300], tok[32], sock[300];
	snprintf(trace, sizeof(trace), "%s/t.safetensors", d.dir);
	snprintf(tok, sizeof(tok), "%d", N);
	snprintf(sock, sizeof(sock), "%s", d.sock);
	char *gen[] = { argv[3], "-o", trace, "--tokens", tok, "--layers", "2", "--kv-heads", "2", "--q-heads", "8",
			"--head-dim", "64", "--dtype", "bf16", "--decode-queries", "4", "--prefill-queries", "64", NULL };
	CHECK(run(gen, &d, 0) == 0, "mnemo-kvgen");
	CHECK(daemon_start(&d, NULL) == 0, "start");

	/* bad input: exit 2, nothing created */
	char *bad1[] = { argv[2], "--socket", sock, "/nonexistent.safetensors", NULL };
	char *bad2[] = { argv[2], "--socket", sock, "--policies", "nope", trace, NULL };
	char *bad3[] = { argv[2], "--socket", sock, "--chunk", "0", trace, NULL };
	CHECK(run(bad1, &d, 0) == 2 && run(bad2, &d, 0) == 2 && run(bad3, &d, 0) == 2, "bad input not refused with 2");

	/* killed mid-stream, then resumed */
	char *pre[] = { argv[2], "--socket", sock, "--name", "pre", "--chunk", "512", "--policies", "centroids2,quest,ann,episodic",
			"--salt", "0x77", "--quiet", trace, NULL };
	int st = run(pre, &d, 4096);
	CHECK(st == 128 + SIGKILL, "preload was not killed mid-stream (status %d)", st);
	mnemo_client *c;
	CHECK(mnemo_connect(d.sock, &c) == 0, "connect");
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, 0, "pre", &ci) == 0 && !ci.sealed && ci.tokens > 0 && ci.tokens < N,
	      "after the kill: %llu tokens, sealed %u", (unsigned long long)ci.tokens, ci.sealed);
	CHECK(run(pre, &d, 0) == 0, "resumed preload");
	CHECK(mnemo_stat(c, 0, "pre", &ci) == 0 && ci.sealed && ci.tokens == N && ci.geom.n_q_heads == QH,
	      "after resuming: %llu tokens, sealed %u", (unsigned long long)ci.tokens, ci.sealed);

	/* every byte as in the file */
	char err[256];
	struct st_file *f;
	const struct st_tensor *tk, *tv;
	int ok = st_open(trace, &f, err, sizeof(err)) == 0 && st_find_rank(f, "k", 4, &tk, err, sizeof(err)) == 0 &&
		 st_find_rank(f, "v", 4, &tv, err, sizeof(err)) == 0;
	CHECK(ok, "reopen trace: %s", err);
	if (ok) {
		enum { IDS = 300 };
		uint64_t ids[IDS];
		static uint16_t got[2 * H * IDS * D];
		int wrong = 0;
		for (int l = 0; l < L; l++) {
			for (int i = 0; i < IDS; i++)
				ids[i] = i < 8 ? (uint64_t)i * 3071 % N : check_rand(&seed) % N;
			CHECK(mnemo_fetch(c, ci.id, (uint32_t)l, ids, IDS, got, sizeof(got)) == 0, "fetch: %s",
			      mnemo_last_error(c));
			for (int kv = 0; kv < 2; kv++)
				for (int h = 0; h < H; h++)
					for (int i = 0; i < IDS; i++) {
						const uint16_t *src = (const uint16_t *)(kv ? tv->data : tk->data) +
								      (((size_t)l * H + h) * N + ids[i]) * D;
						wrong += memcmp(&got[(((size_t)kv * H + h) * IDS + i) * D], src, D * 2) != 0;
					}
		}
		CHECK(!wrong, "%d rows differ from the file", wrong);
		const struct st_tensor *tt;
		struct mnemo_lookup_info li;
		CHECK(st_find_rank(f, "tokens", 1, &tt, err, sizeof(err)) == 0 &&
		      mnemo_lookup(c, 0x77, (const uint32_t *)tt->data, N, &li) == 0 && li.ctx == ci.id && li.tokens == N,
		      "lookup of the trace's tokens: ctx %llu, %llu tokens", (unsigned long long)li.ctx,
		      (unsigned long long)li.tokens);
		CHECK(mnemo_lookup(c, 0x78, (const uint32_t *)tt->data, N, &li) == 0 && li.ctx == 0, "another salt found it");
		st_close(f);
	}

	/* the trace's surprise went with it: episodic segmented by it */
	CHECK(mnemo_stat(c, 0, "pre", &ci) == 0 && ci.surprise_seen == N && ci.events > N / 128 &&
	      ci.events < N / 8 && ci.segmentation == MNEMO_SEG_SURPRISE,
	      "surprise: %llu seen, %llu events, segmentation %u", (unsigned long long)ci.surprise_seen,
	      (unsigned long long)ci.events, ci.segmentation);
	/* indexes: in memory on a second run, loaded after a restart */
	struct mnemo_daemon_info di;
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.index_builds == 4 * L * H, "first preload built %llu indexes",
	      (unsigned long long)di.index_builds);
	CHECK(run(pre, &d, 0) == 0 && mnemo_stat_daemon(c, &di) == 0 && di.index_builds == 4 * L * H,
	      "a second preload rebuilt (%llu builds)", (unsigned long long)di.index_builds);
	mnemo_close(c);
	CHECK(daemon_stop(&d, SIGTERM) == 0, "stop");
	CHECK(daemon_start(&d, NULL) == 0, "restart");
	CHECK(run(pre, &d, 0) == 0, "preload after restart");
	CHECK(mnemo_connect(d.sock, &c) == 0, "connect");
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.index_builds == 0 && di.index_loads == 4 * L * H,
	      "after a restart: %llu built, %llu loaded", (unsigned long long)di.index_builds,
	      (unsigned long long)di.index_loads);
	CHECK(mnemo_stat(c, 0, "pre", &ci) == 0 && ci.surprise_seen == N && ci.segmentation == MNEMO_SEG_SURPRISE,
	      "after a restart: %llu surprise, segmentation %u", (unsigned long long)ci.surprise_seen, ci.segmentation);
	mnemo_close(c);
	daemon_cleanup(&d);
	return check_exit();
}
