/*
 * The SSD tier and the catalog through a real mnemod:
 * 1. a context eight times the host budget (1 GiB of K/V, --host-mem 128M)
 *    is appended, attended over in full and compared with a reference
 *    computed here; mnemod restarts and serves the same bytes (FETCH) and
 *    the same attention, bit for bit;
 * 2. kill -9 in the middle of an APPEND stream: after a restart every
 *    acknowledged block reads back identical and the context says it was
 *    recovered; nothing past the durable blocks is served;
 * 3. a byte flipped in a block file while mnemod is stopped: that block's
 *    reads fail with a data-integrity error, the others serve;
 * 4. a full file system (a loop-mounted 48 MiB ext4, root only): APPEND
 *    fails with ENOSPC and a clear message; what was stored still serves.
 * Usage: test_persist PATH-TO-MNEMOD
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>

#include "../check.h"
#include "harness.h"
#include "kernels.h"

enum { H = 4, D = 128, B = 64 };
static uint64_t seed;

static uint16_t key_bf16(uint32_t h, uint64_t t, uint32_t j) { return kv_f32_to_bf16(synth(1, h, t, j)); }
static uint16_t val_bf16(uint32_t h, uint64_t t, uint32_t j) { return kv_f32_to_bf16(synth(2, h, t, j)); }

/* K/V of tokens [t0, t0+n) for one layer, as APPEND wants them. */
static void fill(uint16_t *p, uint64_t t0, uint32_t n)
{
	for (uint32_t kv = 0; kv < 2; kv++)
		for (uint32_t h = 0; h < H; h++)
			for (uint32_t i = 0; i < n; i++)
				for (uint32_t j = 0; j < D; j++)
					*p++ = kv ? val_bf16(h, t0 + i, j) : key_bf16(h, t0 + i, j);
}

static uint64_t create(mnemo_client *c, const char *name)
{
	struct mnemo_geometry g = { 1, H, H, D, MNEMO_BF16, 10000.f };
	uint64_t id = 0;
	CHECK(mnemo_create(c, name, &g, &id) == 0, "create %s: %s", name, mnemo_last_error(c));
	return id;
}

/* FETCH @p n ids below @p limit and compare with the synthetic values. */
static int check_fetch(mnemo_client *c, uint64_t ctx, uint64_t limit, uint32_t n, uint64_t *ids_out)
{
	uint64_t *ids = ids_out ? ids_out : malloc(n * 8);
	for (uint32_t i = 0; i < n; i++)
		ids[i] = check_rand(&seed) % limit;
	uint16_t *got = malloc((size_t)2 * H * n * D * 2);
	int rc = mnemo_fetch(c, ctx, 0, ids, n, got, (size_t)2 * H * n * D * 2);
	int wrong = 0;
	if (!rc)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < H; h++)
				for (uint32_t i = 0; i < n; i++)
					for (uint32_t j = 0; j < D; j++) {
						uint16_t want = kv ? val_bf16(h, ids[i], j) : key_bf16(h, ids[i], j);
						wrong += got[(((size_t)kv * H + h) * n + i) * D + j] != want;
					}
	free(got);
	if (!ids_out)
		free(ids);
	return rc ? rc : wrong;
}

static void big_context(struct daemon *d)
{
	const uint64_t N = 1u << 19;              /* 512K tokens x 2 KiB = 1 GiB */
	CHECK(daemon_start(d, "--host-mem", "128M", NULL) == 0, "start");
	mnemo_client *c;
	if (mnemo_connect(d->sock, &c)) {
		CHECK(0, "connect");
		return;
	}
	uint64_t ctx = create(c, "big");
	const uint32_t chunk = 8192;
	void *arena;
	CHECK(mnemo_shm_attach(c, (size_t)2 * H * chunk * D * 2, &arena) == 0, "attach");
	for (uint64_t t = 0; t < N; t += chunk) {
		fill(arena, t, chunk);
		int rc = mnemo_append(c, ctx, 0, 1, t, chunk, arena, (size_t)2 * H * chunk * D * 2, NULL);
		if (rc) {
			CHECK(0, "append at %llu: %s", (unsigned long long)t, mnemo_last_error(c));
			break;
		}
	}
	uint64_t tokens;
	CHECK(mnemo_seal(c, ctx, &tokens) == 0 && tokens == N, "seal");
	struct mnemo_daemon_info di;
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.host_used <= (128u << 20) && di.evictions > 0,
	      "over budget: used %llu, evictions %llu", (unsigned long long)di.host_used,
	      (unsigned long long)di.evictions);

	float q[H * D], o1[H * D], l1[H], o2[H * D], l2[H];
	for (int i = 0; i < H * D; i++)
		q[i] = 2.0f * check_uniform(&seed);
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o1, l1, NULL) == 0,
	      "attend over 1 GiB: %s", mnemo_last_error(c));
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.misses > 0 && di.ssd_reads > 0, "attend read from SSD");
	/* reference, one head at a time: two passes, so no scores are stored */
	double worst = 0;
	for (uint32_t h = 0; h < H; h++) {
		double mx = -INFINITY, sum = 0, ro[D] = { 0 };
		float krow[D];
		for (int pass = 0; pass < 2; pass++)
			for (uint64_t t = 0; t < N; t++) {
				double s = 0;
				for (uint32_t j = 0; j < D; j++) {
					krow[j] = kv_bf16_to_f32(key_bf16(h, t, j));
					s += (double)q[h * D + j] * krow[j];
				}
				s /= sqrt((double)D);
				if (!pass) {
					mx = fmax(mx, s);
					continue;
				}
				double p = exp(s - mx);
				sum += p;
				for (uint32_t j = 0; j < D; j++)
					ro[j] += p * kv_bf16_to_f32(val_bf16(h, t, j));
			}
		double num = 0, den = 0;
		for (uint32_t j = 0; j < D; j++) {
			ro[j] /= sum;
			num += pow(o1[h * D + j] - ro[j], 2);
			den += ro[j] * ro[j];
		}
		worst = fmax(worst, sqrt(num / den));
		CHECK(fabs(l1[h] - (mx + log(sum))) < 1e-3, "lse head %u", h);
	}
	CHECK(worst < 2e-3, "attention over 1 GiB: relative error %g", worst);
	uint64_t ids[4000];
	CHECK(check_fetch(c, ctx, N, 4000, ids) == 0, "fetch before restart");
	mnemo_close(c);
	CHECK(daemon_stop(d, SIGTERM) == 0, "clean stop");

	CHECK(daemon_start(d, "--host-mem", "128M", NULL) == 0, "restart");
	if (mnemo_connect(d->sock, &c)) {
		CHECK(0, "reconnect");
		return;
	}
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, 0, "big", &ci) == 0 && ci.sealed && ci.tokens == N && ci.id == ctx,
	      "big after restart: %s", mnemo_last_error(c));
	/* the same ids as before, and others */
	uint16_t *got = malloc((size_t)2 * H * 4000 * D * 2);
	CHECK(mnemo_fetch(c, ctx, 0, ids, 4000, got, (size_t)2 * H * 4000 * D * 2) == 0, "fetch after restart");
	int wrong = 0;
	for (uint32_t kv = 0; kv < 2; kv++)
		for (uint32_t h = 0; h < H; h++)
			for (uint32_t i = 0; i < 4000; i++)
				for (uint32_t j = 0; j < D; j++)
					wrong += got[(((size_t)kv * H + h) * 4000 + i) * D + j] !=
						 (kv ? val_bf16(h, ids[i], j) : key_bf16(h, ids[i], j));
	CHECK(wrong == 0, "%d values differ after restart", wrong);
	free(got);
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o2, l2, NULL) == 0, "attend after restart");
	CHECK(!memcmp(o1, o2, sizeof(o1)) && !memcmp(l1, l2, sizeof(l1)), "attention differs after restart");
	CHECK(mnemo_drop(c, ctx, NULL) == 0, "drop big");
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.ssd_used == 0, "drop leaves %llu SSD bytes",
	      (unsigned long long)di.ssd_used);
	mnemo_close(c);
	CHECK(daemon_stop(d, SIGTERM) == 0, "clean stop 2");
}

static void crash_and_corrupt(struct daemon *d)
{
	CHECK(daemon_start(d, NULL) == 0, "start");
	mnemo_client *c;
	if (mnemo_connect(d->sock, &c)) {
		CHECK(0, "connect");
		return;
	}
	uint64_t ctx = create(c, "crash");
	const uint32_t chunk = 1000;           /* not a multiple of the block: partial blocks pend */
	uint16_t *buf = malloc((size_t)2 * H * chunk * D * 2);
	uint64_t acked = 0;
	int k;
	for (k = 0; k < 60; k++) {
		fill(buf, acked, chunk);
		uint64_t id;
		CHECK(mnemo_submit_append(c, ctx, 0, 1, acked, chunk, buf, (size_t)2 * H * chunk * D * 2, &id) == 0,
		      "submit");
		if (k == 40) {
			/* the daemon dies with this append on its way */
			daemon_stop(d, SIGKILL);
			CHECK(mnemo_wait_append(c, id, NULL) != 0, "an append answered by a killed daemon");
			break;
		}
		CHECK(mnemo_wait_append(c, id, NULL) == 0, "append %d: %s", k, mnemo_last_error(c));
		acked += chunk;
	}
	free(buf);
	mnemo_close(c);

	CHECK(daemon_start(d, NULL) == 0, "restart after kill -9");
	if (mnemo_connect(d->sock, &c)) {
		CHECK(0, "reconnect");
		return;
	}
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.recovered && !ci.sealed, "recovered: %s",
	      mnemo_last_error(c));
	/* every acknowledged full block is there; nothing past what was sent */
	CHECK(ci.tokens >= acked / B * B && ci.tokens <= acked + chunk && ci.tokens % B == 0,
	      "recovered %llu tokens, acknowledged %llu", (unsigned long long)ci.tokens,
	      (unsigned long long)acked);
	uint64_t all = ci.tokens;
	uint64_t *ids = malloc(all * 8);
	for (uint64_t i = 0; i < all; i++)
		ids[i] = i;
	int wrong = 0;
	for (uint64_t at = 0; at < all; at += 4096) {
		uint32_t n = (uint32_t)(all - at < 4096 ? all - at : 4096);
		uint16_t *got = malloc((size_t)2 * H * n * D * 2);
		CHECK(mnemo_fetch(c, ctx, 0, ids + at, n, got, (size_t)2 * H * n * D * 2) == 0, "fetch");
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < H; h++)
				for (uint32_t i = 0; i < n; i++)
					for (uint32_t j = 0; j < D; j++)
						wrong += got[(((size_t)kv * H + h) * n + i) * D + j] !=
							 (kv ? val_bf16(h, at + i, j) : key_bf16(h, at + i, j));
		free(got);
	}
	CHECK(wrong == 0, "%d recovered values differ", wrong);
	uint64_t past = all;
	uint16_t one[2 * H * D];
	CHECK(mnemo_fetch(c, ctx, 0, &past, 1, one, sizeof(one)) == -ERANGE, "a token past the durable length served");
	free(ids);
	mnemo_close(c);
	CHECK(daemon_stop(d, SIGTERM) == 0, "stop");

	/* flip a byte inside block 3 of head 0: slots are taken head by head within an APPEND, and
	 * the first APPEND (1000 tokens) filled blocks 0..14 of head 0 into slots 0..14 */
	char path[400];
	snprintf(path, sizeof(path), "%s/data/ssd/ctx-%016llx.blk", d->dir, (unsigned long long)ctx);
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0, "block file %s", path);
	struct stat st;
	fstat(fd, &st);
	const off_t slot = (off_t)2 * B * D * 2;   /* a block that fills its slot: no trailer */
	off_t at = slot * 3 + 777;
	uint8_t byte;
	CHECK(pread(fd, &byte, 1, at) == 1, "read");
	byte ^= 0x01;
	CHECK(pwrite(fd, &byte, 1, at) == 1, "flip");
	close(fd);
	CHECK(daemon_start(d, NULL) == 0, "start after corruption");
	if (mnemo_connect(d->sock, &c)) {
		CHECK(0, "connect");
		return;
	}
	uint64_t in_bad = 3 * B + 5, good = 9 * B + 1;
	uint16_t kvb[2 * H * D];
	int rc = mnemo_fetch(c, ctx, 0, &in_bad, 1, kvb, sizeof(kvb));
	CHECK(rc == -EBADMSG, "corrupt block served (%d)", rc);
	CHECK(strstr(mnemo_last_error(c), "data-integrity") && strstr(mnemo_last_error(c), "context"),
	      "message: %s", mnemo_last_error(c));
	CHECK(mnemo_fetch(c, ctx, 0, &good, 1, kvb, sizeof(kvb)) == 0, "other blocks serve");
	float q[H * D] = { 0 }, o[H * D], l[H];
	rc = mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o, l, NULL);
	CHECK(rc == -EBADMSG && strstr(mnemo_last_error(c), "block 3"), "attend over the bad block: %d %s", rc,
	      mnemo_last_error(c));
	CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 8 * B, 20 * B, q, o, l, NULL) == 0,
	      "attend around it: %s", mnemo_last_error(c));
	struct mnemo_daemon_info di;
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.bad_blocks == 1, "bad_blocks %llu", (unsigned long long)di.bad_blocks);
	mnemo_close(c);
	CHECK(daemon_stop(d, SIGTERM) == 0, "stop");
}

static void full_disk(const char *bin)
{
	if (geteuid() != 0) {
		printf("SKIP full-disk check: mounting a small file system needs root\n");
		return;
	}
	struct daemon d;
	daemon_init(&d, bin);
	char img[300], mnt[300], cmd[2048];
	snprintf(img, sizeof(img), "%s/small.img", d.dir);
	snprintf(mnt, sizeof(mnt), "%s/small", d.dir);
	mkdir(mnt, 0700);
	snprintf(cmd, sizeof(cmd), "truncate -s 48M '%s' && mkfs.ext4 -q -F '%s' && mount -o loop '%s' '%s'",
		 img, img, img, mnt);
	if (system(cmd) != 0) {
		printf("SKIP full-disk check: cannot loop-mount a file system here\n");
		daemon_cleanup(&d);
		return;
	}
	CHECK(daemon_start(&d, "--ssd-dir", mnt, NULL) == 0, "start on the small fs");
	mnemo_client *c;
	if (mnemo_connect(d.sock, &c) == 0) {
		uint64_t ctx = create(c, "fill");
		const uint32_t chunk = 1024;      /* 2 MiB per append */
		uint16_t *buf = malloc((size_t)2 * H * chunk * D * 2);
		uint64_t t = 0;
		int rc = 0;
		for (int i = 0; i < 64 && !rc; i++) {
			fill(buf, t, chunk);
			rc = mnemo_append(c, ctx, 0, 1, t, chunk, buf, (size_t)2 * H * chunk * D * 2, NULL);
			if (!rc)
				t += chunk;
		}
		CHECK(rc == -ENOSPC, "filling the disk ended with %d: %s", rc, mnemo_last_error(c));
		CHECK(strstr(mnemo_last_error(c), "full") != NULL, "ENOSPC message: %s", mnemo_last_error(c));
		CHECK(t > 0, "nothing fitted");
		struct mnemo_context_info ci;
		CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.tokens == t, "length after ENOSPC: %llu vs %llu",
		      (unsigned long long)ci.tokens, (unsigned long long)t);
		CHECK(check_fetch(c, ctx, t, 2000, NULL) == 0, "earlier data after ENOSPC");
		float q[H * D], o[H * D], l[H];
		for (int i = 0; i < H * D; i++)
			q[i] = check_uniform(&seed);
		CHECK(mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, o, l, NULL) == 0, "attend after ENOSPC");
		free(buf);
		mnemo_close(c);
	}
	CHECK(daemon_stop(&d, SIGTERM) == 0, "stop");
	snprintf(cmd, sizeof(cmd), "umount '%s'", mnt);
	if (system(cmd) != 0)
		fprintf(stderr, "umount %s failed\n", mnt);
	daemon_cleanup(&d);
}

/*
 * Retrieval indexes persist: a restarted daemon loads them (STAT counts
 * loads, not builds) and answers exactly as before; a corrupted index file
 * is built over; dropping the context removes its index files. Prefill
 * queries persist too: sent before a restart, they build ann after it.
 */
static void indexes_persist(const char *bin)
{
	struct daemon d;
	daemon_init(&d, bin);
	const uint64_t N = 32768;
	const uint32_t pols[2] = { MNEMO_POLICY_CENTROIDS2, MNEMO_POLICY_QUEST };
	float q[H * D], o[2][H * D], l[2][H], o2[H * D], l2[H];
	for (int i = 0; i < H * D; i++)
		q[i] = 2.0f * check_uniform(&seed);
	uint64_t ctx = 0;
	static uint32_t ids[32768];
	static float surprise[32768];
	for (uint64_t t = 0; t < N; t++)
		surprise[t] = 2.0f + 0.5f * (float)((t * 2654435761u) % 1000) / 1000.0f + (t % 37 == 0 ? 5.0f : 0.0f);
	char idxdir[300];
	for (int round = 0; round < 3; round++) {
		CHECK(daemon_start(&d, NULL) == 0, "start, round %d", round);
		mnemo_client *c;
		if (mnemo_connect(d.sock, &c)) {
			CHECK(0, "connect");
			break;
		}
		if (round == 0) {
			ctx = create(c, "indexed");
			uint16_t *kv = malloc((size_t)2 * H * 4096 * D * 2);
			for (uint64_t t = 0; t < N; t += 4096) {
				fill(kv, t, 4096);
				CHECK(mnemo_append(c, ctx, 0, 1, t, 4096, kv, (size_t)2 * H * 4096 * D * 2, NULL) == 0,
				      "append");
			}
			free(kv);
			uint64_t tokens;
			CHECK(mnemo_seal(c, ctx, &tokens) == 0 && tokens == N, "seal");
			snprintf(idxdir, sizeof(idxdir), "%s/data/indexes/ctx-%016llx", d.dir, (unsigned long long)ctx);
			for (uint64_t i = 0; i < N; i++)
				ids[i] = (uint32_t)(i * 2654435761u);
			CHECK(mnemo_tokens(c, ctx, 77, 0, ids, (uint32_t)N, NULL) == 0, "tokens: %s", mnemo_last_error(c));
			CHECK(mnemo_share(c, ctx, NULL, 1) == 0, "share: %s", mnemo_last_error(c));
			/* prefill queries: near the keys, so that the graph has query edges to draw */
			enum { P = 256 };
			float *pq = malloc(sizeof(float) * H * P * D);
			for (uint32_t h = 0; h < H; h++)
				for (uint32_t t = 0; t < P; t++)
					for (uint32_t j = 0; j < D; j++)
						pq[((size_t)h * P + t) * D + j] = synth(1, h, N - P + t, j);
			struct mnemo_queries_info qi;
			CHECK(mnemo_queries(c, ctx, 0, 0, P, pq, &qi) == 0 && qi.kept == P, "queries: %s", mnemo_last_error(c));
			free(pq);
			/* a continuation with 500 tokens of its own: the link must outlive the daemon */
			uint64_t cont;
			uint16_t *ckv = malloc((size_t)2 * H * 500 * D * 2);
			fill(ckv, 7, 500);
			uint64_t sealed;
			CHECK(mnemo_continue(c, ctx, "continued", &cont) == 0 &&
			      mnemo_append(c, cont, 0, 1, 0, 500, ckv, (size_t)2 * H * 500 * D * 2, NULL) == 0 &&
			      mnemo_seal(c, cont, &sealed) == 0 && sealed == 500, "continuation: %s", mnemo_last_error(c));
			free(ckv);
			/* surprise for the first half: the segmenter's state must outlive the daemon */
			struct mnemo_surprise_info si;
			CHECK(mnemo_surprise(c, ctx, 0, (uint32_t)N / 2, surprise, &si) == 0 && si.seen == N / 2 && si.events,
			      "surprise: %s", mnemo_last_error(c));
		}
		/* the continuation: linked to its parent again, the same answer across the parent's end */
		{
			static float oc0[H * D], lc0[H];
			float oc[H * D], lc[H];
			struct mnemo_context_info cci;
			CHECK(mnemo_stat(c, 0, "continued", &cci) == 0 && cci.parent == ctx && cci.parent_tokens == N &&
			      cci.tokens == 500, "round %d: continuation's link: parent %llu", round,
			      (unsigned long long)cci.parent);
			CHECK(mnemo_attend(c, cci.id, 0, MNEMO_POLICY_EXACT, N - 300, N + 400, q, oc, lc, NULL) == 0,
			      "round %d: attend the continuation: %s", round, mnemo_last_error(c));
			if (!round) {
				memcpy(oc0, oc, sizeof(oc));
				memcpy(lc0, lc, sizeof(lc));
			} else {
				CHECK(!memcmp(oc0, oc, sizeof(oc)) && !memcmp(lc0, lc, sizeof(lc)),
				      "round %d: the continuation answers differently after a restart", round);
			}
			CHECK(mnemo_drop(c, ctx, NULL) == -EBUSY, "round %d: the parent dropped under its continuation", round);
		}
		/* episodic: the rest of the surprise after the first restart goes on where the first half
		 * stopped (a context fed all of it in one go agrees), then built, then loaded */
		static float oe1[H * D], le1[H];
		if (round) {
			struct mnemo_context_info ci;
			struct mnemo_surprise_info si, whole;
			if (round == 1) {
				CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.surprise_seen == N / 2 && ci.events,
				      "STAT surprise after a restart: %llu", (unsigned long long)ci.surprise_seen);
				CHECK(mnemo_surprise(c, ctx, 0, 16, surprise, &si) == -ERANGE, "surprise resent after a restart");
				CHECK(mnemo_surprise(c, ctx, N / 2, (uint32_t)N / 2, surprise + N / 2, &si) == 0 &&
				      si.seen == N, "surprise, second half: %s", mnemo_last_error(c));
				uint64_t ref = create(c, "whole-surprise");
				CHECK(mnemo_surprise(c, ref, 0, (uint32_t)N, surprise, &whole) == 0 && whole.events == si.events,
				      "a restart changed the events: %llu against %llu in one go",
				      (unsigned long long)si.events, (unsigned long long)whole.events);
				CHECK(mnemo_drop(c, ref, NULL) == 0, "drop");
			}
			struct mnemo_index_info ei;
			CHECK(mnemo_index(c, ctx, MNEMO_POLICY_EPISODIC, 0, 0, &ei) == 0 &&
				      ei.built == (round == 1 ? H : 0) && ei.loaded == (round == 2 ? H : 0),
			      "round %d INDEX episodic: %s", round, mnemo_last_error(c));
			CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.segmentation == MNEMO_SEG_SURPRISE && ci.surprise_seen == N,
			      "round %d: segmented by %u", round, ci.segmentation);
			float oe[H * D], le[H];
			CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_EPISODIC, N / 50, 0, UINT64_MAX, q, oe, le, NULL) == 0,
			      "attend episodic: %s", mnemo_last_error(c));
			if (round == 1) {
				memcpy(oe1, oe, sizeof(oe));
				memcpy(le1, le, sizeof(le));
			} else {
				CHECK(!memcmp(oe1, oe, sizeof(oe)) && !memcmp(le1, le, sizeof(le)),
				      "episodic answers differently after a restart");
			}
		}
		/* ann: built from the queries after the first restart, loaded after the second */
		float oa[H * D], la[H];
		static float oa1[H * D], la1[H];
		if (round) {
			struct mnemo_index_info ai;
			CHECK(mnemo_index(c, ctx, MNEMO_POLICY_ANN, 0, 0, &ai) == 0 && ai.built == (round == 1 ? H : 0) &&
				      ai.loaded == (round == 2 ? H : 0),
			      "round %d INDEX ann: %s", round, mnemo_last_error(c));
			CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_ANN, N / 50, 0, UINT64_MAX, q, oa, la, NULL) == 0,
			      "attend ann: %s", mnemo_last_error(c));
			if (round == 1) {
				memcpy(oa1, oa, sizeof(oa));
				memcpy(la1, la, sizeof(la));
			} else {
				CHECK(!memcmp(oa1, oa, sizeof(oa)) && !memcmp(la1, la, sizeof(la)),
				      "ann answers differently after a restart");
			}
		}
		/* shared stays shared across restarts */
		struct mnemo_context_info sci;
		CHECK(mnemo_stat(c, ctx, NULL, &sci) == 0 && sci.shared, "round %d: not shared", round);
		/* the prefix chain comes back with the context */
		struct mnemo_lookup_info li;
		CHECK(mnemo_lookup(c, 77, ids, (uint32_t)N, &li) == 0 && li.ctx == ctx && li.tokens == N,
		      "round %d: lookup found %llu tokens of context %llu", round, (unsigned long long)li.tokens,
		      (unsigned long long)li.ctx);
		/* INDEX ahead of the ATTENDs: built, then loaded, then one rebuilt */
		struct mnemo_index_info ii;
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_CENTROIDS2, 0, 0, &ii) == 0, "INDEX: %s", mnemo_last_error(c));
		CHECK(ii.built == (round == 0 ? H : round == 1 ? 0 : 1) && ii.built + ii.loaded == H && !ii.present,
		      "round %d INDEX: %llu built, %llu loaded, %llu present", round, (unsigned long long)ii.built,
		      (unsigned long long)ii.loaded, (unsigned long long)ii.present);
		CHECK(mnemo_index(c, ctx, MNEMO_POLICY_CENTROIDS2, 0, 1, &ii) == 0 && ii.present == H && !ii.built,
		      "INDEX again finds them in memory");
		for (int p = 0; p < 2; p++) {
			float *oo = round ? o2 : o[p], *ll = round ? l2 : l[p];
			CHECK(mnemo_attend_ex(c, ctx, 0, pols[p], N / 20, 0, UINT64_MAX, q, oo, ll, NULL) == 0,
			      "attend policy %u, round %d: %s", pols[p], round, mnemo_last_error(c));
			if (round)
				CHECK(!memcmp(o2, o[p], sizeof(o2)) && !memcmp(l2, l[p], sizeof(l2)),
				      "policy %u answers differently after restart %d", pols[p], round);
		}
		struct mnemo_daemon_info di;
		CHECK(mnemo_stat_daemon(c, &di) == 0, "stat");
		/* round 0 builds one per (policy, head); round 1 loads them all and builds ann and episodic;
		 * round 2 rebuilds the corrupt one and loads ann and episodic */
		uint64_t want_b = round == 0 ? 2 * H : round == 1 ? 2 * H : 1;
		uint64_t want_all = round == 0 ? 2 * H : 4 * H;
		/* centroids2 keeps a cluster-ordered copy of the layer's K/V on the SSD tier, not in
		 * the index's RAM: the tier holds the context twice over, and the copy is not a
		 * context anyone sees */
		const uint64_t kv_bytes = (uint64_t)2 * H * N * D * 2;
		CHECK(round || di.index_bytes < kv_bytes / 4, "round %d: index_bytes %llu (ann keeps keys from round 1)",
		      round, (unsigned long long)di.index_bytes);
		CHECK(di.ssd_used >= 2 * kv_bytes, "round %d: ssd_used %llu, the copy is not on the SSD", round,
		      (unsigned long long)di.ssd_used);
		struct mnemo_context_info *all = NULL;
		size_t listed = 0;
		CHECK(mnemo_list(c, &all, &listed) == 0 && listed == di.contexts, "round %d: %zu listed, %u contexts",
		      round, listed, di.contexts);
		for (size_t i = 0; i < listed; i++)
			CHECK(strncmp(all[i].name, "rows.", 5) != 0, "round %d: the copy %s is listed", round, all[i].name);
		free(all);
		CHECK(di.index_builds == want_b && di.index_builds + di.index_loads == want_all,
		      "round %d: %llu built, %llu loaded", round, (unsigned long long)di.index_builds,
		      (unsigned long long)di.index_loads);
		if (round == 2) {
			CHECK(mnemo_drop(c, 0, "continued") == 0 && mnemo_drop(c, ctx, NULL) == 0, "drop: %s",
			      mnemo_last_error(c));
			/* the copy went with its context */
			struct mnemo_daemon_info dd;
			CHECK(mnemo_stat_daemon(c, &dd) == 0 && di.ssd_used - dd.ssd_used >= 2 * kv_bytes,
			      "ssd_used %llu -> %llu after the drop", (unsigned long long)di.ssd_used,
			      (unsigned long long)dd.ssd_used);
			CHECK(mnemo_lookup(c, 77, ids, (uint32_t)N, &li) == 0 && li.ctx == 0, "a dropped context matched");
			CHECK(mnemo_stat_daemon(c, &di) == 0 && di.index_bytes == 0, "index_bytes %llu after the drop",
			      (unsigned long long)di.index_bytes);
			CHECK(access(idxdir, F_OK) != 0, "%s left after drop", idxdir);
		}
		mnemo_close(c);
		CHECK(daemon_stop(&d, SIGTERM) == 0, "clean stop");
		if (round == 1) {
			/* one flipped byte in the middle of one index */
			char path[400];
			snprintf(path, sizeof(path), "%s/centroids2-l0-h1.idx", idxdir);
			FILE *f = fopen(path, "r+b");
			CHECK(f != NULL, "open %s", path);
			if (f) {
				fseek(f, 0, SEEK_END);
				long at = ftell(f) / 2;
				fseek(f, at, SEEK_SET);
				int ch = fgetc(f);
				fseek(f, at, SEEK_SET);
				fputc(ch ^ 0x10, f);
				fclose(f);
			}
		}
	}
	daemon_cleanup(&d);
}

/*
 * STREAM APPENDs over the wire: written at each reply, durable at a sync
 * point. The daemon is killed after streamed chunks, a chunk with SYNC and
 * more streamed chunks: a restart serves exactly the chunks up to the SYNC.
 */
static void stream_sync_points(const char *bin)
{
	struct daemon d;
	daemon_init(&d, bin);
	CHECK(daemon_start(&d, NULL) == 0, "start");
	mnemo_client *c;
	if (mnemo_connect(d.sock, &c)) {
		CHECK(0, "connect");
		daemon_cleanup(&d);
		return;
	}
	uint64_t ctx = create(c, "streamed");
	const uint32_t chunk = 1024;
	const size_t bytes = (size_t)2 * H * chunk * D * 2;
	void *arena;
	CHECK(mnemo_shm_attach(c, bytes, &arena) == 0, "attach");
	for (uint32_t k = 0; k < 6; k++) {
		fill(arena, (uint64_t)k * chunk, chunk);
		uint64_t id, ct = 0;
		const uint32_t fl = MNEMO_APPEND_STREAM | (k == 3 ? MNEMO_APPEND_SYNC : 0);
		CHECK(mnemo_submit_append_ex(c, ctx, 0, 1, (uint64_t)k * chunk, chunk, arena, bytes, fl, &id) == 0 &&
			      mnemo_wait_append(c, id, &ct) == 0 && ct == (k + 1ull) * chunk,
		      "streamed append %u: %s", k, mnemo_last_error(c));
	}
	struct mnemo_daemon_info di;
	CHECK(mnemo_stat_daemon(c, &di) == 0 && di.host_used == 0, "streamed blocks took %llu bytes of RAM",
	      (unsigned long long)di.host_used);
	CHECK(check_fetch(c, ctx, 6 * chunk, 256, NULL) == 0, "streamed, not yet durable, read back");
	mnemo_close(c);
	daemon_stop(&d, SIGKILL);
	CHECK(daemon_start(&d, NULL) == 0, "restart after kill -9");
	if (mnemo_connect(d.sock, &c)) {
		CHECK(0, "reconnect");
		daemon_cleanup(&d);
		return;
	}
	struct mnemo_context_info ci;
	CHECK(mnemo_stat(c, ctx, NULL, &ci) == 0 && ci.tokens == 4 * chunk,
	      "after kill -9: %llu tokens, the SYNC append ended at %u", (unsigned long long)ci.tokens, 4 * chunk);
	CHECK(check_fetch(c, ctx, 4 * chunk, 256, NULL) == 0, "durable streamed blocks read back");
	mnemo_close(c);
	daemon_cleanup(&d);
}

/* A sealed context of the synthetic K/V, @p n tokens appended at once. */
static uint64_t sealed_context(mnemo_client *c, const char *name, uint32_t n)
{
	const uint64_t ctx = create(c, name);
	uint16_t *kv = malloc((size_t)2 * H * n * D * 2);
	fill(kv, 0, n);
	uint64_t tokens;
	CHECK(mnemo_append(c, ctx, 0, 1, 0, n, kv, (size_t)2 * H * n * D * 2, NULL) == 0 &&
	      mnemo_seal(c, ctx, &tokens) == 0 && tokens == n, "%s: %s", name, mnemo_last_error(c));
	free(kv);
	return ctx;
}

/*
 * --estimates off: centroids2's partial is exact attention over its picks
 * alone, so it never holds more softmax mass than the whole layer (lse at
 * most the exact one) and loads just the budget; the same index, loaded by
 * a daemon with estimates on, adds the mass of the clusters it estimates
 * (a larger lse for every head). A value other than on or off is refused.
 */
static void estimates_switch(const char *bin)
{
	struct daemon d;
	daemon_init(&d, bin);
	enum { N = 16384, BUDGET = N / 50 };
	float q[H * D], o[2][H * D], l[2][H], oe[H * D], le[H];
	for (int i = 0; i < H * D; i++)
		q[i] = 2.0f * check_uniform(&seed);
	CHECK(daemon_start(&d, "--estimates", "maybe", NULL) != 0, "--estimates maybe accepted");
	uint64_t ctx = 0;
	for (int round = 0; round < 2; round++) {
		if (daemon_start(&d, "--estimates", round ? "on" : "off", NULL)) {
			CHECK(0, "start with estimates %s", round ? "on" : "off");
			break;
		}
		mnemo_client *c;
		if (mnemo_connect(d.sock, &c)) {
			CHECK(0, "connect");
			break;
		}
		if (!round)
			ctx = sealed_context(c, "estimated", N);
		struct mnemo_attend_info info;
		CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_CENTROIDS2, BUDGET, 0, UINT64_MAX, q, o[round], l[round],
				      &info) == 0 &&
		      mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, oe, le, NULL) == 0,
		      "attend: %s", mnemo_last_error(c));
		CHECK(info.loaded == (uint64_t)BUDGET * H, "round %d: loaded %llu", round,
		      (unsigned long long)info.loaded);
		for (int h = 0; h < H; h++) {
			if (!round)
				CHECK(l[0][h] <= le[h] + 1e-4f, "head %d: lse %g of the picks over the layer's %g", h,
				      l[0][h], le[h]);
			else
				CHECK(l[1][h] > l[0][h] + 1e-6f, "head %d: estimates on, lse %g, off %g", h, l[1][h],
				      l[0][h]);
		}
		mnemo_close(c);
		CHECK(daemon_stop(&d, SIGTERM) == 0, "clean stop");
	}
	daemon_cleanup(&d);
}

/*
 * --quest-rerank: two daemons over the same context, one with Quest's own
 * search and one reranking 8 budgets from codes. The reranking one keeps
 * the codes (half a byte a channel, in index_bytes), keeps more of the
 * softmax mass in the same budget (summed over heads; never more than the
 * layer's), and loads just the budget; a bad R is refused.
 */
static void quest_rerank_switch(const char *bin)
{
	enum { N = 16384, BUDGET = N / 100 };
	float q[H * D], o[H * D], l[2][H], oe[H * D], le[H];
	uint64_t bytes[2] = { 0, 0 };
	for (int i = 0; i < H * D; i++)
		q[i] = 2.0f * check_uniform(&seed);
	for (int mode = 0; mode < 2; mode++) {
		struct daemon d;
		daemon_init(&d, bin);
		if (mode)
			CHECK(daemon_start(&d, "--quest-rerank", "0.5", NULL) != 0, "--quest-rerank 0.5 accepted");
		if (daemon_start(&d, "--quest-rerank", mode ? "8" : "0", NULL)) {
			CHECK(0, "start, rerank %d", mode);
			daemon_cleanup(&d);
			return;
		}
		mnemo_client *c;
		if (mnemo_connect(d.sock, &c)) {
			CHECK(0, "connect");
			daemon_cleanup(&d);
			return;
		}
		const uint64_t ctx = sealed_context(c, "reranked", N);
		struct mnemo_attend_info info;
		struct mnemo_daemon_info di;
		CHECK(mnemo_attend_ex(c, ctx, 0, MNEMO_POLICY_QUEST, BUDGET, 0, UINT64_MAX, q, o, l[mode], &info) == 0 &&
		      mnemo_attend(c, ctx, 0, MNEMO_POLICY_EXACT, 0, UINT64_MAX, q, oe, le, NULL) == 0 &&
		      mnemo_stat_daemon(c, &di) == 0, "attend: %s", mnemo_last_error(c));
		CHECK(info.loaded == (uint64_t)BUDGET * H, "rerank %d: loaded %llu", mode, (unsigned long long)info.loaded);
		for (int h = 0; h < H; h++)
			CHECK(l[mode][h] <= le[h] + 1e-4f, "rerank %d, head %d: lse %g over the layer's %g", mode, h,
			      l[mode][h], le[h]);
		bytes[mode] = di.index_bytes;
		mnemo_close(c);
		CHECK(daemon_stop(&d, SIGTERM) == 0, "clean stop");
		daemon_cleanup(&d);
	}
	double kept[2] = { 0, 0 };
	for (int mode = 0; mode < 2; mode++)
		for (int h = 0; h < H; h++)
			kept[mode] += exp(l[mode][h]);
	CHECK(kept[1] > kept[0], "reranking kept less mass: %g against %g", kept[1], kept[0]);
	CHECK(bytes[1] >= bytes[0] + (uint64_t)H * N * D / 2, "index_bytes %llu with codes, %llu without",
	      (unsigned long long)bytes[1], (unsigned long long)bytes[0]);
	printf("quest at 1%%: mass kept %.4g with rerank 8, %.4g without\n", kept[1], kept[0]);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: test_persist PATH-TO-MNEMOD\n");
		return 2;
	}
	seed = check_seed();
	struct daemon d;
	daemon_init(&d, argv[1]);
	big_context(&d);
	crash_and_corrupt(&d);
	daemon_cleanup(&d);
	full_disk(argv[1]);
	indexes_persist(argv[1]);
	stream_sync_points(argv[1]);
	estimates_switch(argv[1]);
	quest_rerank_switch(argv[1]);
	return check_exit();
}
