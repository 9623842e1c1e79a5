/*
 * Host-RAM tier: block memory under a byte budget, carved from huge-page
 * regions.
 *
 * Glossary
 *   class    the blocks of one size (a context's slot size); each class has
 *            its own regions.
 *   region   REGION_BYTES of anonymous memory aligned to REGION_BYTES and
 *            advised MADV_HUGEPAGE; its first page holds the region's header,
 *            blocks follow at a stride of the class's size rounded up to the
 *            tier's alignment.
 *
 * Why not malloc: a block is written once right after it is allocated (an
 * APPEND's copy, a read from SSD), so every new block is first-touch memory.
 * On 4 KiB pages first touch runs at under 1 GB/s on these VMs (a fault and
 * a page clear per 4 KiB, and the hypervisor behind it), against about
 * 7 GB/s on 2 MiB pages; a preload spent more time faulting its blocks in
 * than writing them to SSD. Freed blocks go back to their region's free
 * list and are reused as they are; a region that empties is unmapped, except
 * one spare per class, so dropping a context gives its memory back.
 *
 * Blocks larger than an eighth of a region, and blocks of a seventeenth
 * size, come from posix_memalign.
 */
#define _GNU_SOURCE
#include "tier.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define REGION_BYTES (32ull << 20)
#define HEADER_BYTES 4096u
#define MAX_CLASSES 16

struct region;

struct size_class {
	size_t bytes;              /* what callers ask for */
	size_t stride;             /* bytes rounded up to the tier's alignment */
	uint32_t per_region;
	struct region *partial;    /* regions with a free block, doubly linked */
	struct region *spare;      /* one empty region kept for the next burst */
};

/* Lives in the region's first page. */
struct region {
	uint32_t magic;
	uint32_t used;             /* blocks handed out */
	uint32_t carved;           /* blocks ever cut from the bump pointer */
	struct size_class *cls;
	void *free;                /* freed blocks, linked through their first word */
	struct region *prev, *next;
};

#define REGION_MAGIC 0x6d6e5247u  /* "GRnm" */

struct tier {
	uint64_t budget;
	size_t align;
	_Atomic uint64_t used;
	_Atomic uint64_t blocks, allocs, failures, frees, mapped;
	pthread_mutex_t mu;
	struct size_class classes[MAX_CLASSES];
	unsigned n_classes;
};

static int host_open(const struct tier_config *cfg, struct tier **out)
{
	struct tier *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->budget = cfg->budget_bytes;
	t->align = cfg->align ? cfg->align : 64;
	if (t->align & (t->align - 1) || t->align < sizeof(void *) || t->align > HEADER_BYTES) {
		free(t);
		return -EINVAL;
	}
	pthread_mutex_init(&t->mu, NULL);
	*out = t;
	return 0;
}

static struct region *region_of(const void *p)
{
	return (struct region *)((uintptr_t)p & ~(uintptr_t)(REGION_BYTES - 1));
}

static void region_unmap(struct tier *t, struct region *r)
{
	UNPOISON(r, REGION_BYTES);
	munmap(r, REGION_BYTES);
	atomic_fetch_sub(&t->mapped, REGION_BYTES);
}

static void host_close(struct tier *t)
{
	/* Blocks still handed out die with their regions: the store frees its
	 * blocks before the tier closes. */
	for (unsigned i = 0; i < t->n_classes; i++) {
		struct size_class *c = &t->classes[i];
		if (c->spare)
			region_unmap(t, c->spare);
		while (c->partial) {
			struct region *r = c->partial;
			c->partial = r->next;
			region_unmap(t, r);
		}
	}
	pthread_mutex_destroy(&t->mu);
	free(t);
}

/* A REGION_BYTES-aligned mapping: map twice the size, trim both ends. */
static struct region *region_map(struct tier *t, struct size_class *c)
{
	uint8_t *raw = mmap(NULL, 2 * REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	uint8_t *base = (uint8_t *)(((uintptr_t)raw + REGION_BYTES - 1) & ~(uintptr_t)(REGION_BYTES - 1));
	if (base > raw)
		munmap(raw, (size_t)(base - raw));
	if (base + REGION_BYTES < raw + 2 * REGION_BYTES)
		munmap(base + REGION_BYTES, (size_t)(raw + 2 * REGION_BYTES - (base + REGION_BYTES)));
	/* advice only: without THP the region still works, on small pages */
	(void)madvise(base, REGION_BYTES, MADV_HUGEPAGE);
	struct region *r = (struct region *)base;
	*r = (struct region){ .magic = REGION_MAGIC, .cls = c };
	POISON(base + HEADER_BYTES, REGION_BYTES - HEADER_BYTES);
	atomic_fetch_add(&t->mapped, REGION_BYTES);
	return r;
}

static void partial_unlink(struct size_class *c, struct region *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		c->partial = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
}

static void partial_push(struct size_class *c, struct region *r)
{
	r->prev = NULL;
	r->next = c->partial;
	if (c->partial)
		c->partial->prev = r;
	c->partial = r;
}

/* Mutex held. NULL when the class table is full. */
static struct size_class *class_for(struct tier *t, size_t bytes)
{
	for (unsigned i = 0; i < t->n_classes; i++)
		if (t->classes[i].bytes == bytes)
			return &t->classes[i];
	if (t->n_classes == MAX_CLASSES)
		return NULL;
	struct size_class *c = &t->classes[t->n_classes++];
	c->bytes = bytes;
	c->stride = (bytes + t->align - 1) & ~(t->align - 1);
	c->per_region = (uint32_t)((REGION_BYTES - HEADER_BYTES) / c->stride);
	return c;
}

/* Mutex held. */
static void *slab_alloc(struct tier *t, size_t bytes)
{
	struct size_class *c = class_for(t, bytes);
	if (!c)
		return NULL;
	struct region *r = c->partial;
	if (!r) {
		if ((r = c->spare))
			c->spare = NULL;
		else if (!(r = region_map(t, c)))
			return NULL;
		partial_push(c, r);
	}
	void *p;
	if (r->free) {
		p = r->free;
		UNPOISON(p, sizeof(void *));
		r->free = *(void **)p;
	} else {
		p = (uint8_t *)r + HEADER_BYTES + (size_t)r->carved * c->stride;
		r->carved++;
	}
	UNPOISON(p, c->stride);
	if (++r->used == c->per_region)
		partial_unlink(c, r);
	return p;
}

/* Mutex held. */
static void slab_free(struct tier *t, void *p)
{
	struct region *r = region_of(p);
	if (r->magic != REGION_MAGIC)
		abort();            /* not ours: the process is broken */
	struct size_class *c = r->cls;
	const bool was_full = r->used == c->per_region;
	POISON(p, c->stride);
	UNPOISON(p, sizeof(void *));
	*(void **)p = r->free;
	POISON(p, sizeof(void *));
	r->free = p;
	r->used--;
	if (was_full)
		partial_push(c, r);
	if (r->used == 0) {
		partial_unlink(c, r);
		/* an empty region starts over from its bump pointer */
		r->free = NULL;
		r->carved = 0;
		if (c->spare)
			region_unmap(t, r);
		else
			c->spare = r;
	}
}

static bool slab_sized(size_t bytes)
{
	return bytes <= REGION_BYTES / 8;
}

/*
 * Whether a block of @p bytes came from the slab: a size's class, once in
 * the table, stays there and serves every block of that size (the slab
 * refuses rather than fall back to malloc), so the size alone decides.
 * Mutex held.
 */
static bool from_slab(const struct tier *t, size_t bytes)
{
	if (!slab_sized(bytes))
		return false;
	for (unsigned i = 0; i < t->n_classes; i++)
		if (t->classes[i].bytes == bytes)
			return true;
	return false;
}

static int host_alloc(struct tier *t, size_t bytes, void **out)
{
	if (bytes == 0)
		return -EINVAL;
	/* Reserve first, then allocate: concurrent appends never overshoot. */
	uint64_t cur = atomic_load(&t->used);
	do {
		if (bytes > t->budget || cur > t->budget - bytes) {
			atomic_fetch_add(&t->failures, 1);
			return -ENOMEM;
		}
	} while (!atomic_compare_exchange_weak(&t->used, &cur, cur + bytes));
	void *p = NULL;
	pthread_mutex_lock(&t->mu);
	if (slab_sized(bytes) && (from_slab(t, bytes) || t->n_classes < MAX_CLASSES))
		p = slab_alloc(t, bytes);
	else if (posix_memalign(&p, t->align, bytes))
		p = NULL;
	pthread_mutex_unlock(&t->mu);
	if (!p) {
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
	pthread_mutex_lock(&t->mu);
	if (from_slab(t, bytes))
		slab_free(t, p);
	else
		free(p);
	pthread_mutex_unlock(&t->mu);
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
	s->mapped_bytes = atomic_load(&t->mapped);
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
