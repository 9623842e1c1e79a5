/*
 * The host tier's contract, against a model of it kept in the test: every
 * live block is aligned, writable over its whole size and disjoint from every
 * other live block (each carries its own pattern, checked before it is
 * freed); the budget refuses exactly when used + bytes would pass it; used,
 * blocks and frees agree with the model; freed blocks are reused before new
 * memory is mapped; a class that empties keeps at most one spare region, so
 * freeing everything gives the memory back; sizes past the slab's and a
 * seventeenth size still work. A tier large enough keeps each announced
 * class's spare populated ahead of need: its blocks are resident (mincore)
 * before anything writes them.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "tier.h"

#define REGION (32ull << 20)

struct live {
	uint8_t *p;
	size_t bytes;
	uint8_t tag;
};

static void paint(struct live *b)
{
	memset(b->p, b->tag, b->bytes);
}

static bool intact(const struct live *b)
{
	for (size_t i = 0; i < b->bytes; i += 509)
		if (b->p[i] != b->tag)
			return false;
	return b->p[b->bytes - 1] == b->tag;
}

static void randomized(uint64_t *seed)
{
	const size_t sizes[] = { 20480, 36864, 4096, 12288 };
	const uint64_t budget = 48ull << 20;
	struct tier_config tc = { .budget_bytes = budget, .align = 4096 };
	struct tier *t;
	CHECK(tier_host_ops.open(&tc, &t) == 0, "open");
	enum { CAP = 8192 };
	static struct live live[CAP];
	size_t n = 0;
	uint64_t used = 0, allocs = 0, frees = 0;
	unsigned refused = 0, bad = 0;
	uint64_t class_used[4] = { 0 }, class_peak[4] = { 0 };
	for (int step = 0; step < 40000; step++) {
		const bool do_alloc = n == 0 || (n < CAP && check_rand(seed) % 100 < 55);
		if (do_alloc) {
			const unsigned ci = (unsigned)(check_rand(seed) % 4);
			size_t bytes = sizes[ci];
			void *p = NULL;
			int rc = tier_host_ops.block_alloc(t, bytes, &p);
			if (used + bytes > budget) {
				refused += rc == -ENOMEM;
				CHECK(rc == -ENOMEM, "allocation past the budget accepted (used %llu + %zu)",
				      (unsigned long long)used, bytes);
				continue;
			}
			CHECK(rc == 0 && p, "allocation under the budget refused: %d", rc);
			if (rc)
				continue;
			CHECK(((uintptr_t)p & 4095) == 0, "block %p not 4 KiB aligned", p);
			live[n] = (struct live){ p, bytes, (uint8_t)(1 + step % 251) };
			paint(&live[n]);
			n++;
			used += bytes;
			class_used[ci] += bytes;
			if (class_used[ci] > class_peak[ci])
				class_peak[ci] = class_used[ci];
			allocs++;
		} else {
			size_t i = check_rand(seed) % n;
			bad += !intact(&live[i]);
			tier_host_ops.block_free(t, live[i].p, live[i].bytes);
			used -= live[i].bytes;
			for (unsigned c = 0; c < 4; c++)
				if (sizes[c] == live[i].bytes)
					class_used[c] -= live[i].bytes;
			frees++;
			live[i] = live[--n];
		}
	}
	CHECK(bad == 0, "%u blocks overwritten by others", bad);
	CHECK(refused > 0, "the run never reached the budget: it tests nothing of it");
	struct tier_stats ts;
	tier_host_ops.stats(t, &ts);
	CHECK(ts.used_bytes == used && ts.blocks == n && ts.allocs == allocs && ts.frees == frees,
	      "stats used %llu blocks %llu allocs %llu frees %llu, model %llu %zu %llu %llu",
	      (unsigned long long)ts.used_bytes, (unsigned long long)ts.blocks, (unsigned long long)ts.allocs,
	      (unsigned long long)ts.frees, (unsigned long long)used, n, (unsigned long long)allocs,
	      (unsigned long long)frees);
	/* a class maps a region only when none of its regions has room: it
	 * never holds more than its peak in blocks, plus a partly filled
	 * region and a spare */
	uint64_t bound = 0;
	for (unsigned c = 0; c < 4; c++)
		bound += class_peak[c] * REGION / (REGION - 4096 - sizes[c]) + 2 * REGION;
	CHECK(ts.mapped_bytes <= bound, "mapped %llu, bound %llu", (unsigned long long)ts.mapped_bytes,
	      (unsigned long long)bound);
	for (size_t i = 0; i < n; i++) {
		bad += !intact(&live[i]);
		tier_host_ops.block_free(t, live[i].p, live[i].bytes);
	}
	CHECK(bad == 0, "%u blocks overwritten by others", bad);
	tier_host_ops.stats(t, &ts);
	CHECK(ts.used_bytes == 0 && ts.blocks == 0, "left %llu bytes", (unsigned long long)ts.used_bytes);
	CHECK(ts.mapped_bytes <= 4 * REGION, "after freeing everything %llu bytes stay mapped (one spare per class)",
	      (unsigned long long)ts.mapped_bytes);
	tier_host_ops.close(t);
}

/* A freed block is handed out again before the tier maps more memory. */
static void reuse(void)
{
	/* under eight regions: no warmer, so what is mapped is what blocks took */
	struct tier_config tc = { .budget_bytes = 200ull << 20, .align = 4096 };
	struct tier *t;
	CHECK(tier_host_ops.open(&tc, &t) == 0, "open");
	enum { N = 3000 };  /* 3000 x 20 KiB: two regions */
	static void *p[N];
	for (int i = 0; i < N; i++)
		CHECK(tier_host_ops.block_alloc(t, 20480, &p[i]) == 0, "alloc %d", i);
	struct tier_stats before, after;
	tier_host_ops.stats(t, &before);
	CHECK(before.mapped_bytes == 2 * REGION, "3000 blocks of 20 KiB mapped %llu bytes",
	      (unsigned long long)before.mapped_bytes);
	for (int i = 0; i < N; i += 2)
		tier_host_ops.block_free(t, p[i], 20480);
	for (int i = 0; i < N; i += 2)
		CHECK(tier_host_ops.block_alloc(t, 20480, &p[i]) == 0, "realloc %d", i);
	tier_host_ops.stats(t, &after);
	CHECK(after.mapped_bytes == before.mapped_bytes, "reallocating freed blocks mapped more: %llu -> %llu",
	      (unsigned long long)before.mapped_bytes, (unsigned long long)after.mapped_bytes);
	/* every block distinct */
	int dup = 0;
	for (int i = 0; i < N; i++)
		memset(p[i], (uint8_t)i, 64);
	for (int i = 0; i < N; i++)
		dup += *(uint8_t *)p[i] != (uint8_t)i;
	CHECK(dup == 0, "%d blocks handed out twice", dup);
	for (int i = 0; i < N; i++)
		tier_host_ops.block_free(t, p[i], 20480);
	tier_host_ops.stats(t, &after);
	CHECK(after.mapped_bytes == REGION, "one spare region should stay, %llu bytes mapped",
	      (unsigned long long)after.mapped_bytes);
	tier_host_ops.close(t);
}

/* Sizes the slab does not take: too large, and a seventeenth size. */
static void outside_slab(void)
{
	struct tier_config tc = { .budget_bytes = 1ull << 30, .align = 64 };
	struct tier *t;
	CHECK(tier_host_ops.open(&tc, &t) == 0, "open");
	void *p[18];
	size_t sz[18];
	for (int i = 0; i < 17; i++) {
		sz[i] = 1000 + 64 * (size_t)i;
		CHECK(tier_host_ops.block_alloc(t, sz[i], &p[i]) == 0, "size %zu", sz[i]);
		CHECK(((uintptr_t)p[i] & 63) == 0, "size %zu not 64-aligned", sz[i]);
		memset(p[i], i, sz[i]);
	}
	sz[17] = 40u << 20;
	CHECK(tier_host_ops.block_alloc(t, sz[17], &p[17]) == 0, "a 40 MiB block");
	memset(p[17], 17, sz[17]);
	int bad = 0;
	for (int i = 0; i < 18; i++) {
		bad += ((uint8_t *)p[i])[sz[i] - 1] != i;
		tier_host_ops.block_free(t, p[i], sz[i]);
	}
	CHECK(bad == 0, "%d blocks overwritten", bad);
	void *z;
	CHECK(tier_host_ops.block_alloc(t, 0, &z) == -EINVAL, "a block of 0 bytes");
	struct tier_stats ts;
	tier_host_ops.stats(t, &ts);
	CHECK(ts.used_bytes == 0 && ts.blocks == 0, "left %llu bytes", (unsigned long long)ts.used_bytes);
	tier_host_ops.close(t);
	struct tier_config odd = { .budget_bytes = 1, .align = 48 };
	CHECK(tier_host_ops.open(&odd, &t) == -EINVAL, "an alignment that is not a power of two");
}

static uint64_t mapped(struct tier *t)
{
	struct tier_stats ts;
	tier_host_ops.stats(t, &ts);
	return ts.mapped_bytes;
}

static uint64_t spare(struct tier *t)
{
	struct tier_stats ts;
	tier_host_ops.stats(t, &ts);
	return ts.spare_bytes;
}

/* Poll until @p t maps @p want bytes, @p want_spare of them a ready spare, for up to 10 s. */
static bool wait_mapped(struct tier *t, uint64_t want, uint64_t want_spare)
{
	for (int i = 0; i < 1000 && (mapped(t) != want || spare(t) != want_spare); i++)
		nanosleep(&(struct timespec){ .tv_nsec = 10000000 }, NULL);
	return mapped(t) == want && spare(t) == want_spare;
}

static bool resident(const void *p)
{
	unsigned char v = 0;
	const long pg = sysconf(_SC_PAGESIZE);
	void *page = (void *)((uintptr_t)p & ~(uintptr_t)(pg - 1));
	return mincore(page, (size_t)pg, &v) == 0 && (v & 1);
}

/* prepare(): the class's spare is mapped and faulted in before any block is asked for, and again once taken. */
static void warm_spare(void)
{
	struct tier_config tc = { .budget_bytes = 1ull << 30, .align = 4096 };
	struct tier *t;
	CHECK(tier_host_ops.open(&tc, &t) == 0, "open");
	CHECK(tier_host_ops.prepare != NULL, "the host tier prepares");
	CHECK(mapped(t) == 0, "a new tier maps nothing");
	tier_host_ops.prepare(t, 20480);
	CHECK(wait_mapped(t, REGION, REGION), "prepare() mapped no spare: %llu bytes", (unsigned long long)mapped(t));
	void *p, *q;
	CHECK(tier_host_ops.block_alloc(t, 20480, &p) == 0, "alloc");
	/* the region's last page: nothing but the warmer touched it (its header's huge page may hold the first block) */
	const uint8_t *last = (const uint8_t *)((uintptr_t)p & ~(uintptr_t)(REGION - 1)) + REGION - 4096;
	CHECK(resident(p) && resident(last), "a warmed spare is not resident");
	/* the spare was taken: the next one is warmed */
	CHECK(wait_mapped(t, 2 * REGION, REGION), "no new spare after the first was taken: %llu bytes",
	      (unsigned long long)mapped(t));
	memset(p, 7, 20480);
	CHECK(tier_host_ops.block_alloc(t, 20480, &q) == 0 && resident(q), "a second block");
	tier_host_ops.block_free(t, q, 20480);
	tier_host_ops.block_free(t, p, 20480);
	/* one of the emptied region and the warmed spare is unmapped (which one
	 * depends on whether the warmer had published its spare yet) */
	CHECK(wait_mapped(t, REGION, REGION), "after freeing both blocks %llu bytes mapped", (unsigned long long)mapped(t));
	tier_host_ops.close(t);

	/* a small tier does not warm */
	struct tier_config small = { .budget_bytes = 64ull << 20, .align = 4096 };
	CHECK(tier_host_ops.open(&small, &t) == 0, "open small");
	tier_host_ops.prepare(t, 20480);
	nanosleep(&(struct timespec){ .tv_nsec = 200000000 }, NULL);
	CHECK(mapped(t) == 0, "a 64 MiB tier warmed a 32 MiB spare");
	tier_host_ops.close(t);

	/* closing while the warmer works */
	CHECK(tier_host_ops.open(&tc, &t) == 0, "open");
	tier_host_ops.prepare(t, 20480);
	tier_host_ops.prepare(t, 36864);
	tier_host_ops.close(t);
}

int main(void)
{
	uint64_t seed = check_seed();
	randomized(&seed);
	reuse();
	outside_slab();
	warm_spare();
	return check_exit();
}
