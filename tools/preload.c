/*
 * mnemo-preload FILE.safetensors --name NAME: stream a trace's K/V (the
 * format of DESIGN.md section 7) into mnemod through the shared-memory
 * path, seal it, and build the chosen indexes offline (INDEX), so every
 * request that attaches later finds it ready.
 *
 * Resumable: a context of that name that is still open (a preload that was
 * interrupted, or a daemon that stopped under it) is continued from its
 * durable length; a sealed one of the right length is only indexed.
 *
 * A trace with a tokens tensor ([N] I32 or U32) also gives the context its
 * token ids (TOKENS, under --salt), so that LOOKUP finds it by prefix; one
 * with q_prefill ([layers][q_heads][P][head_dim]) sends those queries
 * (QUERIES) before indexing, which ann needs. Both resume: what a run
 * before sent is not sent twice.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "mnemo.h"
#include "safetensors.h"

/* pread() all of [off, off + len) into @p dst: 0, or -1 when the file cannot
 * give it (the caller then reads through the mapping). */
static int read_full(int fd, uint8_t *dst, size_t len, uint64_t off)
{
	while (len) {
		ssize_t r = pread(fd, dst, len, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		dst += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mnemo-preload [options] FILE.safetensors\n"
		"\n"
		"Streams the trace's k and v tensors ([layers][kv_heads][tokens][head_dim], F32, F16\n"
		"or BF16) into mnemod as one context, seals it, and builds the indexes of the\n"
		"chosen policies. Run it again after an interruption: it resumes from the last\n"
		"durable block.\n"
		"\n"
		"Options:\n"
		"  -n, --name NAME      context name (default: the file name without .safetensors)\n"
		"  -s, --socket PATH    daemon socket (default: $MNEMO_SOCKET, else\n"
		"                       $XDG_RUNTIME_DIR/mnemo/mnemod.sock, else var/run/mnemod.sock)\n"
		"  -p, --policies LIST  comma-separated policies to index after sealing (quest,\n"
		"                       blocks, centroids, centroids2, faiss-ivf, faiss-hnsw, ann,\n"
		"                       episodic; default: none); ann needs the trace's q_prefill;\n"
		"                       episodic segments by the trace's surprise when it has one\n"
		"      --chunk N        tokens per APPEND (default 4096)\n"
		"      --q-heads N      query heads, when the trace has no q_decode or q_prefill\n"
		"                       (default: as many as KV heads)\n"
		"      --no-seal        leave the context open for more tokens\n"
		"      --salt N         tenant salt of the token ids' prefix hashes (decimal or\n"
		"                       0x hex; default 0); used when the trace has a tokens tensor\n"
		"      --no-tokens      do not send the trace's token ids\n"
		"      --no-queries     do not send the trace's prefill queries (q_prefill)\n"
		"      --no-surprise    do not send the trace's surprise (episodic then segments\n"
		"                       by key novelty)\n"
		"  -j, --json           print the summary as one JSON object\n"
		"  -q, --quiet          no progress on stderr\n"
		"  -h, --help           this help\n"
		"\n"
		"Exit status: 0 done, 1 the daemon refused or failed, 2 bad usage or a bad file.\n");
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char *const names[] = { "exact", "quest", "blocks", "centroids", "centroids2", "faiss-ivf",
				     "faiss-hnsw", "ann", "episodic" };

static int policy_by_name(const char *s, enum mnemo_policy *out)
{
	for (unsigned i = 1; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i])) {
			*out = (enum mnemo_policy)i;
			return 0;
		}
	return -EINVAL;
}

static void progress(uint64_t done, uint64_t total, uint64_t from, double t0, size_t tok_bytes, int final)
{
	double dt = now_s() - t0, rate = dt > 0 ? (double)(done - from) / dt : 0;
	double eta = rate > 0 ? (double)(total - done) / rate : 0;
	fprintf(stderr, "\r%" PRIu64 " / %" PRIu64 " tokens (%5.1f%%)  %8.0f tokens/s  %7.1f MiB/s  ETA %5.0f s ",
		done, total, total ? 100.0 * (double)done / (double)total : 100.0, rate,
		rate * (double)tok_bytes / 1048576.0, eta);
	if (final)
		fputc('\n', stderr);
}

int main(int argc, char **argv)
{
	const char *file = NULL, *name = NULL, *sock = NULL, *policies = NULL;
	unsigned long chunk = 4096, q_heads = 0;
	int seal = 1, json = 0, quiet = 0, send_tokens = 1, send_queries = 1, send_surprise = 1;
	unsigned long long salt = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char *end;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if ((!strcmp(a, "-n") || !strcmp(a, "--name")) && v) {
			name = v;
			i++;
		} else if ((!strcmp(a, "-s") || !strcmp(a, "--socket")) && v) {
			sock = v;
			i++;
		} else if ((!strcmp(a, "-p") || !strcmp(a, "--policies")) && v) {
			policies = v;
			i++;
		} else if (!strcmp(a, "--chunk") && v) {
			chunk = strtoul(v, &end, 10);
			if (*end || chunk == 0 || chunk > (1u << 20)) {
				fprintf(stderr, "mnemo-preload: --chunk wants 1..1048576 tokens\n");
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--q-heads") && v) {
			q_heads = strtoul(v, &end, 10);
			if (*end || q_heads == 0 || q_heads > 1024) {
				fprintf(stderr, "mnemo-preload: --q-heads wants 1..1024\n");
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--no-seal")) {
			seal = 0;
		} else if (!strcmp(a, "--no-tokens")) {
			send_tokens = 0;
		} else if (!strcmp(a, "--no-queries")) {
			send_queries = 0;
		} else if (!strcmp(a, "--no-surprise")) {
			send_surprise = 0;
		} else if (!strcmp(a, "--salt") && v) {
			errno = 0;
			salt = strtoull(v, &end, 0);
			if (*end || errno) {
				fprintf(stderr, "mnemo-preload: --salt wants a 64-bit number\n");
				return 2;
			}
			i++;
		} else if (!strcmp(a, "-j") || !strcmp(a, "--json")) {
			json = 1;
		} else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
			quiet = 1;
		} else if (a[0] == '-' || file) {
			fprintf(stderr, "mnemo-preload: unexpected argument %s (see --help)\n", a);
			return 2;
		} else {
			file = a;
		}
	}
	if (!file) {
		usage(stderr);
		return 2;
	}
	enum mnemo_policy pols[8];
	unsigned n_pols = 0;
	if (policies) {
		char *list = strdup(policies), *save = NULL;
		for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			if (n_pols == 8 || policy_by_name(t, &pols[n_pols])) {
				fprintf(stderr, "mnemo-preload: unknown policy %s (or more than 8)\n", t);
				free(list);
				return 2;
			}
			n_pols++;
		}
		free(list);
	}

	char err[512];
	struct st_file *f;
	if (st_open(file, &f, err, sizeof(err))) {
		fprintf(stderr, "mnemo-preload: %s\n", err);
		return 2;
	}
	const struct st_tensor *tk, *tv, *tq = NULL;
	if (st_find_rank(f, "k", 4, &tk, err, sizeof(err)) || st_find_rank(f, "v", 4, &tv, err, sizeof(err))) {
		fprintf(stderr, "mnemo-preload: %s\n", err);
		st_close(f);
		return 2;
	}
	if (st_find(f, "q_decode"))
		st_find_rank(f, "q_decode", 4, &tq, err, sizeof(err));
	else if (st_find(f, "q_prefill"))
		st_find_rank(f, "q_prefill", 4, &tq, err, sizeof(err));
	const uint64_t L = tk->shape[0], H = tk->shape[1], N = tk->shape[2], D = tk->shape[3];
	uint32_t dtype;
	switch (tk->dtype) {
	case ST_F32: dtype = MNEMO_F32; break;
	case ST_F16: dtype = MNEMO_F16; break;
	case ST_BF16: dtype = MNEMO_BF16; break;
	default:
		fprintf(stderr, "mnemo-preload: %s: k is %s; mnemod stores F32, F16 or BF16\n", file,
			st_dtype_name(tk->dtype));
		st_close(f);
		return 2;
	}
	if (memcmp(tk->shape, tv->shape, sizeof(tk->shape)) || tv->dtype != tk->dtype) {
		fprintf(stderr, "mnemo-preload: %s: k and v differ in shape or dtype\n", file);
		st_close(f);
		return 2;
	}
	const struct st_tensor *tt = NULL;
	if (send_tokens && st_find(f, "tokens")) {
		if (st_find_rank(f, "tokens", 1, &tt, err, sizeof(err)) || (tt->dtype != ST_I32 && tt->dtype != ST_U32) ||
		    tt->shape[0] != tk->shape[2]) {
			fprintf(stderr, "mnemo-preload: %s: tokens must be [%" PRIu64 "] I32 or U32 (--no-tokens skips it)\n",
				file, (uint64_t)tk->shape[2]);
			st_close(f);
			return 2;
		}
	}
	uint64_t QH = q_heads ? q_heads : tq ? tq->shape[1] : H;
	const struct st_tensor *tp = NULL;
	if (send_queries && st_find(f, "q_prefill")) {
		if (st_find_rank(f, "q_prefill", 4, &tp, err, sizeof(err)) ||
		    (tp->dtype != ST_F32 && tp->dtype != ST_F16 && tp->dtype != ST_BF16) || tp->shape[0] != tk->shape[0] ||
		    tp->shape[1] != QH || !tp->shape[2] || tp->shape[2] > UINT32_MAX || tp->shape[3] != tk->shape[3]) {
			fprintf(stderr, "mnemo-preload: %s: q_prefill must be [%" PRIu64 "][%" PRIu64 "][P][%" PRIu64
				"] F32, F16 or BF16 (--no-queries skips it)\n", file, (uint64_t)tk->shape[0], QH,
				(uint64_t)tk->shape[3]);
			st_close(f);
			return 2;
		}
	}
	const struct st_tensor *ts = NULL;
	if (send_surprise && st_find(f, "surprise")) {
		if (st_find_rank(f, "surprise", 1, &ts, err, sizeof(err)) || ts->dtype != ST_F32 ||
		    ts->shape[0] != tk->shape[2]) {
			fprintf(stderr, "mnemo-preload: %s: surprise must be [%" PRIu64 "] F32 (--no-surprise skips it)\n",
				file, (uint64_t)tk->shape[2]);
			st_close(f);
			return 2;
		}
	}
	double theta = 0;
	st_meta_f64(f, "rope_theta", &theta);
	if (!L || !H || !N || !D || L > 1024 || H > 1024 || D > 1024 || QH % H || QH / H > 64 || N > UINT32_MAX) {
		fprintf(stderr, "mnemo-preload: %s: geometry %" PRIu64 " layers x %" PRIu64 " KV heads x %" PRIu64
			" tokens x %" PRIu64 " dims with %" PRIu64 " query heads is not one mnemod takes\n",
			file, L, H, N, D, QH);
		st_close(f);
		return 2;
	}
	char base[256];
	if (!name) {
		char *dup = strdup(file);
		snprintf(base, sizeof(base), "%s", basename(dup));
		free(dup);
		char *dot = strstr(base, ".safetensors");
		if (dot && dot != base)
			*dot = 0;
		name = base;
	}

	mnemo_client *c;
	const char *path = sock ? sock : mnemo_default_socket();
	if (mnemo_connect(path, &c)) {
		fprintf(stderr, "mnemo-preload: cannot reach mnemod at %s: %s\n", path, strerror(errno));
		st_close(f);
		return 1;
	}
	int rc = 0, status = 1;
	const size_t es = tk->dtype == ST_F32 ? 4 : 2, row = D * es;
	const size_t tok_bytes = L * 2 * H * row;     /* one token of every layer, K and V */
	struct mnemo_geometry g = { (uint32_t)L, (uint32_t)H, (uint32_t)QH, (uint32_t)D, dtype, (float)theta };
	struct mnemo_context_info ci;
	uint64_t ctx = 0, start = 0;
	int resumed = 0;
	rc = mnemo_stat(c, 0, name, &ci);
	if (rc == 0) {
		if (ci.geom.n_layers != g.n_layers || ci.geom.n_kv_heads != g.n_kv_heads ||
		    ci.geom.n_q_heads != g.n_q_heads || ci.geom.head_dim != g.head_dim || ci.geom.dtype != g.dtype) {
			fprintf(stderr, "mnemo-preload: a context named %s exists with another geometry; drop it "
					"(mnemoctl drop %s) or choose --name\n", name, name);
			goto out;
		}
		if (ci.tokens > N || (ci.sealed && ci.tokens != N)) {
			fprintf(stderr, "mnemo-preload: context %s holds %" PRIu64 " tokens%s; the trace has %" PRIu64
					"\n", name, ci.tokens, ci.sealed ? " and is sealed" : "", N);
			goto out;
		}
		ctx = ci.id;
		start = ci.tokens;
		resumed = start > 0;
		if (resumed && !quiet && !json)
			fprintf(stderr, "mnemo-preload: %s holds %" PRIu64 " tokens; resuming\n", name, start);
	} else if (rc == -ENOENT) {
		if ((rc = mnemo_create(c, name, &g, &ctx))) {
			fprintf(stderr, "mnemo-preload: CREATE %s: %s\n", name, mnemo_last_error(c));
			goto out;
		}
	} else {
		fprintf(stderr, "mnemo-preload: STAT %s: %s\n", name, mnemo_last_error(c));
		goto out;
	}

	/* two halves of the arena: one fills while the daemon copies the other */
	if (chunk > N)
		chunk = N;
	const size_t slot = chunk * tok_bytes;
	void *arena = NULL;
	if (start < N && (rc = mnemo_shm_attach(c, 2 * slot, &arena))) {
		fprintf(stderr, "mnemo-preload: shared memory of %zu bytes: %s\n", 2 * slot, mnemo_last_error(c));
		goto out;
	}
	/* The source is read with pread() straight into the arena: through the
	 * mapping, a trace larger than the page cache is faulted in 4 KiB at a
	 * time from 256 places per chunk, which readahead cannot follow. */
	uint64_t off_k = 0, off_v = 0;
	int src_fd = -1;
	if (st_file_offset(f, tk, &off_k) == 0 && st_file_offset(f, tv, &off_v) == 0)
		src_fd = open(file, O_RDONLY | O_CLOEXEC);
	uint64_t pending[2] = { 0, 0 };
	int busy[2] = { 0, 0 };
	double t0 = now_s(), last = 0;
	uint64_t done = start;
	unsigned k = 0;
	for (uint64_t t = start; t < N; t += chunk, k ^= 1) {
		uint64_t n = N - t < chunk ? N - t : chunk;
		if (busy[k]) {
			if ((rc = mnemo_wait_append(c, pending[k], NULL))) {
				fprintf(stderr, "\nmnemo-preload: APPEND: %s\n", mnemo_last_error(c));
				goto out;
			}
			busy[k] = 0;
			done += chunk;
		}
		uint8_t *p = (uint8_t *)arena + k * slot;
		for (uint64_t l = 0; l < L; l++)
			for (int kv = 0; kv < 2; kv++) {
				const uint8_t *src = (const uint8_t *)(kv ? tv->data : tk->data);
				for (uint64_t h = 0; h < H; h++) {
					const uint64_t at = ((l * H + h) * N + t) * row;
					if (src_fd < 0 || read_full(src_fd, p, n * row, (kv ? off_v : off_k) + at))
						memcpy(p, src + at, n * row);
					p += n * row;
				}
			}
		/* streamed: the daemon writes whole blocks from the arena to its SSD
		 * tier without keeping them in RAM; the last one makes them all
		 * durable, so the time measured includes it */
		const uint32_t fl = MNEMO_APPEND_STREAM | (t + n >= N ? MNEMO_APPEND_SYNC : 0);
		if ((rc = mnemo_submit_append_ex(c, ctx, 0, (uint32_t)L, t, (uint32_t)n, (uint8_t *)arena + k * slot,
						 n * tok_bytes, fl, &pending[k]))) {
			fprintf(stderr, "\nmnemo-preload: APPEND: %s\n", mnemo_last_error(c));
			goto out;
		}
		/* the next chunk is read by the kernel while the daemon writes this
		 * one, and what was copied leaves the page cache */
		if (src_fd >= 0)
			for (uint64_t l = 0; l < L; l++)
				for (int kv = 0; kv < 2; kv++)
					for (uint64_t h = 0; h < H; h++) {
						const uint64_t run0 = (kv ? off_v : off_k) + (l * H + h) * N * row;
						(void)posix_fadvise(src_fd, (off_t)(run0 + t * row), (off_t)(n * row),
								    POSIX_FADV_DONTNEED);
						if (t + chunk < N) {
							const uint64_t m = N - t - chunk < chunk ? N - t - chunk : chunk;
							(void)posix_fadvise(src_fd, (off_t)(run0 + (t + chunk) * row),
									    (off_t)(m * row), POSIX_FADV_WILLNEED);
						}
					}
		busy[k] = 1;
		if (!quiet && !json && now_s() - last > 0.5) {
			last = now_s();
			progress(done, N, start, t0, tok_bytes, 0);
		}
	}
	for (unsigned i = 0; i < 2; i++, k ^= 1)
		if (busy[k]) {
			if ((rc = mnemo_wait_append(c, pending[k], NULL))) {
				fprintf(stderr, "\nmnemo-preload: APPEND: %s\n", mnemo_last_error(c));
				goto out;
			}
			busy[k] = 0;
		}
	if (src_fd >= 0)
		close(src_fd);
	double stream_s = now_s() - t0;
	if (!quiet && !json && start < N)
		progress(N, N, start, t0, tok_bytes, 1);
	uint64_t tokens = N;
	int sealed_already = mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.sealed;
	if (seal && !sealed_already && (rc = mnemo_seal(c, ctx, &tokens))) {
		fprintf(stderr, "mnemo-preload: SEAL: %s\n", mnemo_last_error(c));
		goto out;
	}
	/* token ids for prefix lookup, in pieces a frame holds */
	uint64_t id_chunks = 0;
	const char *ids_note = "";
	if (tt) {
		const uint32_t piece = 1u << 20;
		for (uint64_t t = 0; t < N; t += piece) {
			uint32_t n = (uint32_t)(N - t < piece ? N - t : piece);
			rc = mnemo_tokens(c, ctx, salt, t, (const uint32_t *)tt->data + t, n, &id_chunks);
			if (rc == -ERANGE && t == 0) {
				/* a run before gave them (ids must continue where they stopped) */
				ids_note = " (already given)";
				rc = 0;
				break;
			}
			if (rc) {
				fprintf(stderr, "mnemo-preload: TOKENS: %s\n", mnemo_last_error(c));
				goto out;
			}
		}
	}
	/* prefill queries, which the indexes drawn by queries (ann) are built from */
	uint64_t q_kept = 0;
	const char *q_note = "";
	if (tp) {
		const uint64_t P = tp->shape[2], per_layer = QH * P * D;
		const enum kv_dtype qdt = tp->dtype == ST_F32 ? KV_F32 : tp->dtype == ST_F16 ? KV_F16 : KV_BF16;
		float *qf = malloc(per_layer * sizeof(float));
		if (!qf) {
			fprintf(stderr, "mnemo-preload: out of memory for q_prefill\n");
			goto out;
		}
		for (uint64_t l = 0; l < L && !rc; l++) {
			for (uint64_t i = 0; i < per_layer; i++)
				qf[i] = kv_load(qdt, tp->data, l * per_layer + i);
			struct mnemo_queries_info qi;
			rc = mnemo_queries(c, ctx, (uint32_t)l, 0, (uint32_t)P, qf, &qi);
			if (rc == -ERANGE) {
				/* a run before sent them */
				q_note = " (already given)";
				rc = 0;
			} else if (!rc) {
				q_kept = qi.kept;
			}
		}
		free(qf);
		if (rc) {
			fprintf(stderr, "mnemo-preload: QUERIES: %s\n", mnemo_last_error(c));
			goto out;
		}
	}
	/* surprise, which episodic segments by */
	uint64_t events = 0;
	const char *s_note = "";
	if (ts) {
		struct mnemo_surprise_info si;
		float *sv = malloc(N * sizeof(float));
		if (!sv) {
			fprintf(stderr, "mnemo-preload: out of memory for surprise\n");
			goto out;
		}
		memcpy(sv, ts->data, N * sizeof(float));
		rc = mnemo_surprise(c, ctx, 0, (uint32_t)N, sv, &si);
		free(sv);
		if (rc == -ERANGE) {
			s_note = " (already given)";
			rc = 0;
		} else if (!rc) {
			events = si.events;
		}
		if (rc) {
			fprintf(stderr, "mnemo-preload: SURPRISE: %s\n", mnemo_last_error(c));
			goto out;
		}
	}
	double index_s[9] = { 0 };
	struct mnemo_index_info ii[9];
	for (unsigned i = 0; i < n_pols; i++) {
		if (!quiet && !json)
			fprintf(stderr, "mnemo-preload: indexing %s over %" PRIu64 " layers x %" PRIu64 " KV heads...\n",
				names[pols[i]], L, H);
		double ti = now_s();
		if ((rc = mnemo_index(c, ctx, pols[i], 0, 0, &ii[i]))) {
			fprintf(stderr, "mnemo-preload: INDEX %s: %s\n", names[pols[i]], mnemo_last_error(c));
			goto out;
		}
		index_s[i] = now_s() - ti;
	}
	const double gib = (double)(N - start) * (double)tok_bytes / (double)(1ull << 30);
	if (json) {
		printf("{\"suite\":\"preload\",\"name\":\"%s\",\"ctx\":%" PRIu64 ",\"tokens\":%" PRIu64
		       ",\"resumed_from\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"stream_s\":%.3f,\"stream_mib_s\":%.1f",
		       name, ctx, N, start, (uint64_t)(N - start) * tok_bytes, stream_s,
		       stream_s > 0 ? gib * 1024 / stream_s : 0);
		printf(",\"token_ids\":%s,\"prefix_chunks\":%" PRIu64, tt ? "true" : "false", id_chunks);
		printf(",\"prefill_positions\":%" PRIu64 ",\"prefill_kept\":%" PRIu64, tp ? (uint64_t)tp->shape[2] : 0,
		       q_kept);
		printf(",\"surprise\":%s,\"events\":%" PRIu64, ts ? "true" : "false", events);
		for (unsigned i = 0; i < n_pols; i++)
			printf(",\"index_%u\":{\"policy\":\"%s\",\"built\":%" PRIu64 ",\"loaded\":%" PRIu64 ",\"present\":%" PRIu64
			       ",\"seconds\":%.3f}", i, names[pols[i]], ii[i].built, ii[i].loaded, ii[i].present,
			       index_s[i]);
		printf("}\n");
	} else {
		printf("preloaded %s (context %" PRIu64 "): %" PRIu64 " tokens%s, %.2f GiB streamed in %.1f s (%.0f MiB/s)%s\n",
		       name, ctx, N, start == N ? " (already held)" : resumed ? " (resumed)" : "", gib, stream_s, stream_s > 0 ? gib * 1024 / stream_s : 0,
		       seal ? ", sealed" : "");
		if (tt)
			printf("  token ids: %" PRIu64 " prefix chunks findable by LOOKUP%s\n", id_chunks, ids_note);
		if (tp)
			printf("  prefill queries: %" PRIu64 " positions per layer sent%s, %" PRIu64 " kept\n",
			       (uint64_t)tp->shape[2], q_note, q_kept);
		if (ts)
			printf("  surprise: %" PRIu64 " tokens sent%s, %" PRIu64 " events by the boundary rule\n", N, s_note,
			       events);
		for (unsigned i = 0; i < n_pols; i++)
			printf("  index %s: %" PRIu64 " built, %" PRIu64 " loaded, %" PRIu64 " present in %.1f s\n",
			       names[pols[i]], ii[i].built, ii[i].loaded, ii[i].present, index_s[i]);
	}
	status = 0;
out:
	mnemo_close(c);
	st_close(f);
	return status;
}
