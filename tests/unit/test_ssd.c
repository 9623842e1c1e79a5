/*
 * The SSD tier, the records and the store over them:
 * - the slot allocator (lowest free slot first, reuse, claims, the --ssd-max cap);
 * - the records: trailer and catalog values round-trip, a flipped bit in a
 *   trailer or in block data is caught, malformed records are refused;
 * - the store with a host budget of a few blocks: appends are durable and
 *   evicted, read back identical; a store reopened on the same folders has
 *   every context back (sealed, or recovered up to its durable blocks) with
 *   the same bytes; a flipped byte in a block file fails that block only,
 *   which stays marked bad across a restart; a full SSD (--ssd-max) refuses
 *   an APPEND with ENOSPC and changes nothing;
 * - reading ahead (kv_ctx_prefetch): blocks arrive in RAM without a pin,
 *   a pin of one then reads nothing and counts its miss, a pin racing the
 *   read ahead reads no block twice, a bad block is still refused by the
 *   pin that needs it, and a store closed with hints queued frees all.
 * Exits 77 where the temporary folder refuses O_DIRECT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../check.h"
#include "catalog.h"
#include "record.h"
#include "ssd.h"
#include "store.h"
#include "tier.h"

static char dir[128], ssd_path[160], cat_dir[160];

static void test_slots(void)
{
	struct ssd *s;
	CHECK(ssd_open(ssd_path, 10 * 8192, &s) == 0, "open");
	struct ssd_file *f;
	CHECK(ssd_file_open(s, 99, 8192, true, &f) == 0, "file");
	uint64_t slot;
	for (uint64_t i = 0; i < 10; i++)
		CHECK(ssd_slot_alloc(f, &slot) == 0 && slot == i, "slot %llu", (unsigned long long)i);
	CHECK(ssd_slot_alloc(f, &slot) == -ENOSPC, "past ssd-max");
	ssd_slot_free(f, 3);
	ssd_slot_free(f, 7);
	ssd_slot_free(f, 7);   /* twice is harmless */
	CHECK(ssd_slot_alloc(f, &slot) == 0 && slot == 3, "lowest free first");
	CHECK(ssd_slot_alloc(f, &slot) == 0 && slot == 7, "then the next");
	struct ssd_stats st;
	ssd_stats(s, &st);
	CHECK(st.used_bytes == 10 * 8192, "used %llu", (unsigned long long)st.used_bytes);
	ssd_file_remove(f);
	ssd_stats(s, &st);
	CHECK(st.used_bytes == 0, "remove gives slots back");
	CHECK(ssd_file_open(s, 100, 8192, true, &f) == 0, "file 2");
	CHECK(ssd_slot_claim(f, 200) == 0 && ssd_slot_claim(f, 200) == -EEXIST, "claim");
	CHECK(ssd_slot_alloc(f, &slot) == 0 && slot == 0, "alloc after a claim");
	CHECK(ssd_file_open(s, 101, 1000, true, &f) == -EINVAL, "unaligned slot size");
	ssd_file_remove(f);
	ssd_close(s);
}

static void test_records(void)
{
	uint8_t data[4096];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 13);
	struct block_trailer t = { .ctx_id = 7, .layer = 3, .head = 2, .block = 1234567, .tokens = 64,
				   .data_bytes = 4096, .checksum = record_checksum(data, 4096) }, u;
	uint8_t tr[RECORD_TRAILER_SIZE];
	record_trailer_encode(tr, &t);
	CHECK(record_trailer_decode(tr, &u) == 0 && !memcmp(&t, &u, sizeof(t)), "trailer round trip");
	for (int bit = 0; bit < (int)RECORD_TRAILER_SIZE * 8; bit += 7) {
		tr[bit / 8] ^= (uint8_t)(1 << (bit % 8));
		CHECK(record_trailer_decode(tr, &u) == -EBADMSG, "flipped trailer bit %d accepted", bit);
		tr[bit / 8] ^= (uint8_t)(1 << (bit % 8));
	}
	/* the same bytes under another identity: another checksum */
	uint64_t id0 = record_block_checksum(data, 4096, 7, 1, 2, 3);
	CHECK(id0 == record_block_checksum(data, 4096, 7, 1, 2, 3), "identity checksum not deterministic");
	CHECK(id0 != record_block_checksum(data, 4096, 8, 1, 2, 3) &&
	      id0 != record_block_checksum(data, 4096, 7, 0, 2, 3) &&
	      id0 != record_block_checksum(data, 4096, 7, 1, 3, 3) &&
	      id0 != record_block_checksum(data, 4096, 7, 1, 2, 4) && id0 != record_checksum(data, 4096),
	      "a block's identity does not enter its checksum");
	uint64_t sum = record_checksum(data, 4096);
	for (int i = 0; i < 4096 * 8; i += 997) {
		data[i / 8] ^= (uint8_t)(1 << (i % 8));
		CHECK(record_checksum(data, 4096) != sum, "checksum missed flipped bit %d", i);
		data[i / 8] ^= (uint8_t)(1 << (i % 8));
	}

	struct block_record b = { .slot = 99, .checksum = 0xabcdef, .tokens = 17, .flags = BLOCK_BAD }, bb;
	uint8_t bv[RECORD_BLOCK_SIZE];
	record_block_encode(bv, &b);
	CHECK(record_block_decode(bv, sizeof(bv), &bb) == 0 && !memcmp(&b, &bb, sizeof(b)), "block record");
	CHECK(record_block_decode(bv, sizeof(bv) - 1, &bb) == -EBADMSG, "short block record");
	bv[20] = 0x80;
	CHECK(record_block_decode(bv, sizeof(bv), &bb) == -EBADMSG, "unknown flag");

	uint8_t k1[RECORD_BLOCK_KEY_SIZE], k2[RECORD_BLOCK_KEY_SIZE];
	record_block_key(k1, 1, 0, 1, 255);
	record_block_key(k2, 1, 0, 1, 256);
	CHECK(memcmp(k1, k2, sizeof(k1)) < 0, "keys sort by block");
	record_block_key(k2, 1, 1, 0, 0);
	CHECK(memcmp(k1, k2, sizeof(k1)) < 0, "keys sort by layer first");

	uint64_t lt[3] = { 5, 6, 7 };
	struct ctx_record c = { .id = 42, .n_layers = 3, .n_kv_heads = 2, .n_q_heads = 8, .head_dim = 64,
				.dtype = 2, .rope_theta = 1e4f, .owner_uid = 1000, .state = 1,
				.block_tokens = 64, .slot_bytes = 36864, .layer_tokens = lt }, d;
	strcpy(c.name, "ctx-name");
	uint8_t *enc;
	size_t n;
	CHECK(record_ctx_encode(&c, &enc, &n) == 0, "ctx encode");
	CHECK(record_ctx_decode(enc, n, &d) == 0 && d.id == 42 && !strcmp(d.name, "ctx-name") &&
	      d.layer_tokens[2] == 7 && d.slot_bytes == 36864, "ctx round trip");
	free(d.layer_tokens);
	for (size_t cut = 0; cut < n; cut++)
		CHECK(record_ctx_decode(enc, cut, &d) == -EBADMSG, "short ctx record %zu accepted", cut);
	enc[44] = 9;   /* state 9 */
	CHECK(record_ctx_decode(enc, n, &d) == -EBADMSG, "bad state accepted");
	free(enc);
}

/* The byte pattern of a block's data, from its coordinates. */
static uint8_t pattern(uint32_t layer, uint32_t kv, uint32_t head, uint64_t tok, size_t b)
{
	return (uint8_t)(layer * 131 + kv * 71 + head * 37 + tok * 11 + b * 3 + 1);
}

static const uint32_t L = 2, H = 2, B = 16;
/* head_dim: 32 gives 2 KiB blocks in 4 KiB slots with a trailer, 64 gives
 * 4 KiB blocks that fill their slots and carry an identity-seeded checksum */
static uint32_t D = 32;

/* @p flags KV_APPEND_*; @p misalign shifts the request's bytes off a 4 KiB boundary */
static void append_one_ex(struct kv_ctx *c, uint64_t t0, uint32_t n, int expect, unsigned flags, size_t misalign)
{
	size_t row = D * 2, len = (size_t)L * 2 * H * n * row;
	uint8_t *mem = NULL;
	if (posix_memalign((void **)&mem, SSD_ALIGN, len + misalign))
		abort();
	uint8_t *buf = mem + misalign, *p = buf;
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < H; h++)
				for (uint32_t t = 0; t < n; t++)
					for (size_t b = 0; b < row; b++)
						*p++ = pattern(l, kv, h, t0 + t, b);
	uint64_t lt, ct;
	const char *why = "";
	int rc = kv_ctx_append_ex(c, 0, L, t0, n, buf, len, flags, &lt, &ct, &why);
	CHECK(rc == expect, "append [%llu,+%u): %d (%s), wanted %d", (unsigned long long)t0, n, rc,
	      why ? why : "", expect);
	free(mem);
}

static void append_one(struct kv_ctx *c, uint64_t t0, uint32_t n, int expect)
{
	append_one_ex(c, t0, n, expect, 0, 0);
}

/* An APPEND's new blocks must fit in RAM at once: feed in pieces of up to 37 tokens. */
static void append_tokens(struct kv_ctx *c, uint64_t t0, uint32_t n, int expect)
{
	if (expect) {
		append_one(c, t0, n, expect);
		return;
	}
	for (uint32_t done = 0; done < n;) {
		uint32_t k = n - done < 37 ? n - done : 37;
		append_one(c, t0 + done, k, 0);
		done += k;
	}
}

/*
 * Pin the blocks of every layer and head in ranges of @p span (cold blocks of
 * a range are read together, neighbours in one request) and compare with the
 * pattern. A range refused for a bad block counts in *bad_ranges and names
 * it in *bad_block.
 */
static int verify_ranges(struct kv_ctx *c, uint64_t tokens, uint32_t span, uint64_t *bad_ranges, uint64_t *bad_block)
{
	int wrong = 0;
	const size_t row = D * 2;
	const uint64_t nb = (tokens + B - 1) / B;
	*bad_ranges = 0;
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t h = 0; h < H; h++)
			for (uint64_t b0 = 0; b0 < nb; b0 += span) {
				const uint32_t n = (uint32_t)(nb - b0 < span ? nb - b0 : span);
				const uint8_t *blk[64];
				uint64_t err = UINT64_MAX;
				kv_ctx_read_begin(c);
				int rc = kv_ctx_pin(c, l, h, b0, n, blk, &err);
				if (rc == -EBADMSG) {
					(*bad_ranges)++;
					*bad_block = err;
					kv_ctx_read_end(c);
					continue;
				}
				if (rc) {
					wrong++;
					kv_ctx_read_end(c);
					continue;
				}
				for (uint32_t i = 0; i < n; i++) {
					const uint64_t b = b0 + i;
					for (uint64_t t = b * B; t < tokens && t < (b + 1) * B; t++)
						for (uint32_t kv = 0; kv < 2; kv++)
							for (size_t x = 0; x < row; x++)
								wrong += blk[i][kv * B * row + (t - b * B) * row + x] !=
									 pattern(l, kv, h, t, x);
				}
				kv_ctx_unpin(c, l, h, b0, n);
				kv_ctx_read_end(c);
			}
	return wrong;
}

/* Pin every block of every layer and head, one at a time, and compare with
 * the pattern; blocks that fail their check count in *bad_seen. */
static int verify(struct kv_ctx *c, uint64_t tokens, uint64_t *bad_seen)
{
	uint64_t last_bad;
	return verify_ranges(c, tokens, 1, bad_seen, &last_bad);
}

struct world {
	struct tier *host;
	struct ssd *ssd;
	struct catalog *cat;
	struct store *st;
};

/* the store's stream_sync_bytes and side file folder in the next world_open() */
static uint64_t stream_sync;
static const char *side_dir;

static int world_open(struct world *w, uint64_t host_bytes, uint64_t ssd_max)
{
	struct tier_config tc = { .budget_bytes = host_bytes, .align = SSD_ALIGN };
	tier_host_ops.open(&tc, &w->host);
	int rc = ssd_open(ssd_path, ssd_max, &w->ssd);
	if (rc)
		return rc;
	if ((rc = catalog_open(cat_dir, &w->cat)))
		return rc;
	struct store_config sc = { .block_tokens = B, .host_ops = &tier_host_ops, .host = w->host,
				   .ssd = w->ssd, .catalog = w->cat, .stream_sync_bytes = stream_sync,
				   .side_dir = side_dir };
	const char *why = NULL;
	rc = store_open(&sc, &w->st, &why);
	CHECK(rc == 0, "store_open: %d %s", rc, why ? why : "");
	return rc;
}

static void world_close(struct world *w)
{
	store_destroy(w->st);
	catalog_close(w->cat);
	ssd_close(w->ssd);
	struct tier_stats ts;
	tier_host_ops.stats(w->host, &ts);
	CHECK(ts.used_bytes == 0, "host memory left: %llu", (unsigned long long)ts.used_bytes);
	tier_host_ops.close(w->host);
}

static void test_store(void)
{
	struct kv_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = 2 * H, .head_dim = D,
				 .dtype = 2, .elem_size = 2 };
	const uint32_t slot = ssd_slot_bytes(2ull * B * D * 2);
	printf("head_dim %u: %llu-byte blocks in %u-byte slots\n", D, 2ull * B * D * 2, slot);
	struct world w;
	/* RAM for 40 blocks; the contexts below hold hundreds */
	if (world_open(&w, 40ull * slot, 0))
		return;
	struct kv_ctx *a, *b;
	CHECK(store_ctx_create(w.st, "sealed-one", 10, &g, 1000, &a) == 0, "create a");
	CHECK(store_ctx_create(w.st, "open-one", 8, &g, 1001, &b) == 0, "create b");
	/* uneven appends; each fills some blocks and leaves a partial one */
	append_tokens(a, 0, 5, 0);
	append_tokens(a, 5, 100, 0);
	append_tokens(a, 105, 900, 0);
	append_tokens(a, 1005, 3, 0);
	uint64_t tokens;
	CHECK(kv_ctx_seal(a, &tokens) == 0 && tokens == 1008, "seal a");
	append_tokens(b, 0, 517, 0);
	append_tokens(b, 517, 30, 0);     /* 547: 34 full blocks + 3 tokens in RAM only */
	uint64_t bad;
	CHECK(verify(a, 1008, &bad) == 0 && bad == 0, "a reads back (through evictions)");
	CHECK(verify(b, 547, &bad) == 0 && bad == 0, "b reads back");
	struct store_stats ss;
	store_stats(w.st, &ss);
	CHECK(ss.evictions > 0 && ss.misses > 0, "no eviction with a 40-block budget: %llu evictions",
	      (unsigned long long)ss.evictions);
	printf("evictions %llu, hits %llu, misses %llu\n", (unsigned long long)ss.evictions,
	       (unsigned long long)ss.hits, (unsigned long long)ss.misses);
	uint64_t id_a = kv_ctx_id(a), id_b = kv_ctx_id(b);
	kv_ctx_put(a);
	kv_ctx_put(b);
	world_close(&w);

	/* restart: both back, b up to its last full block */
	if (world_open(&w, 40ull * slot, 0))
		return;
	CHECK(store_count(w.st) == 2, "contexts after restart: %u", store_count(w.st));
	CHECK(store_ctx_find(w.st, id_a, NULL, 0, &a) == 0, "a after restart");
	CHECK(store_ctx_find(w.st, 0, "open-one", 8, &b) == 0 && kv_ctx_id(b) == id_b, "b by name");
	struct kv_ctx_info ia, ib;
	kv_ctx_info(a, &ia);
	kv_ctx_info(b, &ib);
	CHECK(ia.sealed && !ia.recovered && ia.tokens == 1008, "a: sealed, 1008 tokens (%llu)",
	      (unsigned long long)ia.tokens);
	CHECK(!ib.sealed && ib.recovered && ib.tokens == 544, "b: recovered at 544 tokens (%llu)",
	      (unsigned long long)ib.tokens);
	CHECK(kv_ctx_owner(a) == 1000 && kv_ctx_geometry(a)->head_dim == D, "a's owner and geometry");
	uint64_t bad_ranges = 0, bad_block = 0;
	CHECK(verify_ranges(a, 1008, 16, &bad_ranges, &bad_block) == 0 && bad_ranges == 0,
	      "a identical after restart, read 16 blocks at a time");
	CHECK(verify(a, 1008, &bad) == 0 && bad == 0, "a identical after restart");
	CHECK(verify(b, 544, &bad) == 0 && bad == 0, "b identical after restart");
	/* b goes on from its durable length */
	append_tokens(b, 547, 10, -ERANGE);
	append_tokens(b, 544, 40, 0);
	CHECK(verify(b, 584, &bad) == 0 && bad == 0, "b continued");
	struct kv_ctx *c2;
	CHECK(store_ctx_create(w.st, "third", 5, &g, 1, &c2) == 0 && kv_ctx_id(c2) > id_b, "ids never reused");
	CHECK(store_ctx_delete(w.st, c2) == 0, "delete");
	kv_ctx_put(c2);
	kv_ctx_put(a);
	kv_ctx_put(b);
	world_close(&w);

	/* flip one byte of one block of a on disk */
	char path[300];
	snprintf(path, sizeof(path), "%s/ctx-%016llx.blk", ssd_path, (unsigned long long)id_a);
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0, "open block file");
	uint8_t byte;
	off_t at = (off_t)slot * 5 + 100;
	CHECK(pread(fd, &byte, 1, at) == 1, "read byte");
	byte ^= 0x10;
	CHECK(pwrite(fd, &byte, 1, at) == 1, "flip byte");
	/* and a misdirected write: slot 9's bytes land in slot 10 too */
	uint8_t *copy = malloc(slot);
	CHECK(pread(fd, copy, slot, (off_t)slot * 9) == (ssize_t)slot &&
	      pwrite(fd, copy, slot, (off_t)slot * 10) == (ssize_t)slot, "copy slot 9 over 10");
	free(copy);
	close(fd);
	if (world_open(&w, 40ull * slot, 0))
		return;
	CHECK(store_ctx_find(w.st, id_a, NULL, 0, &a) == 0, "a after corruption");
	/* neighbours are read in one request, and a bad block in it is still found alone */
	CHECK(verify_ranges(a, 1008, 16, &bad_ranges, &bad_block) == 0 && bad_ranges == 2,
	      "read 16 blocks at a time, exactly the ranges with the flipped and the misdirected block fail (%llu)",
	      (unsigned long long)bad_ranges);
	CHECK(verify(a, 1008, &bad) == 0 && bad == 2, "exactly the flipped and the misdirected block fail (%llu)",
	      (unsigned long long)bad);
	store_stats(w.st, &ss);
	CHECK(ss.bad_blocks == 2, "bad_blocks %llu", (unsigned long long)ss.bad_blocks);
	kv_ctx_put(a);
	world_close(&w);
	/* the mark survives a restart: the block is refused without reading it again */
	if (world_open(&w, 40ull * slot, 0))
		return;
	CHECK(store_ctx_find(w.st, id_a, NULL, 0, &a) == 0, "a again");
	CHECK(verify(a, 1008, &bad) == 0 && bad == 2, "still two bad blocks");
	store_stats(w.st, &ss);
	CHECK(ss.misses > 0 && ss.bad_blocks == 0, "refused from the catalog mark, not a new read");
	kv_ctx_put(a);
	world_close(&w);

	/* a full SSD: ENOSPC, nothing changes, the rest still serves */
	struct ssd_stats sd;
	if (world_open(&w, 40ull * slot, 0))
		return;
	ssd_stats(w.ssd, &sd);
	uint64_t cap = sd.used_bytes + 6ull * slot;
	world_close(&w);
	if (world_open(&w, 40ull * slot, cap))
		return;
	CHECK(store_ctx_find(w.st, 0, "open-one", 8, &b) == 0, "b for ENOSPC");
	kv_ctx_info(b, &ib);
	uint64_t t = ib.tokens;              /* 576: back at its last full block */
	CHECK(t == 576, "b after the third restart: %llu", (unsigned long long)t);
	append_tokens(b, t, 16, 0);          /* 2 layers x 2 heads = 4 slots: fits */
	append_tokens(b, t + 16, 16, -ENOSPC);  /* 4 more do not */
	append_tokens(b, t + 16, 1, 0);      /* a partial block needs no slot yet */
	append_tokens(b, t + 17, 15, -ENOSPC);  /* but filling it does */
	kv_ctx_info(b, &ib);
	CHECK(ib.tokens == t + 17, "ENOSPC changed the length: %llu", (unsigned long long)ib.tokens);
	CHECK(verify(b, t + 17, &bad) == 0 && bad == 0, "b serves after ENOSPC");
	kv_ctx_put(b);
	world_close(&w);
}

/* Wait until the store has read @p want blocks ahead (the thread works on its own). */
static int wait_prefetched(struct store *st, uint64_t want)
{
	struct store_stats ss;
	for (int i = 0; i < 5000; i++) {
		store_stats(st, &ss);
		if (ss.prefetched >= want)
			return 1;
		usleep(1000);
	}
	return 0;
}

static void test_prefetch(void)
{
	struct kv_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = 2 * H, .head_dim = D,
				 .dtype = 2, .elem_size = 2 };
	const uint32_t slot = ssd_slot_bytes(2ull * B * D * 2);
	struct world w;
	if (world_open(&w, 40ull * slot, 0))
		return;
	struct kv_ctx *c;
	CHECK(store_ctx_create(w.st, "ahead", 5, &g, 1000, &c) == 0, "create");
	append_tokens(c, 0, 1008, 0);     /* 63 blocks per (layer, head) */
	uint64_t tokens, id = kv_ctx_id(c);
	CHECK(kv_ctx_seal(c, &tokens) == 0, "seal");
	kv_ctx_put(c);
	world_close(&w);

	/* a restarted store: nothing in RAM */
	if (world_open(&w, 40ull * slot, 0))
		return;
	CHECK(store_ctx_find(w.st, id, NULL, 0, &c) == 0, "find");
	static const uint64_t some[] = { 3, 4, 5, 10, 62 };
	struct store_stats s0, s1;
	struct ssd_stats d0, d1;
	store_stats(w.st, &s0);
	CHECK(kv_ctx_prefetch(c, 1, 1, some, 5) == 0, "prefetch queued");
	CHECK(wait_prefetched(w.st, s0.prefetched + 5), "5 blocks read ahead");
	ssd_stats(w.ssd, &d0);
	store_stats(w.st, &s0);
	kv_ctx_read_begin(c);
	const uint8_t *mem[64];
	uint64_t bad = 0;
	int wrong = 0;
	CHECK(kv_ctx_pin_list(c, 1, 1, some, 5, mem, &bad) == 0, "pin what was read ahead");
	const size_t row = D * 2;
	for (int i = 0; i < 5; i++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint64_t t = some[i] * B; t < (some[i] + 1) * B; t++)
				for (size_t x = 0; x < row; x++)
					wrong += mem[i][kv * B * row + (t - some[i] * B) * row + x] != pattern(1, kv, 1, t, x);
	kv_ctx_unpin_list(c, 1, 1, some, 5);
	kv_ctx_read_end(c);
	CHECK(wrong == 0, "blocks read ahead hold their data (%d bytes differ)", wrong);
	ssd_stats(w.ssd, &d1);
	store_stats(w.st, &s1);
	CHECK(d1.reads == d0.reads, "the pin read nothing (%llu reads)", (unsigned long long)(d1.reads - d0.reads));
	CHECK(s1.misses - s0.misses == 5 && s1.hits == s0.hits && s1.prefetch_used - s0.prefetch_used == 5,
	      "each counts the miss it saved: misses +%llu, hits +%llu, used +%llu",
	      (unsigned long long)(s1.misses - s0.misses), (unsigned long long)(s1.hits - s0.hits),
	      (unsigned long long)(s1.prefetch_used - s0.prefetch_used));
	/* the same blocks again: resident now, nothing to read or count */
	CHECK(kv_ctx_prefetch(c, 1, 1, some, 5) == 0, "prefetch of resident blocks");
	/* blocks past the layer's end are ignored; a bad layer or head is refused */
	static const uint64_t past[] = { 63, 1000 };
	CHECK(kv_ctx_prefetch(c, 0, 0, past, 2) == 0, "prefetch past the end queued");
	CHECK(kv_ctx_prefetch(c, L, 0, some, 1) == -EINVAL && kv_ctx_prefetch(c, 0, H, some, 1) == -EINVAL,
	      "prefetch of a layer or head the context lacks");

	/* a pin racing the read ahead of the same 30 blocks: none is read twice */
	uint64_t run[30];
	for (int i = 0; i < 30; i++)
		run[i] = 20 + i;
	store_stats(w.st, &s0);
	CHECK(kv_ctx_prefetch(c, 0, 1, run, 30) == 0, "prefetch 30");
	kv_ctx_read_begin(c);
	CHECK(kv_ctx_pin_list(c, 0, 1, run, 30, mem, &bad) == 0, "pin 30 at once");
	for (int i = 0; i < 30; i++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint64_t t = run[i] * B; t < (run[i] + 1) * B; t++)
				for (size_t x = 0; x < row; x++)
					wrong += mem[i][kv * B * row + (t - run[i] * B) * row + x] != pattern(0, kv, 1, t, x);
	kv_ctx_unpin_list(c, 0, 1, run, 30);
	kv_ctx_read_end(c);
	CHECK(wrong == 0, "raced blocks hold their data");
	/* let the hint finish (it may find every block read by the pin) */
	usleep(50000);
	store_stats(w.st, &s1);
	const uint64_t ahead = s1.prefetched - s0.prefetched, used = s1.prefetch_used - s0.prefetch_used;
	const uint64_t demand = s1.misses - s0.misses - used;
	CHECK(ahead + demand == 30 && s1.hits == s0.hits, "30 blocks read once: %llu ahead, %llu by the pin",
	      (unsigned long long)ahead, (unsigned long long)demand);
	/* RAM (40 blocks) taken by reads ahead: a pin waits for them to land, then evicts them */
	{
		uint64_t fill[40], other[30];
		for (int i = 0; i < 40; i++)
			fill[i] = 10 + (uint64_t)i;
		for (int i = 0; i < 30; i++)
			other[i] = (uint64_t)i;
		CHECK(kv_ctx_prefetch(c, 1, 0, fill, 40) == 0, "prefetch a budget's worth");
		kv_ctx_read_begin(c);
		int rc = kv_ctx_pin_list(c, 0, 0, other, 30, mem, &bad);
		CHECK(rc == 0, "a pin beside a budget of reads ahead: %d", rc);
		if (!rc)
			kv_ctx_unpin_list(c, 0, 0, other, 30);
		kv_ctx_read_end(c);
	}
	kv_ctx_put(c);
	world_close(&w);

	/* a bad block read ahead is refused by the pin that needs it */
	char path[300];
	snprintf(path, sizeof(path), "%s/ctx-%016llx.blk", ssd_path, (unsigned long long)id);
	int fd = open(path, O_RDWR);
	uint8_t byte;
	CHECK(fd >= 0 && pread(fd, &byte, 1, (off_t)slot * 7 + 9) == 1, "read a byte of slot 7");
	byte ^= 0x40;
	CHECK(pwrite(fd, &byte, 1, (off_t)slot * 7 + 9) == 1, "flip it");
	close(fd);
	if (world_open(&w, 40ull * slot, 0))
		return;
	CHECK(store_ctx_find(w.st, id, NULL, 0, &c) == 0, "find after the flip");
	uint64_t all[63];
	for (int i = 0; i < 63; i++)
		all[i] = (uint64_t)i;
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t h = 0; h < H; h++)
			CHECK(kv_ctx_prefetch(c, l, h, all, 30) == 0, "prefetch (%u, %u)", l, h);
	CHECK(verify(c, 1008, &bad) == 0 && bad == 1, "exactly the flipped block fails (%llu)",
	      (unsigned long long)bad);
	/* hints still queued when the store closes are dropped with their references */
	for (int i = 0; i < 8; i++)
		kv_ctx_prefetch(c, (uint32_t)i % L, (uint32_t)(i / L) % H, all, 63);
	kv_ctx_put(c);
	world_close(&w);
}

/*
 * KV_APPEND_STREAM: whole blocks go from the request to SSD without taking
 * host memory, read back identical (also after a restart); a request the
 * stream path cannot take (misaligned bytes, a partial block) is served the
 * usual way, into RAM.
 */
static void test_stream(void)
{
	D = 128;     /* 8 KiB blocks: keys and values 4 KiB each, O_DIRECT-able in place */
	snprintf(ssd_path, sizeof(ssd_path), "%s/ssd-stream", dir);
	snprintf(cat_dir, sizeof(cat_dir), "%s/catalog-stream", dir);
	mkdir(ssd_path, 0700);
	struct kv_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = 2 * H, .head_dim = D,
				 .dtype = 2, .elem_size = 2 };
	const uint32_t slot = ssd_slot_bytes(2ull * B * D * 2);
	struct world w;
	if (world_open(&w, 64ull * slot, 0))
		return;
	struct kv_ctx *c;
	CHECK(store_ctx_create(w.st, "streamed", 8, &g, 1000, &c) == 0, "create");
	/* 4 x 64 tokens: 16 blocks of each of 4 (layer, head), as many as the RAM budget holds */
	for (uint64_t t = 0; t < 256; t += 64)
		append_one_ex(c, t, 64, 0, KV_APPEND_STREAM, 0);
	struct tier_stats ts;
	tier_host_ops.stats(w.host, &ts);
	CHECK(ts.used_bytes == 0, "streamed blocks took %llu bytes of RAM", (unsigned long long)ts.used_bytes);
	struct ssd_stats sd;
	ssd_stats(w.ssd, &sd);
	CHECK(sd.write_bytes == 4ull * 4 * L * H * slot, "SSD wrote %llu bytes", (unsigned long long)sd.write_bytes);
	/* misaligned: into RAM */
	append_one_ex(c, 256, 32, 0, KV_APPEND_STREAM, 64);
	tier_host_ops.stats(w.host, &ts);
	CHECK(ts.used_bytes == 2ull * L * H * slot, "a misaligned request should go through RAM: %llu bytes",
	      (unsigned long long)ts.used_bytes);
	/* a partial block: into RAM, then a streamed request that starts mid-block falls back too */
	append_one_ex(c, 288, 8, 0, KV_APPEND_STREAM, 0);
	append_one_ex(c, 296, 24, 0, KV_APPEND_STREAM, 0);
	uint64_t bad;
	CHECK(verify(c, 320, &bad) == 0 && bad == 0, "streamed context reads back");
	uint64_t id = kv_ctx_id(c);
	kv_ctx_put(c);
	world_close(&w);
	if (world_open(&w, 64ull * slot, 0))
		return;
	CHECK(store_ctx_find(w.st, id, NULL, 0, &c) == 0, "after restart");
	struct kv_ctx_info ci;
	kv_ctx_info(c, &ci);
	CHECK(ci.tokens == 320, "tokens after restart %llu", (unsigned long long)ci.tokens);
	CHECK(verify(c, 320, &bad) == 0 && bad == 0, "streamed context identical after restart");
	kv_ctx_put(c);
	world_close(&w);
}

/* How many tokens a context has after a crash: opened in a child that dies
 * without closing anything, after @p steps of 64-token appends (flags each). */
static uint64_t tokens_after_crash(uint64_t slot, const unsigned *flags, unsigned steps)
{
	pid_t pid = fork();
	if (pid == 0) {
		struct world w;
		if (world_open(&w, 64ull * slot, 0))
			_exit(2);
		struct kv_ctx *c;
		if (store_ctx_create(w.st, "crashing", 8, &(struct kv_geometry){ .n_layers = L, .n_kv_heads = H,
			.n_q_heads = 2 * H, .head_dim = D, .dtype = 2, .elem_size = 2 }, 1000, &c))
			_exit(3);
		for (unsigned i = 0; i < steps; i++)
			append_one_ex(c, 64ull * i, 64, 0, flags[i], 0);
		_exit(check_exit());   /* a crash: no sync point on the way out */
	}
	int st = 0;
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the crashing child failed: status %d", st);
	struct world w;
	uint64_t t = UINT64_MAX;
	if (world_open(&w, 64ull * slot, 0))
		return t;
	struct kv_ctx *c;
	if (store_ctx_find(w.st, 0, "crashing", 8, &c) == 0) {
		struct kv_ctx_info ci;
		kv_ctx_info(c, &ci);
		t = ci.tokens;
		uint64_t bad;
		CHECK(verify(c, t, &bad) == 0 && bad == 0, "what survived the crash reads back");
		/* the slots of the blocks lost are free again: appending over them reads back */
		append_one_ex(c, t, 128, 0, KV_APPEND_STREAM | KV_APPEND_SYNC, 0);
		CHECK(verify(c, t + 128, &bad) == 0 && bad == 0, "appended after the crash reads back");
		CHECK(store_ctx_delete(w.st, c) == 0, "delete");
		kv_ctx_put(c);
	}
	world_close(&w);
	return t;
}

/*
 * Sync points: a STREAM append is written at its return and named by the
 * catalog only at the next sync point (KV_APPEND_SYNC, an append without
 * STREAM, stream_sync_bytes streamed, SEAL, a clean close); a crash before
 * it loses the streamed blocks and nothing else.
 */
static void test_sync_points(void)
{
	const uint32_t slot = ssd_slot_bytes(2ull * B * D * 2);
	const uint64_t per_append = 64ull / B * L * H * slot;   /* bytes of one 64-token append */
	const unsigned S = KV_APPEND_STREAM, SS = KV_APPEND_STREAM | KV_APPEND_SYNC;
	stream_sync = 1ull << 40;
	CHECK(tokens_after_crash(slot, (const unsigned[]){ S, S, S }, 3) == 0, "nothing named: 0 tokens");
	CHECK(tokens_after_crash(slot, (const unsigned[]){ S, SS, S, S }, 4) == 128, "SYNC names what came before");
	CHECK(tokens_after_crash(slot, (const unsigned[]){ S, S, 0, S }, 4) == 192, "an append without STREAM syncs");
	stream_sync = 2 * per_append;
	CHECK(tokens_after_crash(slot, (const unsigned[]){ S, S, S, S, S }, 5) == 256,
	      "every 2 appends' bytes a sync point");
	stream_sync = 0;
	CHECK(tokens_after_crash(slot, (const unsigned[]){ S, S, S }, 3) == 192, "stream_sync 0: every append");
	/* a clean close and SEAL are sync points */
	stream_sync = 1ull << 40;
	struct world w;
	if (world_open(&w, 64ull * slot, 0))
		return;
	struct kv_ctx *a, *b;
	struct kv_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = 2 * H, .head_dim = D, .dtype = 2,
				 .elem_size = 2 };
	CHECK(store_ctx_create(w.st, "closed", 6, &g, 1000, &a) == 0 && store_ctx_create(w.st, "sealed", 6, &g, 1000, &b) == 0,
	      "create");
	append_one_ex(a, 0, 64, 0, S, 0);
	append_one_ex(b, 0, 64, 0, S, 0);
	append_one_ex(b, 64, 64, 0, S, 0);
	uint64_t t;
	CHECK(kv_ctx_seal(b, &t) == 0 && t == 128, "seal");
	kv_ctx_put(a);
	kv_ctx_put(b);
	world_close(&w);
	if (world_open(&w, 64ull * slot, 0))
		return;
	struct kv_ctx_info ci;
	uint64_t bad;
	CHECK(store_ctx_find(w.st, 0, "closed", 6, &a) == 0, "closed after restart");
	kv_ctx_info(a, &ci);
	CHECK(ci.tokens == 64 && verify(a, 64, &bad) == 0 && bad == 0, "closed cleanly: %llu tokens",
	      (unsigned long long)ci.tokens);
	CHECK(store_ctx_find(w.st, 0, "sealed", 6, &b) == 0, "sealed after restart");
	kv_ctx_info(b, &ci);
	CHECK(ci.sealed && ci.tokens == 128 && verify(b, 128, &bad) == 0 && bad == 0, "sealed: %llu tokens",
	      (unsigned long long)ci.tokens);
	kv_ctx_put(a);
	kv_ctx_put(b);
	world_close(&w);
	stream_sync = 0;
}

static void count_one(struct kv_ctx *c, void *arg)
{
	(void)c;
	(*(unsigned *)arg)++;
}

/* Layer @p layer of a one-head context: @p n tokens of the pattern, as a copy would be written. */
static int append_layer(struct kv_ctx *c, uint32_t layer, uint32_t n, unsigned flags)
{
	const size_t row = D * 2, len = 2 * (size_t)n * row;
	uint8_t *buf = NULL;
	if (posix_memalign((void **)&buf, SSD_ALIGN, len))
		abort();
	for (uint32_t kv = 0; kv < 2; kv++)
		for (uint32_t t = 0; t < n; t++)
			for (size_t b = 0; b < row; b++)
				buf[((size_t)kv * n + t) * row + b] = pattern(layer, kv, 9, t, b);
	uint64_t lt, ct;
	const char *why;
	int rc = kv_ctx_append_ex(c, layer, 1, 0, n, buf, len, flags, &lt, &ct, &why);
	free(buf);
	return rc;
}

static int layer_matches(struct kv_ctx *c, uint32_t layer, uint32_t n)
{
	const size_t row = D * 2;
	int ok = 1;
	kv_ctx_read_begin(c);
	ok &= kv_ctx_layer_tokens(c, layer) == n;
	for (uint64_t b = 0; ok && b * B < n; b++) {
		const uint8_t *m;
		uint64_t bad;
		if (kv_ctx_pin(c, layer, 0, b, 1, &m, &bad)) {
			ok = 0;
			break;
		}
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t t = 0; t < B && b * B + t < n; t++)
				for (size_t x = 0; x < row; x++)
					ok &= m[((size_t)kv * B + t) * row + x] == pattern(layer, kv, 9, b * B + t, x);
		kv_ctx_unpin(c, layer, 0, b, 1);
	}
	kv_ctx_read_end(c);
	return ok;
}

/*
 * Derived contexts (retrieval's copies): hidden from lookups, LIST and the
 * count, a namespace of their parent's own, back after a restart, deleted
 * with the parent, and deleted at start when a crash left them without one.
 */
static void test_derived(void)
{
	struct kv_geometry g = { .n_layers = L, .n_kv_heads = H, .n_q_heads = 2 * H, .head_dim = D,
				 .dtype = 2, .elem_size = 2 };
	struct kv_geometry dg = g;
	dg.n_layers = 3;
	dg.n_kv_heads = 1;
	const uint32_t slot = ssd_slot_bytes(2ull * B * D * 2);
	struct world w;
	if (world_open(&w, 400ull * slot, 0))
		return;
	struct kv_ctx *p, *d, *d2, *x;
	uint64_t tokens;
	CHECK(store_ctx_create(w.st, "parent", 6, &g, 1234, &p) == 0, "create");
	append_tokens(p, 0, 100, 0);
	CHECK(kv_ctx_seal(p, &tokens) == 0, "seal");
	CHECK(kv_ctx_derived(p, "rows.x", &dg, false, &d) == -ENOENT, "found before it was made");
	CHECK(kv_ctx_derived(p, "", &dg, true, &d) == -EINVAL, "an empty tag");
	CHECK(kv_ctx_derived(p, "rows.x", &dg, true, &d) == 0, "derive");
	const uint64_t pid = kv_ctx_id(p), did = kv_ctx_id(d);
	CHECK(kv_ctx_owner(d) == 1234, "owned by %u", kv_ctx_owner(d));
	CHECK(append_layer(d, 1, 5 * B, KV_APPEND_STREAM | KV_APPEND_SYNC) == 0 && append_layer(d, 2, 3 * B, 0) == 0,
	      "append to the copy");
	CHECK(layer_matches(d, 1, 5 * B) && layer_matches(d, 2, 3 * B), "the copy reads back");
	CHECK(kv_ctx_derived(p, "rows.x", &dg, true, &d2) == 0 && d2 == d, "derive again finds it");
	kv_ctx_put(d2);
	dg.head_dim = D * 2;
	CHECK(kv_ctx_derived(p, "rows.x", &dg, true, &d2) == -EEXIST, "another geometry");
	dg.head_dim = D;
	CHECK(kv_ctx_derived(d, "rows.y", &dg, true, &d2) == -EINVAL, "derived from a derived context");
	/* hidden */
	unsigned seen = 0;
	store_foreach(w.st, count_one, &seen);
	CHECK(store_ctx_find(w.st, did, NULL, 0, &x) == -ENOENT && store_ctx_find(w.st, 0, "rows.x", 6, &x) == -ENOENT,
	      "a client finds the copy");
	CHECK(store_count(w.st) == 1 && seen == 1, "count %u, listed %u", store_count(w.st), seen);
	/* a client's context of the same name is another */
	CHECK(store_ctx_create(w.st, "rows.x", 6, &g, 1, &x) == 0, "a client's rows.x");
	CHECK(store_ctx_delete(w.st, x) == 0, "delete the client's");
	kv_ctx_put(x);
	kv_ctx_put(d);
	kv_ctx_put(p);
	world_close(&w);

	/* after a restart: found again through the parent, the rows intact */
	if (world_open(&w, 400ull * slot, 0))
		return;
	struct store_stats ss;
	store_stats(w.st, &ss);
	CHECK(ss.recovered_contexts == 1, "%llu recovered", (unsigned long long)ss.recovered_contexts);
	CHECK(store_count(w.st) == 1 && store_ctx_find(w.st, did, NULL, 0, &x) == -ENOENT, "hidden after a restart");
	CHECK(store_ctx_find(w.st, pid, NULL, 0, &p) == 0, "parent");
	CHECK(kv_ctx_derived(p, "rows.x", &dg, false, &d) == 0 && kv_ctx_id(d) == did, "the copy after a restart");
	CHECK(layer_matches(d, 1, 5 * B) && layer_matches(d, 2, 3 * B), "the copy reads back after a restart");
	kv_ctx_put(d);
	struct ssd_stats before, after;
	ssd_stats(w.ssd, &before);
	CHECK(store_ctx_delete(w.st, p) == 0, "delete the parent");
	ssd_stats(w.ssd, &after);
	CHECK(before.used_bytes - after.used_bytes == (uint64_t)(2 * 7 * 2 + 8) * slot,
	      "the parent's and the copy's slots: %llu bytes freed", (unsigned long long)(before.used_bytes - after.used_bytes));
	CHECK(kv_ctx_derived(p, "rows.x", &dg, true, &d) == -ENOENT, "derived from a deleted context");
	kv_ctx_put(p);

	/* a crash between the parent's delete and the copy's: the copy goes at start */
	CHECK(store_ctx_create(w.st, "parent2", 7, &g, 1234, &p) == 0, "create 2");
	append_tokens(p, 0, 40, 0);
	CHECK(kv_ctx_seal(p, &tokens) == 0, "seal 2");
	CHECK(kv_ctx_derived(p, "rows.x", &dg, true, &d) == 0 && append_layer(d, 0, 2 * B, 0) == 0, "derive 2");
	const uint64_t pid2 = kv_ctx_id(p);
	kv_ctx_put(d);
	kv_ctx_put(p);
	world_close(&w);
	struct catalog *cat;
	struct catalog_txn *t;
	CHECK(catalog_open(cat_dir, &cat) == 0 && catalog_begin(cat, &t) == 0 && catalog_del_ctx(t, pid2) == 0 &&
	      catalog_commit(t) == 0, "the parent's record alone deleted");
	catalog_close(cat);
	if (world_open(&w, 400ull * slot, 0))
		return;
	ssd_stats(w.ssd, &after);
	CHECK(store_count(w.st) == 0 && after.used_bytes == 0, "an orphaned copy kept: %u contexts, %llu bytes",
	      store_count(w.st), (unsigned long long)after.used_bytes);
	world_close(&w);
	if (world_open(&w, 400ull * slot, 0))
		return;
	store_stats(w.st, &ss);
	CHECK(ss.recovered_contexts == 0, "the orphan came back: %llu", (unsigned long long)ss.recovered_contexts);
	world_close(&w);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "%s/mnemo-ssd-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp");
	if (!mkdtemp(dir))
		return 1;
	snprintf(ssd_path, sizeof(ssd_path), "%s/ssd", dir);
	snprintf(cat_dir, sizeof(cat_dir), "%s/catalog", dir);
	mkdir(ssd_path, 0700);
	struct ssd *probe;
	int rc = ssd_open(ssd_path, 0, &probe);
	if (rc == -EINVAL) {
		printf("%s refuses O_DIRECT: skipped\n", dir);
		return 77;
	}
	if (!rc)
		ssd_close(probe);
	test_slots();
	test_records();
	test_store();
	/* again, on fresh folders, with blocks that fill their slots */
	D = 64;
	snprintf(ssd_path, sizeof(ssd_path), "%s/ssd64", dir);
	snprintf(cat_dir, sizeof(cat_dir), "%s/catalog64", dir);
	mkdir(ssd_path, 0700);
	test_store();
	test_stream();
	test_sync_points();
	test_prefetch();
	/* derived contexts need side files for their link */
	static char side[200];
	snprintf(side, sizeof(side), "%s/side", dir);
	snprintf(ssd_path, sizeof(ssd_path), "%s/ssd-derived", dir);
	snprintf(cat_dir, sizeof(cat_dir), "%s/catalog-derived", dir);
	mkdir(ssd_path, 0700);
	mkdir(side, 0700);
	side_dir = side;
	test_derived();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_exit();
}
