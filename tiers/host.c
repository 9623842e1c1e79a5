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
 * A fresh region is still first-touch memory: a restarted daemon's first
 * ATTEND spent about 30 ms of its CPU in the kernel clearing the huge pages
 * its SSD reads landed in. So each class keeps its spare populated ahead of
 * need: a warmer thread maps the next spare and faults it in
 * (MADV_POPULATE_WRITE) whenever a class has none, from the moment the
 * store announces the class (prepare(): a context loaded from the catalog)
 * and again each time the spare is taken. Tiers whose budget is under
 * WARM_MIN_REGIONS regions do not warm: the spare would be a large share of
 * what they may hold.
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

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  /* Linux 5.14 */
#endif

#define REGION_BYTES (32ull << 20)
#define WARM_MIN_REGIONS 8
#define HEADER_BYTES 4096u
#define MAX_CLASSES 16

struct region;

struct size_class {
	size_t bytes;              /* what callers ask for */
	size_t stride;             /* bytes rounded up to the tier's alignment */
	uint32_t per_region;
	struct region *partial;    /* regions with a free block, doubly linked */
	struct region *spare;      /* one empty region kept for the next burst */
	bool warm_wanted;          /* the warmer should map and populate a spare */
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
	/* the warmer: started on the first class that wants a spare; mu guards these */
	pthread_t warmer;
	pthread_cond_t warm_cv;
	bool warmer_on, warm_stop;
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
	pthread_cond_init(&t->warm_cv, NULL);
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
	pthread_mutex_lock(&t->mu);
	t->warm_stop = true;
	pthread_cond_signal(&t->warm_cv);
	const bool join = t->warmer_on;
	pthread_mutex_unlock(&t->mu);
	if (join)
		pthread_join(t->warmer, NULL);
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
	pthread_cond_destroy(&t->warm_cv);
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

/* The warmer: map and populate a spare for each class that wants one. */
static void *warmer_main(void *arg)
{
	struct tier *t = arg;
	pthread_mutex_lock(&t->mu);
	while (!t->warm_stop) {
		struct size_class *c = NULL;
		for (unsigned i = 0; i < t->n_classes && !c; i++)
			if (t->classes[i].warm_wanted)
				c = &t->classes[i];
		if (!c) {
			pthread_cond_wait(&t->warm_cv, &t->mu);
			continue;
		}
		c->warm_wanted = false;
		if (c->spare)
			continue;
		/* the slow part runs unlocked: allocations go on meanwhile */
		pthread_mutex_unlock(&t->mu);
		struct region *r = region_map(t, c);
		/* advice only: where the kernel lacks it the spare is merely mapped */
		if (r)
			(void)madvise((uint8_t *)r + HEADER_BYTES, REGION_BYTES - HEADER_BYTES, MADV_POPULATE_WRITE);
		pthread_mutex_lock(&t->mu);
		if (r && !c->spare && !t->warm_stop)
			c->spare = r;
		else if (r)
			region_unmap(t, r);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

/* Mutex held: ask the warmer for a populated spare of @p c (started on first use). */
static void want_warm(struct tier *t, struct size_class *c)
{
	if (c->spare || t->warm_stop || t->budget / REGION_BYTES < WARM_MIN_REGIONS)
		return;
	if (!t->warmer_on) {
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setstacksize(&a, 64 << 10);
		t->warmer_on = pthread_create(&t->warmer, &a, warmer_main, t) == 0;
		pthread_attr_destroy(&a);
		if (!t->warmer_on)
			return;         /* regions then fault in on first use, as without it */
	}
	c->warm_wanted = true;
	pthread_cond_signal(&t->warm_cv);
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
		want_warm(t, c);
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

static void host_prepare(struct tier *t, size_t bytes)
{
	pthread_mutex_lock(&t->mu);
	struct size_class *c = slab_sized(bytes) ? class_for(t, bytes) : NULL;
	if (c)
		want_warm(t, c);
	pthread_mutex_unlock(&t->mu);
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
	s->spare_bytes = 0;
	pthread_mutex_lock(&t->mu);
	for (unsigned i = 0; i < t->n_classes; i++)
		s->spare_bytes += t->classes[i].spare ? REGION_BYTES : 0;
	pthread_mutex_unlock(&t->mu);
}

const struct tier_ops tier_host_ops = {
	.version = TIER_OPS_VERSION,
	.name = "host",
	.open = host_open,
	.close = host_close,
	.block_alloc = host_alloc,
	.block_free = host_free,
	.prepare = host_prepare,
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
