/* Host-RAM tier: 64-byte aligned block memory under a byte budget. */
#define _GNU_SOURCE
#include "tier.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tier {
	uint64_t budget;
	size_t align;
	_Atomic uint64_t used;
	_Atomic uint64_t blocks, allocs, failures, frees;
};

static int host_open(const struct tier_config *cfg, struct tier **out)
{
	struct tier *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->budget = cfg->budget_bytes;
	t->align = cfg->align ? cfg->align : 64;
	if (t->align & (t->align - 1) || t->align < sizeof(void *)) {
		free(t);
		return -EINVAL;
	}
	*out = t;
	return 0;
}

static void host_close(struct tier *t)
{
	free(t);
}

static int host_alloc(struct tier *t, size_t bytes, void **out)
{
	/* Reserve first, then allocate: concurrent appends never overshoot. */
	uint64_t cur = atomic_load(&t->used);
	do {
		if (bytes > t->budget || cur > t->budget - bytes) {
			atomic_fetch_add(&t->failures, 1);
			return -ENOMEM;
		}
	} while (!atomic_compare_exchange_weak(&t->used, &cur, cur + bytes));
	void *p = NULL;
	/* page alignment only when blocks go to and from SSD with O_DIRECT:
	 * it costs the allocator padding and fragmentation */
	if (posix_memalign(&p, t->align, bytes)) {
		atomic_fetch_sub(&t->used, bytes);
		atomic_fetch_add(&t->failures, 1);
		return -ENOMEM;
	}
	atomic_fetch_add(&t->blocks, 1);
	atomic_fetch_add(&t->allocs, 1);
	*out = p;
	return 0;
}

static void host_free(struct tier *t, void *p, size_t bytes)
{
	if (!p)
		return;
	free(p);
	atomic_fetch_sub(&t->used, bytes);
	atomic_fetch_sub(&t->blocks, 1);
	atomic_fetch_add(&t->frees, 1);
}

static void host_stats(struct tier *t, struct tier_stats *s)
{
	s->budget_bytes = t->budget;
	s->used_bytes = atomic_load(&t->used);
	s->blocks = atomic_load(&t->blocks);
	s->allocs = atomic_load(&t->allocs);
	s->alloc_failures = atomic_load(&t->failures);
	s->frees = atomic_load(&t->frees);
}

const struct tier_ops tier_host_ops = {
	.version = TIER_OPS_VERSION,
	.name = "host",
	.open = host_open,
	.close = host_close,
	.block_alloc = host_alloc,
	.block_free = host_free,
	.stats = host_stats,
};

uint64_t tier_host_default_budget(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || psz <= 0)
		return 1ull << 30;
	/* Half of RAM leaves room for the OS, the page cache and the clients. */
	return (uint64_t)pages * (uint64_t)psz / 2;
}
