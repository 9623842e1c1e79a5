/*
 * Tiers: where the bytes of a block live. One ops table per tier (host RAM
 * now; SSD and GPU plug in beside it). A tier hands out block memory under a
 * byte budget and counts what it does.
 *
 * Glossary
 *   block   B consecutive tokens of one (context, layer, kv_head): keys
 *           [B][d] then values [B][d], in the context's dtype.
 *   budget  the most bytes a tier may hold; an allocation past it fails
 *           with -ENOMEM and changes nothing.
 */
#ifndef MNEMO_TIERS_TIER_H
#define MNEMO_TIERS_TIER_H

#include <stddef.h>
#include <stdint.h>

struct tier;

struct tier_config {
	uint64_t budget_bytes;
	uint32_t align;           /* block alignment: 4096 when blocks go to SSD (O_DIRECT); 0 = 64 */
};

struct tier_stats {
	uint64_t budget_bytes;
	uint64_t used_bytes;
	uint64_t blocks;
	uint64_t allocs;
	uint64_t alloc_failures;   /* refused for the budget or by the OS */
	uint64_t frees;
	uint64_t mapped_bytes;     /* slab regions mapped, spares included (RSS-to-be) */
	uint64_t spare_bytes;      /* of which empty spares ready for the next blocks */
};

#define TIER_OPS_VERSION 1

/**
 * A tier's methods. Optional ones may be NULL; callers then get -ENOTSUP.
 * Every method may be called from any thread.
 */
struct tier_ops {
	uint32_t version;
	const char *name;
	int (*open)(const struct tier_config *cfg, struct tier **out);
	void (*close)(struct tier *t);
	/** Block memory of @p bytes at the configured alignment; -ENOMEM past the budget. */
	int (*block_alloc)(struct tier *t, size_t bytes, void **out);
	void (*block_free)(struct tier *t, void *p, size_t bytes);
	void (*stats)(struct tier *t, struct tier_stats *out);
	/**
	 * Blocks of @p bytes will be asked for: get memory for them ready in
	 * the background (host: a populated spare region), so the first ones
	 * do not wait for the kernel to clear fresh pages. Optional.
	 */
	void (*prepare)(struct tier *t, size_t bytes);
};

extern const struct tier_ops tier_host_ops;

/** A share of physical RAM suited as the default host budget. */
uint64_t tier_host_default_budget(void);

#endif
