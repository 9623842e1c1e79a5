/*
 * The block store: contexts, block tables, residency (pin, load, evict),
 * durable appends through the SSD tier and the catalog, and recovery.
 *
 * Durability: an APPEND's filled blocks are written to their slots and, in
 * one fdatasync and one catalog transaction, named by the catalog before it
 * is acknowledged. A STREAM append's blocks are written before it is
 * acknowledged but named at the context's next sync point (a SYNC append,
 * any other append, SEAL, stream_sync_bytes streamed, store_destroy()): a
 * flush per request costs this kind of disk as much as the writes
 * themselves (docs/DESIGN-CHANGES.md §17). Until then a crash loses them,
 * and the context comes back at its last named block.
 *
 * Locks, outermost first: a context's rwlock (appends and seals exclusive,
 * readers shared), the store's table mutex, the store's residency mutex
 * (every block's state, pins and LRU links), a block file's slot mutex
 * (inside ssd.c). Catalog transactions serialise on LMDB's writer lock and
 * are taken with a context's write lock held, never with the residency
 * mutex held.
 */
#define _GNU_SOURCE
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "record.h"
#include "sidefile.h"
#include "ssd.h"

enum blk_state { BLK_ABSENT = 0, BLK_LOADING, BLK_RESIDENT };

struct blk {
	uint8_t *mem;             /* slot_bytes when resident */
	uint64_t slot;
	uint64_t checksum;
	uint32_t pins;
	uint32_t size;            /* bytes of mem: contexts differ, eviction must know */
	uint8_t state;
	bool durable;
	bool bad;
	bool in_lru;
	bool ahead;               /* read by kv_ctx_prefetch() and not pinned by a request since */
	struct blk *prev, *next;  /* LRU of resident, durable, unpinned blocks */
};

/* One block on its way to SSD, or written and not yet named by the catalog. */
struct pending {
	uint32_t layer, head;
	uint64_t block;
	uint32_t tokens;
	struct blk *k;
	/* a streamed block: written from the request (keys, values), not from RAM */
	const uint8_t *src_k, *src_v;
	bool streamed;
	struct kv_ctx *c;         /* while it is written */
};

#define PAGE_BLKS 1024u       /* block entries per page: their addresses never move */

struct layer {
	uint64_t tokens;
	uint64_t durable_tokens;  /* what the catalog names */
	uint64_t written_tokens;  /* what is in slots: durable_tokens, or more before a sync point */
	uint64_t n_blocks;        /* rows with memory or a slot */
	struct blk **pages;
	uint64_t n_pages;
};

struct kv_ctx {
	_Atomic uint32_t refs;
	uint64_t id;
	char *name;
	uint32_t owner;
	struct kv_geometry geom;
	struct store *store;
	pthread_rwlock_t lock;
	bool sealed;
	bool recovered;
	_Atomic int shared;       /* read-only for every user (kv_ctx_set_shared()) */
	uint32_t B;
	size_t block_bytes;       /* 2 * B * d * elem: what the kernels read */
	uint32_t slot_bytes;      /* the block, 4 KiB aligned: what RAM and SSD hold */
	bool trailer;             /* the slot has room for a trailer past the block */
	_Atomic uint64_t bytes;
	struct layer *layers;
	struct ssd_file *file;
	void *aux;                /* what the request path keeps per context (indexes) */
	void (*aux_free)(void *aux);
	/* a continuation: its tokens follow the first parent_tokens of parent (a reference held) */
	struct kv_ctx *parent;
	uint64_t parent_id, parent_tokens;
	_Atomic uint32_t children; /* continuations of this context: it cannot be deleted under them */
	/* derived (kv_ctx_derived()): the parent's id; hidden from clients, deleted with it */
	uint64_t derived_of;
	/* blocks written to slots that the catalog does not name yet, oldest first */
	struct pending *unsynced;
	size_t n_unsynced, cap_unsynced;
	uint64_t unsynced_bytes;
	/* a sync point failed with acknowledged blocks unnamed: appends are refused */
	int sync_failed;
};

struct store {
	struct store_config cfg;
	pthread_mutex_t mu;
	struct kv_ctx **ctx;
	uint32_t n_ctx, cap_ctx;
	uint64_t next_id;

	pthread_mutex_t res_mu;
	pthread_cond_t res_cv;    /* a load finished */
	struct blk lru;           /* sentinel: lru.next is the coldest */
	_Atomic uint64_t hits, misses, evictions, bad_blocks, recovered;

	/* kv_ctx_prefetch(): one thread reads the queued requests, oldest first */
	pthread_mutex_t pf_mu;
	pthread_cond_t pf_cv;
	struct prefetch_req *pf_head, **pf_tail;
	struct prefetch_req *pf_free; /* read ones, for reuse (at most PF_FREE_MAX) */
	uint32_t n_pf_free;
	pthread_t pf_thread;
	bool pf_running, pf_stop;
	_Atomic uint64_t prefetched, prefetch_used;
	uint32_t ahead_loading;   /* blocks load_ahead() is reading (under res_mu) */
};

/* A queued kv_ctx_prefetch(): a reference on the context, its blocks (room for cap). */
struct prefetch_req {
	struct prefetch_req *next;
	struct kv_ctx *c;
	uint32_t layer, head, n, cap;
	uint64_t blocks[];
};

/* Read requests kept for reuse once read: a decode step queues one per layer and KV head. */
#define PF_FREE_MAX 64u

static struct blk *blk_at(struct layer *ly, uint32_t H, uint64_t b, uint32_t h)
{
	uint64_t i = b * H + h;
	return &ly->pages[i / PAGE_BLKS][i % PAGE_BLKS];
}

/* ---- LRU (residency mutex held) ---- */

static void lru_remove(struct store *s, struct blk *k)
{
	if (!k->in_lru)
		return;
	k->prev->next = k->next;
	k->next->prev = k->prev;
	k->in_lru = false;
	(void)s;
}

static void lru_push(struct store *s, struct blk *k)
{
	if (k->in_lru || !k->durable || k->pins || k->state != BLK_RESIDENT)
		return;
	k->prev = s->lru.prev;
	k->next = &s->lru;
	s->lru.prev->next = k;
	s->lru.prev = k;
	k->in_lru = true;
}

/*
 * Host memory for one slot. When the budget (the high watermark) refuses
 * it, cold durable blocks leave RAM until the tier is back under the low
 * watermark, so that the allocations that follow find room at once.
 * Residency mutex held.
 */
#define LOW_WATERMARK_PCT 90u

static int res_alloc(struct store *s, struct blk *dst, uint32_t bytes)
{
	const struct tier_ops *ops = s->cfg.host_ops;
	for (;;) {
		void *p;
		if (ops->block_alloc(s->cfg.host, bytes, &p) == 0) {
			dst->mem = p;
			dst->size = bytes;
			return 0;
		}
		if (s->lru.next == &s->lru)
			return -ENOMEM;      /* everything in RAM is in use or not yet durable */
		struct tier_stats ts;
		ops->stats(s->cfg.host, &ts);
		uint64_t low = ts.budget_bytes / 100 * LOW_WATERMARK_PCT;
		while (s->lru.next != &s->lru && (ts.used_bytes + bytes > low)) {
			struct blk *k = s->lru.next;
			lru_remove(s, k);
			ops->block_free(s->cfg.host, k->mem, k->size);
			ts.used_bytes -= k->size;
			k->mem = NULL;
			k->state = BLK_ABSENT;
			k->ahead = false;   /* read ahead for nothing */
			atomic_fetch_add(&s->evictions, 1);
		}
	}
}

/* ---- store ---- */

/*
 * Whether a slot carries a trailer: when the padding past the block has room
 * for one. A block that fills its slot (any head_dim that is a multiple of
 * 16 at the default 64 tokens) is checked by an identity-seeded checksum
 * instead: the trailer would cost a whole 4 KiB page per block, 25% of the
 * writes at head_dim 64.
 */
static bool slot_has_trailer(uint32_t slot_bytes, size_t block_bytes)
{
	return slot_bytes >= block_bytes + RECORD_TRAILER_SIZE;
}

static int ctx_new(struct store *s, const char *name, size_t name_len, const struct kv_geometry *g,
		   uint32_t owner, struct kv_ctx **out)
{
	struct kv_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	/* not strndup: the name comes from a frame, unterminated, possibly at its very end */
	c->name = malloc(name_len + 1);
	if (c->name) {
		memcpy(c->name, name, name_len);
		c->name[name_len] = 0;
	}
	c->layers = calloc(g->n_layers, sizeof(*c->layers));
	if (!c->name || !c->layers) {
		free(c->name);
		free(c->layers);
		free(c);
		return -ENOMEM;
	}
	c->geom = *g;
	c->owner = owner;
	c->store = s;
	c->B = s->cfg.block_tokens;
	c->block_bytes = 2ull * c->B * g->head_dim * g->elem_size;
	/* with an SSD tier the RAM copy is also the I/O buffer: a whole slot */
	c->slot_bytes = s->cfg.ssd ? ssd_slot_bytes(c->block_bytes) :
				     (uint32_t)((c->block_bytes + 63) / 64 * 64);
	c->trailer = s->cfg.ssd && slot_has_trailer(c->slot_bytes, c->block_bytes);
	pthread_rwlock_init(&c->lock, NULL);
	atomic_store(&c->refs, 1);
	*out = c;
	return 0;
}

static void ctx_free(struct kv_ctx *c)
{
	struct store *s = c->store;
	const struct tier_ops *ops = s->cfg.host_ops;
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t l = 0; l < c->geom.n_layers; l++) {
		struct layer *ly = &c->layers[l];
		for (uint64_t b = 0; b < ly->n_blocks; b++)
			for (uint32_t h = 0; h < c->geom.n_kv_heads; h++) {
				struct blk *k = blk_at(ly, c->geom.n_kv_heads, b, h);
				lru_remove(s, k);
				if (k->mem)
					ops->block_free(s->cfg.host, k->mem, c->slot_bytes);
			}
	}
	pthread_mutex_unlock(&s->res_mu);
	for (uint32_t l = 0; l < c->geom.n_layers; l++) {
		for (uint64_t p = 0; p < c->layers[l].n_pages; p++)
			free(c->layers[l].pages[p]);
		free(c->layers[l].pages);
	}
	if (c->aux_free)
		c->aux_free(c->aux);
	free(c->unsynced);
	ssd_file_close(c->file);
	free(c->layers);
	if (c->parent) {
		atomic_fetch_sub(&c->parent->children, 1);
		kv_ctx_put(c->parent);
	}
	pthread_rwlock_destroy(&c->lock);
	free(c->name);
	free(c);
}

void kv_ctx_get(struct kv_ctx *c)
{
	atomic_fetch_add(&c->refs, 1);
}

void kv_ctx_put(struct kv_ctx *c)
{
	if (c && atomic_fetch_sub(&c->refs, 1) == 1)
		ctx_free(c);
}

static int table_add(struct store *s, struct kv_ctx *c)
{
	if (s->n_ctx == s->cap_ctx) {
		uint32_t cap = s->cap_ctx ? s->cap_ctx * 2 : 16;
		struct kv_ctx **a = realloc(s->ctx, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		s->ctx = a;
		s->cap_ctx = cap;
	}
	s->ctx[s->n_ctx++] = c;
	return 0;
}

/* Every layer holds at least @p n tokens. */
static bool layers_hold(const struct kv_ctx *c, uint64_t n)
{
	for (uint32_t l = 0; l < c->geom.n_layers; l++)
		if (c->layers[l].tokens < n)
			return false;
	return true;
}

/* By id (any context), or by name among the contexts derived from @p of (0: the clients' own). */
static struct kv_ctx *find_locked(struct store *s, uint64_t id, const char *name, size_t n, uint64_t of)
{
	for (uint32_t i = 0; i < s->n_ctx; i++) {
		struct kv_ctx *c = s->ctx[i];
		if (id ? c->id == id
		       : (c->derived_of == of && strlen(c->name) == n && !memcmp(c->name, name, n)))
			return c;
	}
	return NULL;
}

/* Make room for @p n_blocks rows in a layer's table. */
static int reserve_rows(struct kv_ctx *c, struct layer *ly, uint64_t n_blocks)
{
	uint64_t need = (n_blocks * c->geom.n_kv_heads + PAGE_BLKS - 1) / PAGE_BLKS;
	if (need <= ly->n_pages)
		return 0;
	struct blk **p = realloc(ly->pages, need * sizeof(*p));
	if (!p)
		return -ENOMEM;
	ly->pages = p;
	while (ly->n_pages < need) {
		p[ly->n_pages] = calloc(PAGE_BLKS, sizeof(struct blk));
		if (!p[ly->n_pages])
			return -ENOMEM;
		ly->n_pages++;
	}
	return 0;
}

/* ---- recovery ---- */

struct load_state {
	struct store *s;
	struct kv_ctx *cur;
	const char *why;
};

static int load_ctx(void *arg, const struct ctx_record *r)
{
	struct load_state *st = arg;
	struct store *s = st->s;
	struct kv_geometry g = {
		.n_layers = r->n_layers, .n_kv_heads = r->n_kv_heads, .n_q_heads = r->n_q_heads,
		.head_dim = r->head_dim, .dtype = r->dtype,
		.elem_size = r->dtype == 0 ? 4 : 2, .rope_theta = r->rope_theta,
	};
	if (r->block_tokens != s->cfg.block_tokens || r->n_kv_heads == 0 || r->n_kv_heads > 1024 ||
	    r->head_dim == 0 || r->head_dim > 1024 || r->dtype > 2) {
		st->why = "a stored context has another block size or a bad geometry";
		return -EINVAL;
	}
	struct kv_ctx *c;
	int rc = ctx_new(s, r->name, strlen(r->name), &g, r->owner_uid, &c);
	if (rc)
		return rc;
	c->id = r->id;
	c->sealed = r->state == 2;
	c->recovered = !c->sealed;
	/* contexts written before slots lost their trailer (2026-11-25) keep
	 * theirs: a slot past the block, rounded up */
	const uint32_t legacy = ssd_slot_bytes(c->block_bytes + RECORD_TRAILER_SIZE);
	if (r->slot_bytes != c->slot_bytes && r->slot_bytes != legacy) {
		ctx_free(c);
		st->why = "a stored context's slot size does not match its geometry";
		return -EINVAL;
	}
	c->slot_bytes = r->slot_bytes;
	c->trailer = slot_has_trailer(c->slot_bytes, c->block_bytes);
	/* its first ATTEND after the restart reads into memory made ready now */
	if (s->cfg.host_ops->prepare)
		s->cfg.host_ops->prepare(s->cfg.host, c->slot_bytes);
	for (uint32_t l = 0; l < g.n_layers; l++) {
		c->layers[l].tokens = c->layers[l].durable_tokens = c->layers[l].written_tokens = r->layer_tokens[l];
		uint64_t nb = (r->layer_tokens[l] + c->B - 1) / c->B;
		if ((rc = reserve_rows(c, &c->layers[l], nb))) {
			ctx_free(c);
			return rc;
		}
		c->layers[l].n_blocks = nb;
	}
	rc = ssd_file_open(s->cfg.ssd, c->id, c->slot_bytes, true, &c->file);
	if (rc || (rc = table_add(s, c))) {
		ctx_free(c);
		st->why = "cannot open a stored context's block file";
		return rc;
	}
	if (c->id >= s->next_id)
		s->next_id = c->id + 1;
	atomic_fetch_add(&s->recovered, 1);
	st->cur = c;
	return 0;
}

static int load_block(void *arg, uint64_t ctx, uint32_t layer, uint32_t head, uint64_t block,
		      const struct block_record *b)
{
	struct load_state *st = arg;
	struct kv_ctx *c = st->cur;
	if (!c || c->id != ctx)
		c = find_locked(st->s, ctx, NULL, 0, 0);
	if (!c)
		return 0;   /* a block of a context whose record is gone: ignored, its file is too */
	st->cur = c;
	if (layer >= c->geom.n_layers || head >= c->geom.n_kv_heads ||
	    block >= c->layers[layer].n_blocks) {
		/* past the durable length: written by an append that never committed */
		return 0;
	}
	struct blk *k = blk_at(&c->layers[layer], c->geom.n_kv_heads, block, head);
	k->slot = b->slot;
	k->checksum = b->checksum;
	k->durable = true;
	k->bad = b->flags & BLOCK_BAD;
	k->state = BLK_ABSENT;
	int rc = ssd_slot_claim(c->file, b->slot);
	if (rc) {
		st->why = "two blocks of the catalog share a slot";
		return rc == -EEXIST ? -EBADMSG : rc;
	}
	atomic_fetch_add(&c->bytes, c->block_bytes);
	return 0;
}

static int delete_durable(struct store *s, struct kv_ctx *c);

/*
 * A context's link side file (@p n u64 ids and counts): true when it is
 * there; one of another size reads as zeros (a broken link).
 */
static bool read_link(const char *dir, uint64_t id, const char *name, uint64_t *out, size_t n)
{
	void *b;
	size_t blen;
	memset(out, 0, n * sizeof(*out));
	if (sidefile_read(dir, id, name, &b, &blen) != 0)
		return false;
	if (blen == n * sizeof(*out))
		memcpy(out, b, blen);
	free(b);
	return true;
}

int store_open(const struct store_config *cfg, struct store **out, const char **why)
{
	*why = NULL;
	if (!cfg->host_ops || !cfg->host || cfg->block_tokens == 0 || (!cfg->ssd != !cfg->catalog))
		return -EINVAL;
	struct store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->next_id = 1;
	s->lru.next = s->lru.prev = &s->lru;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->res_mu, NULL);
	pthread_cond_init(&s->res_cv, NULL);
	pthread_mutex_init(&s->pf_mu, NULL);
	pthread_cond_init(&s->pf_cv, NULL);
	s->pf_tail = &s->pf_head;
	if (cfg->catalog) {
		struct load_state st = { .s = s };
		int rc = catalog_load(cfg->catalog, load_ctx, load_block, &st);
		uint64_t next;
		if (!rc && catalog_get_meta_u64(cfg->catalog, "next_id", &next) == 0 && next > s->next_id)
			s->next_id = next;
		if (rc) {
			*why = st.why ? st.why : "the catalog does not load";
			store_destroy(s);
			return rc;
		}
		/* every block a table names must be there: a hole means a lost commit */
		for (uint32_t i = 0; i < s->n_ctx; i++) {
			struct kv_ctx *c = s->ctx[i];
			for (uint32_t l = 0; l < c->geom.n_layers; l++)
				for (uint64_t b = 0; b < c->layers[l].n_blocks; b++)
					for (uint32_t h = 0; h < c->geom.n_kv_heads; h++)
						if (!blk_at(&c->layers[l], c->geom.n_kv_heads, b, h)->durable) {
							*why = "the catalog misses a block below a context's durable length";
							store_destroy(s);
							return -EBADMSG;
						}
		}
		/* block files no context names are left from a drop interrupted by a crash */
		uint64_t *ids;
		size_t n;
		if (ssd_list_files(cfg->ssd, &ids, &n) == 0) {
			for (size_t i = 0; i < n; i++)
				if (!find_locked(s, ids[i], NULL, 0, 0))
					ssd_unlink(cfg->ssd, ids[i]);
			free(ids);
		}
		/* contexts shared before the restart are again */
		for (uint32_t i = 0; cfg->side_dir && i < s->n_ctx; i++) {
			void *b;
			size_t blen;
			if (sidefile_read(cfg->side_dir, s->ctx[i]->id, "shared", &b, &blen) == 0) {
				atomic_store(&s->ctx[i]->shared, 1);
				free(b);
			}
		}
		/* continuations find their parents again */
		for (uint32_t i = 0; cfg->side_dir && i < s->n_ctx; i++) {
			struct kv_ctx *c = s->ctx[i];
			uint64_t link[2];
			if (!read_link(cfg->side_dir, c->id, "parent", link, 2))
				continue;
			c->parent_id = link[0] ? link[0] : UINT64_MAX;
			c->parent_tokens = link[1];
			struct kv_ctx *p = link[0] != c->id ? find_locked(s, link[0], NULL, 0, 0) : NULL;
			/* a parent that is gone, open or shorter than the link leaves the continuation unusable */
			if (p && p->sealed && link[1] && layers_hold(p, link[1])) {
				kv_ctx_get(p);
				atomic_fetch_add(&p->children, 1);
				c->parent = p;
			}
		}
		/* derived contexts find their parents again; those whose parent is gone go too */
		for (uint32_t i = 0; cfg->side_dir && i < s->n_ctx; i++) {
			struct kv_ctx *c = s->ctx[i];
			uint64_t of;
			if (!read_link(cfg->side_dir, c->id, "derived", &of, 1))
				continue;
			c->derived_of = of ? of : UINT64_MAX;
			atomic_fetch_sub(&s->recovered, 1);   /* the clients' contexts are counted */
		}
		for (uint32_t i = 0; i < s->n_ctx;) {
			struct kv_ctx *c = s->ctx[i], *p;
			if (c->derived_of && (!(p = find_locked(s, c->derived_of, NULL, 0, 0)) || p->derived_of)) {
				(void)delete_durable(s, c);
				s->ctx[i] = s->ctx[--s->n_ctx];
				kv_ctx_put(c);
				continue;
			}
			i++;
		}
		/* and side files likewise */
		if (cfg->side_dir && sidefile_list_ctx(cfg->side_dir, &ids, &n) == 0) {
			for (size_t i = 0; i < n; i++)
				if (!find_locked(s, ids[i], NULL, 0, 0))
					sidefile_remove_ctx(cfg->side_dir, ids[i]);
			free(ids);
		}
	}
	*out = s;
	return 0;
}

static int commit_written(struct kv_ctx *c, bool seal, const char **why);
static void prefetch_stop(struct store *s);

void store_destroy(struct store *s)
{
	if (!s)
		return;
	prefetch_stop(s);
	for (uint32_t i = 0; i < s->n_ctx; i++) {
		struct kv_ctx *c = s->ctx[i];
		const char *why = NULL;
		/* streamed blocks not yet named: the clean stop is a sync point */
		pthread_rwlock_wrlock(&c->lock);
		if (c->n_unsynced && !c->sync_failed && commit_written(c, false, &why))
			fprintf(stderr, "mnemo: context %llu: %s; it comes back at its last durable block\n",
				(unsigned long long)c->id, why ? why : "sync failed");
		pthread_rwlock_unlock(&c->lock);
		kv_ctx_put(c);
	}
	free(s->ctx);
	pthread_cond_destroy(&s->pf_cv);
	pthread_mutex_destroy(&s->pf_mu);
	pthread_cond_destroy(&s->res_cv);
	pthread_mutex_destroy(&s->res_mu);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void store_stats(struct store *s, struct store_stats *o)
{
	o->hits = atomic_load(&s->hits);
	o->misses = atomic_load(&s->misses);
	o->evictions = atomic_load(&s->evictions);
	o->bad_blocks = atomic_load(&s->bad_blocks);
	o->recovered_contexts = atomic_load(&s->recovered);
	o->prefetched = atomic_load(&s->prefetched);
	o->prefetch_used = atomic_load(&s->prefetch_used);
}

/* The context's catalog record as it stands (context write lock held). */
static int put_ctx_record(struct kv_ctx *c, struct catalog_txn *t, bool sealed)
{
	struct ctx_record r = {
		.id = c->id, .n_layers = c->geom.n_layers, .n_kv_heads = c->geom.n_kv_heads,
		.n_q_heads = c->geom.n_q_heads, .head_dim = c->geom.head_dim, .dtype = c->geom.dtype,
		.rope_theta = c->geom.rope_theta, .owner_uid = c->owner, .state = sealed ? 2 : 1,
		.block_tokens = c->B, .slot_bytes = c->slot_bytes,
	};
	snprintf(r.name, sizeof(r.name), "%s", c->name);
	r.layer_tokens = malloc(sizeof(uint64_t) * c->geom.n_layers);
	if (!r.layer_tokens)
		return -ENOMEM;
	for (uint32_t l = 0; l < c->geom.n_layers; l++)
		r.layer_tokens[l] = c->layers[l].durable_tokens;
	int rc = catalog_put_ctx(t, &r);
	free(r.layer_tokens);
	return rc;
}

/*
 * Make a context known: an id, its block file and catalog record (with an
 * SSD tier), then the table. A continuation's link to @p parent (its first
 * @p parent_tokens tokens) is written before the catalog names it: a crash
 * between leaves an orphan side file, swept at start.
 */
static int ctx_add(struct store *s, const char *name, size_t name_len, const struct kv_geometry *g,
		   uint32_t owner_uid, struct kv_ctx *parent, uint64_t parent_tokens, uint64_t derived_of,
		   struct kv_ctx **out)
{
	struct kv_ctx *c;
	int rc = ctx_new(s, name, name_len, g, owner_uid, &c);
	if (rc)
		return rc;
	c->derived_of = derived_of;
	pthread_mutex_lock(&s->mu);
	if (find_locked(s, 0, name, name_len, derived_of)) {
		rc = -EEXIST;
		goto fail_locked;
	}
	/* a context derived from one that was just deleted would outlive it */
	if (derived_of && !find_locked(s, derived_of, NULL, 0, 0)) {
		rc = -ENOENT;
		goto fail_locked;
	}
	c->id = s->next_id++;
	if (s->cfg.ssd) {
		const uint64_t link[2] = { parent ? parent->id : 0, parent_tokens };
		if (parent && s->cfg.side_dir &&
		    (rc = sidefile_write(s->cfg.side_dir, c->id, "parent", link, sizeof(link))))
			goto fail_locked;
		if (derived_of && (rc = sidefile_write(s->cfg.side_dir, c->id, "derived", &derived_of,
						       sizeof(derived_of))))
			goto fail_locked;
		struct catalog_txn *t = NULL;
		if ((rc = ssd_file_open(s->cfg.ssd, c->id, c->slot_bytes, true, &c->file)))
			goto fail_locked;
		if ((rc = catalog_begin(s->cfg.catalog, &t)) || (rc = put_ctx_record(c, t, false)) ||
		    (rc = catalog_put_meta_u64(t, "next_id", s->next_id))) {
			catalog_abort(t);
			goto fail_locked;
		}
		if ((rc = catalog_commit(t)))
			goto fail_locked;
	}
	if ((rc = table_add(s, c)))
		goto fail_locked;
	if (parent) {
		kv_ctx_get(parent);
		atomic_fetch_add(&parent->children, 1);
		c->parent = parent;
		c->parent_id = parent->id;
		c->parent_tokens = parent_tokens;
	}
	kv_ctx_get(c);          /* the store's and the caller's */
	pthread_mutex_unlock(&s->mu);
	*out = c;
	return 0;
fail_locked:
	pthread_mutex_unlock(&s->mu);
	if (c->file) {
		ssd_file_remove(c->file);
		c->file = NULL;
	}
	if ((parent || derived_of) && s->cfg.side_dir && c->id)
		sidefile_remove_ctx(s->cfg.side_dir, c->id);
	kv_ctx_put(c);
	return rc;
}

int store_ctx_create(struct store *s, const char *name, size_t name_len,
		     const struct kv_geometry *g, uint32_t owner_uid, struct kv_ctx **out)
{
	return ctx_add(s, name, name_len, g, owner_uid, NULL, 0, 0, out);
}

int store_ctx_find(struct store *s, uint64_t id, const char *name, size_t name_len,
		   struct kv_ctx **out)
{
	pthread_mutex_lock(&s->mu);
	struct kv_ctx *c = find_locked(s, id, name, name_len, 0);
	if (c && c->derived_of)
		c = NULL;   /* the layers above reach those through kv_ctx_derived() alone */
	if (c)
		kv_ctx_get(c);
	pthread_mutex_unlock(&s->mu);
	if (!c)
		return -ENOENT;
	*out = c;
	return 0;
}

void store_ctx_drop(struct store *s, struct kv_ctx *c)
{
	bool found = false;
	pthread_mutex_lock(&s->mu);
	for (uint32_t i = 0; i < s->n_ctx; i++) {
		if (s->ctx[i] == c) {
			s->ctx[i] = s->ctx[--s->n_ctx];
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&s->mu);
	if (found)
		kv_ctx_put(c);
}

int store_ctx_continue(struct store *s, struct kv_ctx *parent, const char *name, size_t name_len,
		       uint32_t owner_uid, struct kv_ctx **out)
{
	pthread_rwlock_rdlock(&parent->lock);
	const bool sealed = parent->sealed;
	pthread_rwlock_unlock(&parent->lock);
	if (!sealed)
		return -EBUSY;
	uint64_t P = UINT64_MAX;
	for (uint32_t l = 0; l < parent->geom.n_layers; l++)
		P = parent->layers[l].tokens < P ? parent->layers[l].tokens : P;
	if (!P)
		return -ENODATA;
	return ctx_add(s, name, name_len, &parent->geom, owner_uid, parent, P, 0, out);
}

int kv_ctx_derived(struct kv_ctx *parent, const char *tag, const struct kv_geometry *g, bool create,
		   struct kv_ctx **out)
{
	struct store *s = parent->store;
	const size_t n = tag ? strlen(tag) : 0;
	if (!n || n > 255 || parent->derived_of || !g || !g->n_layers || !g->n_kv_heads)
		return -EINVAL;
	for (int tries = 0; tries < 2; tries++) {
		pthread_mutex_lock(&s->mu);
		struct kv_ctx *c = find_locked(s, 0, tag, n, parent->id);
		if (c)
			kv_ctx_get(c);
		pthread_mutex_unlock(&s->mu);
		if (c) {
			const struct kv_geometry *h = &c->geom;
			if (h->n_layers != g->n_layers || h->n_kv_heads != g->n_kv_heads || h->head_dim != g->head_dim ||
			    h->dtype != g->dtype) {
				kv_ctx_put(c);
				return -EEXIST;
			}
			*out = c;
			return 0;
		}
		if (!create)
			return -ENOENT;
		/* without side files the link would not survive a restart: the copy would turn up as a client's */
		if (s->cfg.ssd && !s->cfg.side_dir)
			return -ENOTSUP;
		int rc = ctx_add(s, tag, n, g, parent->owner, NULL, 0, parent->id, out);
		if (rc != -EEXIST)
			return rc;
		/* another request created it meanwhile: take that one */
	}
	return -EEXIST;
}

bool kv_ctx_on_ssd(const struct kv_ctx *c)
{
	return c->store->cfg.ssd != NULL;
}

struct kv_ctx *kv_ctx_parent(const struct kv_ctx *c, uint64_t *parent_id, uint64_t *tokens)
{
	if (parent_id)
		*parent_id = c->parent_id;
	if (tokens)
		*tokens = c->parent_tokens;
	return c->parent;
}

/* Remove a context's catalog record, block file and side files, in that order. */
static int delete_durable(struct store *s, struct kv_ctx *c)
{
	if (!s->cfg.catalog)
		return 0;
	/* the catalog first: a crash after it leaves an orphan file, removed at start */
	struct catalog_txn *t;
	int rc = catalog_begin(s->cfg.catalog, &t);
	if (!rc && (rc = catalog_del_ctx(t, c->id)))
		catalog_abort(t);
	else if (!rc)
		rc = catalog_commit(t);
	if (rc)
		return rc;
	pthread_rwlock_wrlock(&c->lock);
	if (c->file) {
		ssd_file_remove(c->file);
		c->file = NULL;
	}
	pthread_rwlock_unlock(&c->lock);
	/* side files after the catalog too: an orphan is swept at start */
	if (s->cfg.side_dir)
		sidefile_remove_ctx(s->cfg.side_dir, c->id);
	return 0;
}

int store_ctx_delete(struct store *s, struct kv_ctx *c)
{
	if (atomic_load(&c->children))
		return -EBUSY;
	int rc = delete_durable(s, c);
	if (rc)
		return rc;
	store_ctx_drop(s, c);
	/* then what was derived from it; a crash before leaves orphans, deleted at start */
	for (;;) {
		pthread_mutex_lock(&s->mu);
		struct kv_ctx *d = NULL;
		for (uint32_t i = 0; i < s->n_ctx && !d; i++)
			if (s->ctx[i]->derived_of == c->id)
				d = s->ctx[i];
		if (d)
			kv_ctx_get(d);
		pthread_mutex_unlock(&s->mu);
		if (!d)
			break;
		(void)delete_durable(s, d);
		store_ctx_drop(s, d);
		kv_ctx_put(d);
	}
	return 0;
}

int kv_ctx_set_shared(struct kv_ctx *c, int shared)
{
	pthread_rwlock_rdlock(&c->lock);
	int sealed = c->sealed;
	pthread_rwlock_unlock(&c->lock);
	if (shared && !sealed)
		return -EBUSY;
	const char *dir = c->store->cfg.side_dir;
	int rc = 0;
	if (dir)
		rc = shared ? sidefile_write(dir, c->id, "shared", "1", 1) : sidefile_remove(dir, c->id, "shared");
	if (!rc)
		atomic_store(&c->shared, shared ? 1 : 0);
	return rc;
}

int kv_ctx_shared(const struct kv_ctx *c)
{
	return atomic_load(&((struct kv_ctx *)c)->shared);
}

int kv_ctx_side_save(struct kv_ctx *c, const char *name, const void *buf, size_t len)
{
	if (!c->store->cfg.side_dir)
		return -ENOTSUP;
	return sidefile_write(c->store->cfg.side_dir, c->id, name, buf, len);
}

int kv_ctx_side_load(struct kv_ctx *c, const char *name, void **buf, size_t *len)
{
	if (!c->store->cfg.side_dir)
		return -ENOTSUP;
	return sidefile_read(c->store->cfg.side_dir, c->id, name, buf, len);
}

int kv_ctx_side_prefetch(struct kv_ctx *c, const char *name)
{
	if (!c->store->cfg.side_dir)
		return -ENOTSUP;
	return sidefile_prefetch(c->store->cfg.side_dir, c->id, name);
}

void store_foreach(struct store *s, void (*fn)(struct kv_ctx *c, void *arg), void *arg)
{
	pthread_mutex_lock(&s->mu);
	uint32_t n = s->n_ctx;
	struct kv_ctx **snap = malloc((n ? n : 1) * sizeof(*snap));
	if (!snap) {
		pthread_mutex_unlock(&s->mu);
		return;
	}
	uint32_t m = 0;
	for (uint32_t i = 0; i < n; i++)
		if (!s->ctx[i]->derived_of) {
			snap[m] = s->ctx[i];
			kv_ctx_get(snap[m++]);
		}
	n = m;
	pthread_mutex_unlock(&s->mu);
	/* sorted by id so that LIST pages are stable */
	for (uint32_t i = 1; i < n; i++)
		for (uint32_t j = i; j > 0 && snap[j - 1]->id > snap[j]->id; j--) {
			struct kv_ctx *t = snap[j];
			snap[j] = snap[j - 1];
			snap[j - 1] = t;
		}
	for (uint32_t i = 0; i < n; i++) {
		fn(snap[i], arg);
		kv_ctx_put(snap[i]);
	}
	free(snap);
}

uint32_t store_count(struct store *s)
{
	pthread_mutex_lock(&s->mu);
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->n_ctx; i++)
		n += !s->ctx[i]->derived_of;
	pthread_mutex_unlock(&s->mu);
	return n;
}

uint32_t store_block_tokens(const struct store *s) { return s->cfg.block_tokens; }
uint64_t kv_ctx_id(const struct kv_ctx *c) { return c->id; }
const char *kv_ctx_name(const struct kv_ctx *c) { return c->name; }
uint32_t kv_ctx_owner(const struct kv_ctx *c) { return c->owner; }
const struct kv_geometry *kv_ctx_geometry(const struct kv_ctx *c) { return &c->geom; }
uint32_t kv_ctx_block_tokens(const struct kv_ctx *c) { return c->B; }

static uint64_t shortest_layer(const struct kv_ctx *c)
{
	uint64_t t = UINT64_MAX;
	for (uint32_t l = 0; l < c->geom.n_layers; l++)
		if (c->layers[l].tokens < t)
			t = c->layers[l].tokens;
	return t;
}

void kv_ctx_info(struct kv_ctx *c, struct kv_ctx_info *out)
{
	pthread_rwlock_rdlock(&c->lock);
	out->sealed = c->sealed;
	out->recovered = c->recovered;
	out->tokens = shortest_layer(c);
	out->bytes = atomic_load(&c->bytes);
	pthread_rwlock_unlock(&c->lock);
}

/* ---- durability ---- */

/*
 * Writes in flight while blocks are made durable. An APPEND's blocks lie in
 * runs of adjacent slots that go out as requests of up to 1 MiB, and this
 * disk writes those fastest a few at a time, as fio's sequential write
 * does: 6 rounds of 4 GiB of STREAM APPENDs against fio gave a median
 * ratio of 0.66 at depth 4 and 0.51 at 128.
 */
#define WRITE_QD 4

/* A block's checksum (and trailer), just before its write goes out. */
static void prepare_block(struct ssd_io *io)
{
	struct pending *q = io->arg;
	const struct kv_ctx *c = q->c;
	if (q->src_k) {
		const size_t half = c->block_bytes / 2;
		q->k->checksum = record_block_checksum2(q->src_k, half, q->src_v, half, c->id, q->layer, q->head,
							q->block);
	} else if (c->trailer) {
		struct block_trailer tr = {
			.ctx_id = c->id, .layer = q->layer, .head = q->head, .block = q->block,
			.tokens = q->tokens, .data_bytes = (uint32_t)c->block_bytes,
			.checksum = record_checksum(q->k->mem, c->block_bytes),
		};
		q->k->checksum = tr.checksum;
		record_trailer_encode(q->k->mem + c->slot_bytes - RECORD_TRAILER_SIZE, &tr);
	} else {
		q->k->checksum = record_block_checksum(q->k->mem, c->block_bytes, c->id, q->layer, q->head, q->block);
	}
}

/*
 * Take slots for @p p and write the blocks, each checksummed as its write
 * goes out (while earlier ones are in flight: an APPEND's checksums cost
 * about a tenth of its writes). Context write lock held. On failure every
 * slot taken is given back.
 */
static int write_blocks(struct kv_ctx *c, struct pending *p, size_t n, const char **why)
{
	struct store *s = c->store;
	int rc = 0;
	size_t taken = 0;
	struct ssd_io *ios = calloc(n ? n : 1, sizeof(*ios));
	if (!ios)
		return -ENOMEM;
	for (; taken < n; taken++) {
		struct pending *q = &p[taken];
		if ((rc = ssd_slot_alloc(c->file, &q->k->slot))) {
			*why = rc == -ENOSPC ? "the SSD tier is full (its file system, or --ssd-max)" :
						"cannot allocate an SSD slot";
			goto undo;
		}
		q->c = c;
		if (q->src_k)
			ios[taken] = (struct ssd_io){ .f = c->file, .slot = q->k->slot, .buf = (void *)q->src_k,
						      .buf2 = (void *)q->src_v, .split = (uint32_t)(c->block_bytes / 2),
						      .write = true, .prepare = prepare_block, .arg = q };
		else
			ios[taken] = (struct ssd_io){ .f = c->file, .slot = q->k->slot, .buf = q->k->mem,
						      .write = true, .prepare = prepare_block, .arg = q };
	}
	if ((rc = ssd_submit_qd(s->cfg.ssd, ios, (unsigned)n, WRITE_QD))) {
		*why = rc == -ENOSPC ? "the SSD file system is full" : "SSD write failed";
		goto undo;
	}
	free(ios);
	/* streamed blocks are on SSD only: a reader loads them from their slot,
	 * and once loaded they may leave RAM again (no RAM copy to lose) */
	pthread_mutex_lock(&s->res_mu);
	for (size_t i = 0; i < n; i++)
		if (p[i].src_k)
			p[i].k->durable = true;
	pthread_mutex_unlock(&s->res_mu);
	return 0;
undo:
	for (size_t i = 0; i < taken; i++)
		ssd_slot_free(c->file, p[i].k->slot);
	free(ios);
	return rc;
}

/*
 * The sync point: one fdatasync of the block file, then one catalog
 * transaction naming every written block (c->unsynced) with the context
 * record at its written lengths. Context write lock held. On failure the
 * catalog is unchanged and the blocks stay unnamed.
 */
static int commit_written(struct kv_ctx *c, bool seal, const char **why)
{
	struct store *s = c->store;
	const size_t n = c->n_unsynced;
	const struct pending *p = c->unsynced;
	int rc = n ? ssd_sync(c->file) : 0;
	if (rc) {
		*why = "SSD sync failed";
		return rc;
	}
	uint64_t *saved = malloc(sizeof(uint64_t) * c->geom.n_layers);
	if (!saved)
		return -ENOMEM;
	for (uint32_t l = 0; l < c->geom.n_layers; l++) {
		saved[l] = c->layers[l].durable_tokens;
		c->layers[l].durable_tokens = c->layers[l].written_tokens;
	}
	struct catalog_txn *t = NULL;
	if (!(rc = catalog_begin(s->cfg.catalog, &t))) {
		for (size_t i = 0; i < n && !rc; i++) {
			struct block_record br = { .slot = p[i].k->slot, .checksum = p[i].k->checksum,
						   .tokens = p[i].tokens };
			rc = catalog_put_block(t, c->id, p[i].layer, p[i].head, p[i].block, &br);
		}
		if (!rc)
			rc = put_ctx_record(c, t, seal);
		if (rc)
			catalog_abort(t);
		else
			rc = catalog_commit(t);
	}
	if (rc) {
		for (uint32_t l = 0; l < c->geom.n_layers; l++)
			c->layers[l].durable_tokens = saved[l];
		free(saved);
		*why = rc == -ENOSPC ? "the catalog is full" : "catalog commit failed";
		return rc;
	}
	free(saved);
	pthread_mutex_lock(&s->res_mu);
	for (size_t i = 0; i < n; i++) {
		p[i].k->durable = true;
		if (!p[i].streamed)
			lru_push(s, p[i].k);     /* a RAM block may leave RAM now */
	}
	pthread_mutex_unlock(&s->res_mu);
	c->n_unsynced = 0;
	c->unsynced_bytes = 0;
	return 0;
}

/*
 * Write @p p (new blocks of this request) and, when @p now, reach a sync
 * point. Context write lock held; written_tokens already counts them. On
 * failure this request's blocks are unnamed and their slots given back;
 * blocks of earlier, acknowledged requests that a failed sync point could
 * not name fence the context (sync_failed).
 */
static int write_and_sync(struct kv_ctx *c, struct pending *p, size_t n, bool now, bool seal,
			  const char **why)
{
	if (c->n_unsynced + n > c->cap_unsynced) {
		size_t cap = c->cap_unsynced ? c->cap_unsynced : 256;
		while (cap < c->n_unsynced + n)
			cap *= 2;
		struct pending *q = realloc(c->unsynced, cap * sizeof(*q));
		if (!q) {
			*why = "out of memory";
			return -ENOMEM;
		}
		c->unsynced = q;
		c->cap_unsynced = cap;
	}
	int rc = write_blocks(c, p, n, why);
	if (rc)
		return rc;
	const size_t before = c->n_unsynced;
	for (size_t i = 0; i < n; i++) {
		c->unsynced[before + i] = p[i];
		c->unsynced[before + i].src_k = c->unsynced[before + i].src_v = NULL;  /* the request's bytes go */
	}
	c->n_unsynced += n;
	c->unsynced_bytes += n * (uint64_t)c->slot_bytes;
	if (!now || !(rc = commit_written(c, seal, why)))
		return 0;
	c->n_unsynced = before;
	c->unsynced_bytes -= n * (uint64_t)c->slot_bytes;
	for (size_t i = 0; i < n; i++)
		ssd_slot_free(c->file, p[i].k->slot);
	pthread_mutex_lock(&c->store->res_mu);
	for (size_t i = 0; i < n; i++)
		p[i].k->durable = false;
	pthread_mutex_unlock(&c->store->res_mu);
	if (before)
		c->sync_failed = rc;
	return rc;
}

int kv_ctx_append(struct kv_ctx *c, uint32_t layer_begin, uint32_t layer_count,
		  uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len,
		  uint64_t *layer_tokens, uint64_t *context_tokens, const char **why)
{
	return kv_ctx_append_ex(c, layer_begin, layer_count, token_begin, n_tokens, data, len, 0, layer_tokens,
				context_tokens, why);
}

int kv_ctx_append_ex(struct kv_ctx *c, uint32_t layer_begin, uint32_t layer_count,
		     uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len, unsigned flags,
		     uint64_t *layer_tokens, uint64_t *context_tokens, const char **why)
{
	const struct kv_geometry *g = &c->geom;
	struct store *s = c->store;
	const uint64_t B = c->B;
	const uint32_t H = g->n_kv_heads;
	const size_t row = (size_t)g->head_dim * g->elem_size;
	const struct tier_ops *ops = s->cfg.host_ops;
	int rc = 0;

	*why = NULL;
	if (layer_count == 0 || layer_begin >= g->n_layers || layer_count > g->n_layers - layer_begin) {
		*why = "layer range outside the context's layers";
		return -EINVAL;
	}
	if (n_tokens == 0) {
		*why = "n_tokens must be at least 1";
		return -EINVAL;
	}
	/* layer_count <= 1024, heads <= 1024, row <= 4096, n_tokens < 2^32: no overflow in 64 bits */
	uint64_t want = (uint64_t)layer_count * 2 * H * n_tokens * row;
	if (want != len) {
		*why = "data size does not match layer_count x 2 x n_kv_heads x n_tokens x head_dim x dtype";
		return -EINVAL;
	}

	pthread_rwlock_wrlock(&c->lock);
	if (c->sealed) {
		*why = "context is sealed";
		rc = -EROFS;
		goto out;
	}
	if (c->sync_failed) {
		*why = "an earlier sync point of this context failed: it is durable up to its catalog length, "
		       "and a restart serves it from there";
		rc = -EIO;
		goto out;
	}
	for (uint32_t l = layer_begin; l < layer_begin + layer_count; l++) {
		if (c->layers[l].tokens != token_begin) {
			*why = "token_begin is not the layer's current length";
			rc = -ERANGE;
			goto out;
		}
	}
	if (token_begin + n_tokens > 0xFFFFFFFFull) {
		*why = "a context holds at most 2^32-1 tokens";
		rc = -EOVERFLOW;
		goto out;
	}

	/* New blocks first, so that a refusal leaves nothing behind. */
	const uint64_t old_blocks = (token_begin + B - 1) / B;
	const uint64_t new_blocks = (token_begin + n_tokens + B - 1) / B;
	const uint64_t per_layer = (new_blocks - old_blocks) * H;
	/* Streamed: every new block is whole and goes from the request to its
	 * slot with O_DIRECT, so keys and values must sit at 4 KiB boundaries
	 * and fill the slot; anything else is served the usual way. */
	const bool stream = (flags & KV_APPEND_STREAM) && s->cfg.ssd && !c->trailer &&
			    c->slot_bytes == c->block_bytes && token_begin % B == 0 && n_tokens % B == 0 &&
			    (uintptr_t)data % SSD_ALIGN == 0 && (B * row) % SSD_ALIGN == 0 &&
			    ((uint64_t)n_tokens * row) % SSD_ALIGN == 0;
	uint32_t done_layers = 0;
	uint64_t done_in_layer = 0;
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		done_in_layer = 0;
		if ((rc = reserve_rows(c, ly, new_blocks))) {
			*why = "out of memory for the block table";
			break;
		}
		for (; done_in_layer < per_layer; done_in_layer++) {
			uint64_t idx = old_blocks * H + done_in_layer;
			struct blk *k = blk_at(ly, H, idx / H, (uint32_t)(idx % H));
			if (stream) {
				k->mem = NULL;
				k->state = BLK_ABSENT;
				k->durable = false;
				k->bad = false;
				k->pins = 0;
				continue;
			}
			if ((rc = res_alloc(s, k, c->slot_bytes))) {
				*why = "host memory budget exhausted by blocks in use (raise --host-mem)";
				break;
			}
			k->state = BLK_RESIDENT;
			k->durable = false;
			k->bad = false;
			k->pins = 0;
		}
		if (rc)
			break;
		done_layers++;
	}
	if (rc) {
		for (uint32_t i = 0; i <= done_layers && i < layer_count; i++) {
			struct layer *ly = &c->layers[layer_begin + i];
			uint64_t n = i < done_layers ? per_layer : done_in_layer;
			for (uint64_t j = 0; j < n; j++) {
				uint64_t idx = old_blocks * H + j;
				struct blk *k = blk_at(ly, H, idx / H, (uint32_t)(idx % H));
				ops->block_free(s->cfg.host, k->mem, c->slot_bytes);
				k->mem = NULL;
				k->state = BLK_ABSENT;
			}
		}
		pthread_mutex_unlock(&s->res_mu);
		goto out;
	}
	pthread_mutex_unlock(&s->res_mu);

	/* Copy: a head's tokens are contiguous in the request, so each block
	 * takes at most two memcpy runs (keys and values). */
	const uint8_t *src = data;
	for (uint32_t i = 0; i < layer_count && !stream; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		for (uint32_t kvsel = 0; kvsel < 2; kvsel++) {
			for (uint32_t h = 0; h < H; h++) {
				const uint8_t *sp = src;
				uint64_t tok = token_begin, left = n_tokens;
				while (left) {
					uint64_t b = tok / B, off = tok % B;
					uint64_t n = B - off < left ? B - off : left;
					uint8_t *blk = blk_at(ly, H, b, h)->mem;
					memcpy(blk + kvsel * B * row + off * row, sp, n * row);
					sp += n * row;
					tok += n;
					left -= n;
				}
				src += (size_t)n_tokens * row;
			}
		}
	}

	if (s->cfg.ssd) {
		/* The blocks this append filled are written before it is
		 * acknowledged and named by the catalog at a sync point: this
		 * request, unless it streams and the context has streamed less
		 * than stream_sync_bytes since the last one. */
		size_t cap = 0, n = 0;
		uint64_t *written = malloc(sizeof(uint64_t) * layer_count);
		for (uint32_t i = 0; i < layer_count; i++) {
			const struct layer *ly = &c->layers[layer_begin + i];
			cap += ((token_begin + n_tokens) / B - ly->written_tokens / B) * H;
		}
		struct pending *p = malloc(sizeof(*p) * (cap ? cap : 1));
		if (!written || !p) {
			free(written);
			free(p);
			*why = "out of memory";
			rc = -ENOMEM;
			goto rollback;
		}
		for (uint32_t i = 0; i < layer_count; i++) {
			uint32_t l = layer_begin + i;
			struct layer *ly = &c->layers[l];
			uint64_t full = (token_begin + n_tokens) / B;
			/* head by head: slots are taken in this order, so a head's
			 * consecutive blocks lie side by side on SSD and a read of
			 * neighbouring blocks is one request */
			for (uint32_t h = 0; h < H; h++)
				for (uint64_t b = ly->written_tokens / B; b < full; b++) {
					p[n] = (struct pending){ .layer = l, .head = h, .block = b,
								 .tokens = (uint32_t)B, .k = blk_at(ly, H, b, h),
								 .streamed = stream };
					if (stream) {
						/* [layer][2][head][token][d]: this block's keys and values */
						const uint8_t *base = (const uint8_t *)data +
								      (size_t)i * 2 * H * n_tokens * row +
								      (b * B - token_begin) * row;
						p[n].src_k = base + (size_t)h * n_tokens * row;
						p[n].src_v = base + ((size_t)H + h) * n_tokens * row;
					}
					n++;
				}
			written[i] = ly->written_tokens;
			ly->written_tokens = full * B;
		}
		const uint64_t every = s->cfg.stream_sync_bytes;
		const bool now = !stream || (flags & KV_APPEND_SYNC) || !every ||
				 c->unsynced_bytes + n * (uint64_t)c->slot_bytes >= every;
		rc = write_and_sync(c, p, n, now, false, why);
		free(p);
		if (rc)
			for (uint32_t i = 0; i < layer_count; i++)
				c->layers[layer_begin + i].written_tokens = written[i];
		free(written);
		if (rc)
			goto rollback;
	}
	for (uint32_t i = 0; i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		ly->n_blocks = new_blocks;
		ly->tokens = token_begin + n_tokens;
	}
	atomic_fetch_add(&c->bytes, (uint64_t)layer_count * per_layer * c->block_bytes);
	*layer_tokens = token_begin + n_tokens;
	*context_tokens = shortest_layer(c);
	goto out;

rollback:
	/* The layers keep their lengths; the blocks this append added go. */
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		for (uint64_t j = 0; j < per_layer; j++) {
			uint64_t idx = old_blocks * H + j;
			struct blk *k = blk_at(ly, H, idx / H, (uint32_t)(idx % H));
			ops->block_free(s->cfg.host, k->mem, c->slot_bytes);
			k->mem = NULL;
			k->state = BLK_ABSENT;
		}
	}
	pthread_mutex_unlock(&s->res_mu);
out:
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

int kv_ctx_seal(struct kv_ctx *c, uint64_t *tokens)
{
	int rc = 0;
	pthread_rwlock_wrlock(&c->lock);
	uint64_t t = c->layers[0].tokens;
	for (uint32_t l = 1; l < c->geom.n_layers; l++)
		if (c->layers[l].tokens != t)
			rc = -EINVAL;
	if (!rc && c->sync_failed && !c->sealed)
		rc = -EIO;
	if (!rc && c->store->cfg.ssd && !c->sealed) {
		/* the partial last blocks and every block not yet named become
		 * durable with the sealed record */
		const uint32_t H = c->geom.n_kv_heads;
		struct pending *p = malloc(sizeof(*p) * c->geom.n_layers * H);
		uint64_t *written = malloc(sizeof(uint64_t) * c->geom.n_layers);
		size_t n = 0;
		if (!p || !written) {
			rc = -ENOMEM;
		} else {
			for (uint32_t l = 0; l < c->geom.n_layers; l++) {
				struct layer *ly = &c->layers[l];
				written[l] = ly->written_tokens;
				ly->written_tokens = t;
				if (t % c->B == 0)
					continue;
				for (uint32_t h = 0; h < H; h++)
					p[n++] = (struct pending){ .layer = l, .head = h, .block = t / c->B,
								   .tokens = (uint32_t)(t % c->B),
								   .k = blk_at(ly, H, t / c->B, h) };
			}
			const char *why;
			if ((rc = write_and_sync(c, p, n, true, true, &why)))
				for (uint32_t l = 0; l < c->geom.n_layers; l++)
					c->layers[l].written_tokens = written[l];
		}
		free(p);
		free(written);
	}
	if (!rc) {
		c->sealed = true;
		c->recovered = false;
		*tokens = t;
	}
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

/* ---- reading ---- */

void kv_ctx_read_begin(struct kv_ctx *c) { pthread_rwlock_rdlock(&c->lock); }
void kv_ctx_read_end(struct kv_ctx *c) { pthread_rwlock_unlock(&c->lock); }

uint64_t kv_ctx_layer_tokens(struct kv_ctx *c, uint32_t layer)
{
	return layer < c->geom.n_layers ? c->layers[layer].tokens : 0;
}

static void unpin_locked(struct store *s, struct blk *k)
{
	if (k->pins && --k->pins == 0)
		lru_push(s, k);
}

void kv_ctx_unpin(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b0, uint32_t n)
{
	struct store *s = c->store;
	struct layer *ly = &c->layers[layer];
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < n; i++)
		unpin_locked(s, blk_at(ly, c->geom.n_kv_heads, b0 + i, head));
	pthread_mutex_unlock(&s->res_mu);
}

/* Check a block read from SSD against its trailer, or its identity, and the catalog. */
static bool block_ok(const struct kv_ctx *c, const struct blk *k, uint32_t layer, uint32_t head,
		     uint64_t b)
{
	if (!c->trailer)
		return record_block_checksum(k->mem, c->block_bytes, c->id, layer, head, b) == k->checksum;
	struct block_trailer tr;
	if (record_trailer_decode(k->mem + c->slot_bytes - RECORD_TRAILER_SIZE, &tr))
		return false;
	return tr.ctx_id == c->id && tr.layer == layer && tr.head == head && tr.block == b &&
	       tr.data_bytes == c->block_bytes && tr.checksum == k->checksum &&
	       record_checksum(k->mem, c->block_bytes) == k->checksum;
}

/* What a read's check needs; the checksum runs as each read lands. */
struct read_check {
	const struct kv_ctx *c;
	const struct blk *k;
	uint32_t layer, head;
	uint64_t b;
};

static int check_read(struct ssd_io *io)
{
	const struct read_check *rc = io->arg;
	return block_ok(rc->c, rc->k, rc->layer, rc->head, rc->b) ? 0 : -EBADMSG;
}

static void mark_bad_in_catalog(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b,
				const struct blk *k)
{
	struct catalog_txn *t;
	if (catalog_begin(c->store->cfg.catalog, &t))
		return;
	struct block_record br = { .slot = k->slot, .checksum = k->checksum, .flags = BLOCK_BAD,
				   .tokens = (uint32_t)c->B };
	if (catalog_put_block(t, c->id, layer, head, b, &br))
		catalog_abort(t);
	else
		catalog_commit(t);
}

/*
 * Residency mutex held: block @p b's read failed with @p result. It goes back
 * to absent; one that failed its check is never served: it is marked bad,
 * and the first such is left in *bad_at for the catalog.
 */
static void read_failed(struct kv_ctx *c, struct blk *k, int result, uint64_t b, uint64_t *bad_at)
{
	struct store *s = c->store;
	s->cfg.host_ops->block_free(s->cfg.host, k->mem, c->slot_bytes);
	k->mem = NULL;
	k->state = BLK_ABSENT;
	k->ahead = false;
	if (result == -EBADMSG) {
		k->bad = true;
		atomic_fetch_add(&s->bad_blocks, 1);
		if (*bad_at == UINT64_MAX)
			*bad_at = b;
	}
}

/*
 * Pin blocks list[i] (or BLK_OF(i) when list is NULL) of (layer, head). A
 * block read ahead (load_ahead()) and pinned here for the first time counts
 * the miss it saved.
 */
static int pin_blocks(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *list, uint64_t b0,
		      uint32_t n, const uint8_t **out, uint64_t *err)
{
#define BLK_OF(i) (list ? list[i] : b0 + (i))
	struct store *s = c->store;
	struct layer *ly = &c->layers[layer];
	const uint32_t H = c->geom.n_kv_heads;
	int rc = 0;
	uint32_t pinned = 0;
	struct ssd_io *ios = NULL;
	struct read_check *checks = NULL;
	uint32_t *load_idx = NULL;
	unsigned n_load = 0;

	pthread_mutex_lock(&s->res_mu);
	for (; pinned < n; pinned++) {
		struct blk *k = blk_at(ly, H, BLK_OF(pinned), head);
		if (k->bad) {
			rc = -EBADMSG;
			*err = BLK_OF(pinned);
			break;
		}
		if (k->state == BLK_ABSENT) {
			if (!ios) {
				ios = calloc(n, sizeof(*ios));
				checks = calloc(n, sizeof(*checks));
				load_idx = calloc(n, sizeof(*load_idx));
				if (!ios || !checks || !load_idx) {
					rc = -ENOMEM;
					break;
				}
			}
			/* RAM full of blocks being read ahead: they are evictable once read */
			while ((rc = res_alloc(s, k, c->slot_bytes)) == -ENOMEM && s->ahead_loading)
				pthread_cond_wait(&s->res_cv, &s->res_mu);
			if (rc)
				break;
			k->state = BLK_LOADING;
			checks[n_load] = (struct read_check){ .c = c, .k = k, .layer = layer, .head = head,
							      .b = BLK_OF(pinned) };
			ios[n_load] = (struct ssd_io){ .f = c->file, .slot = k->slot, .buf = k->mem,
						       .check = check_read, .arg = &checks[n_load] };
			load_idx[n_load++] = pinned;
			atomic_fetch_add(&s->misses, 1);
		} else {
			lru_remove(s, k);
			if (k->ahead) {
				k->ahead = false;
				atomic_fetch_add(&s->misses, 1);
				atomic_fetch_add(&s->prefetch_used, 1);
			} else {
				atomic_fetch_add(&s->hits, 1);
			}
		}
		k->pins++;
	}
	pthread_mutex_unlock(&s->res_mu);

	/* every missing block of the request in one batch */
	int io_rc = n_load ? ssd_submit(s->cfg.ssd, ios, n_load) : 0;
	if (io_rc == -EBADMSG)
		io_rc = 0;          /* a failed check is handled per block below */
	uint64_t bad_at = UINT64_MAX;
	pthread_mutex_lock(&s->res_mu);
	for (unsigned i = 0; i < n_load; i++) {
		uint64_t b = BLK_OF(load_idx[i]);
		struct blk *k = blk_at(ly, H, b, head);
		if (ios[i].result == 0) {
			k->state = BLK_RESIDENT;
			continue;
		}
		read_failed(c, k, ios[i].result, b, &bad_at);
	}
	pthread_cond_broadcast(&s->res_cv);
	/* blocks another request was loading: wait for them */
	for (uint32_t i = 0; i < pinned && !rc; i++) {
		struct blk *k = blk_at(ly, H, BLK_OF(i), head);
		while (k->state == BLK_LOADING)
			pthread_cond_wait(&s->res_cv, &s->res_mu);
		if (k->state != BLK_RESIDENT) {
			rc = k->bad ? -EBADMSG : (io_rc ? io_rc : -EIO);
			*err = BLK_OF(i);
		} else {
			out[i] = k->mem;
		}
	}
	if (!rc && bad_at != UINT64_MAX) {
		rc = -EBADMSG;
		*err = bad_at;
	}
	if (rc) {
		for (uint32_t i = 0; i < pinned; i++)
			unpin_locked(s, blk_at(ly, H, BLK_OF(i), head));
	}
	pthread_mutex_unlock(&s->res_mu);
	if (bad_at != UINT64_MAX)
		mark_bad_in_catalog(c, layer, head, bad_at, blk_at(ly, H, bad_at, head));
	free(ios);
	free(checks);
	free(load_idx);
	return rc;
#undef BLK_OF
}

int kv_ctx_pin(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b0, uint32_t n,
	       const uint8_t **out, uint64_t *err)
{
	return pin_blocks(c, layer, head, NULL, b0, n, out, err);
}

int kv_ctx_pin_list(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n,
		    const uint8_t **out, uint64_t *err)
{
	return pin_blocks(c, layer, head, blocks, 0, n, out, err);
}

void kv_ctx_unpin_list(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n)
{
	struct store *s = c->store;
	struct layer *ly = &c->layers[layer];
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < n; i++)
		unpin_locked(s, blk_at(ly, c->geom.n_kv_heads, blocks[i], head));
	pthread_mutex_unlock(&s->res_mu);
}

/* ---- reading ahead ---- */

/* Blocks one read-ahead batch pins at most: what one submit reads at depth. */
#define PREFETCH_BATCH 1024u

/*
 * Read the absent blocks among @p list [n] (all below the layer's end) into
 * RAM, in one batch; refresh the others' place in the LRU. It never waits
 * for another request's reads, so a pin that waits for RAM held by these
 * (pin_blocks()) cannot wait on itself. Failures are left for the pin that
 * needs the block: a block whose read fails goes back to absent (or bad).
 */
static void load_ahead(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *list, uint32_t n,
		       struct ssd_io *ios, struct read_check *checks, struct blk **ks, uint64_t *bs)
{
	struct store *s = c->store;
	struct layer *ly = &c->layers[layer];
	const uint32_t H = c->geom.n_kv_heads;
	uint32_t n_load = 0;
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < n; i++) {
		struct blk *k = blk_at(ly, H, list[i], head);
		if (k->bad || k->state == BLK_LOADING)
			continue;
		if (k->state == BLK_RESIDENT) {
			if (k->in_lru) {     /* about to be used: last to leave */
				lru_remove(s, k);
				lru_push(s, k);
			}
			continue;
		}
		if (res_alloc(s, k, c->slot_bytes))
			break;               /* RAM is full of blocks in use: read no more */
		k->state = BLK_LOADING;
		k->ahead = true;             /* a pin that waits for it counts its miss */
		k->pins++;
		checks[n_load] = (struct read_check){ .c = c, .k = k, .layer = layer, .head = head, .b = list[i] };
		ios[n_load] = (struct ssd_io){ .f = c->file, .slot = k->slot, .buf = k->mem, .check = check_read,
					       .arg = &checks[n_load] };
		ks[n_load] = k;
		bs[n_load++] = list[i];
	}
	s->ahead_loading += n_load;
	pthread_mutex_unlock(&s->res_mu);
	if (!n_load)
		return;
	(void)ssd_submit(s->cfg.ssd, ios, n_load);
	uint64_t bad_at = UINT64_MAX;
	pthread_mutex_lock(&s->res_mu);
	for (uint32_t i = 0; i < n_load; i++) {
		struct blk *k = ks[i];
		atomic_fetch_add(&s->prefetched, 1);
		if (ios[i].result == 0) {
			k->state = BLK_RESIDENT;
		} else {
			read_failed(c, k, ios[i].result, bs[i], &bad_at);
		}
		unpin_locked(s, k);
	}
	s->ahead_loading -= n_load;
	pthread_cond_broadcast(&s->res_cv);
	pthread_mutex_unlock(&s->res_mu);
	if (bad_at != UINT64_MAX)
		mark_bad_in_catalog(c, layer, head, bad_at, blk_at(ly, H, bad_at, head));
}

/* What one read-ahead batch is read with; the thread's own, kept across requests. */
struct ahead_batch {
	struct ssd_io ios[PREFETCH_BATCH];
	struct read_check checks[PREFETCH_BATCH];
	struct blk *ks[PREFETCH_BATCH];
	uint64_t bs[PREFETCH_BATCH];
};

static void prefetch_run(struct prefetch_req *r, struct ahead_batch *b)
{
	struct kv_ctx *c = r->c;
	kv_ctx_read_begin(c);
	/* the context may have been dropped or cut since: read only what is still there */
	const uint64_t n_blocks = r->layer < c->geom.n_layers ? c->layers[r->layer].n_blocks : 0;
	for (uint32_t i = 0; i < r->n; i += PREFETCH_BATCH) {
		uint32_t n = r->n - i < PREFETCH_BATCH ? r->n - i : PREFETCH_BATCH, keep = 0;
		for (uint32_t j = 0; j < n; j++)
			if (r->blocks[i + j] < n_blocks)
				r->blocks[i + keep++] = r->blocks[i + j];
		load_ahead(c, r->layer, r->head, r->blocks + i, keep, b->ios, b->checks, b->ks, b->bs);
	}
	kv_ctx_read_end(c);
}

static void *prefetch_main(void *arg)
{
	struct store *s = arg;
	/* without it the thread drops what it is given: reading ahead is a hint */
	struct ahead_batch *b = malloc(sizeof(*b));
	pthread_mutex_lock(&s->pf_mu);
	for (;;) {
		while (!s->pf_head && !s->pf_stop)
			pthread_cond_wait(&s->pf_cv, &s->pf_mu);
		struct prefetch_req *r = s->pf_head;
		if (!r)
			break;                  /* stopping, nothing left */
		if (!(s->pf_head = r->next))
			s->pf_tail = &s->pf_head;
		const bool stopping = s->pf_stop;
		pthread_mutex_unlock(&s->pf_mu);
		/* stopping: what is queued is dropped */
		if (!stopping && b)
			prefetch_run(r, b);
		kv_ctx_put(r->c);
		pthread_mutex_lock(&s->pf_mu);
		if (s->n_pf_free < PF_FREE_MAX) {
			r->next = s->pf_free;
			s->pf_free = r;
			s->n_pf_free++;
		} else {
			free(r);
		}
	}
	pthread_mutex_unlock(&s->pf_mu);
	free(b);
	return NULL;
}

int kv_ctx_prefetch(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n)
{
	struct store *s = c->store;
	if (!s->cfg.ssd || !n)
		return 0;                       /* everything is in RAM already */
	if (layer >= c->geom.n_layers || head >= c->geom.n_kv_heads)
		return -EINVAL;
	if (n > (UINT32_MAX - sizeof(struct prefetch_req)) / sizeof(uint64_t))
		return -EOVERFLOW;
	/* a request read before, large enough; else a new one with room to be reused */
	struct prefetch_req *r = NULL;
	pthread_mutex_lock(&s->pf_mu);
	for (struct prefetch_req **pp = &s->pf_free; *pp; pp = &(*pp)->next)
		if ((*pp)->cap >= n) {
			r = *pp;
			*pp = r->next;
			s->n_pf_free--;
			break;
		}
	pthread_mutex_unlock(&s->pf_mu);
	uint32_t cap = r ? r->cap : n;
	if (!r) {
		cap = n < 1024 ? 1024 : n;
		if (!(r = malloc(sizeof(*r) + (size_t)cap * sizeof(uint64_t))))
			return -ENOMEM;
	}
	*r = (struct prefetch_req){ .c = c, .layer = layer, .head = head, .n = n, .cap = cap };
	memcpy(r->blocks, blocks, (size_t)n * sizeof(uint64_t));
	kv_ctx_get(c);
	int rc = 0;
	pthread_mutex_lock(&s->pf_mu);
	if (!s->pf_running && !s->pf_stop) {
		/* started on first use: a store that never reads ahead has no thread */
		if ((rc = -pthread_create(&s->pf_thread, NULL, prefetch_main, s)) == 0)
			s->pf_running = true;
	}
	if (s->pf_running && !s->pf_stop) {
		*s->pf_tail = r;
		s->pf_tail = &r->next;
		pthread_cond_signal(&s->pf_cv);
		r = NULL;
	} else if (!rc) {
		rc = -ESHUTDOWN;
	}
	pthread_mutex_unlock(&s->pf_mu);
	if (r) {
		kv_ctx_put(c);
		free(r);
	}
	return rc;
}

/* Stop the read-ahead thread: what is being read finishes, what is queued is dropped. */
static void prefetch_stop(struct store *s)
{
	pthread_mutex_lock(&s->pf_mu);
	s->pf_stop = true;
	const bool running = s->pf_running;
	pthread_cond_broadcast(&s->pf_cv);
	pthread_mutex_unlock(&s->pf_mu);
	if (running)
		pthread_join(s->pf_thread, NULL);
	while (s->pf_free) {
		struct prefetch_req *r = s->pf_free;
		s->pf_free = r->next;
		free(r);
	}
	s->n_pf_free = 0;
}

void *kv_ctx_aux_install(struct kv_ctx *c, void *aux, void (*free_fn)(void *aux))
{
	struct store *s = c->store;
	pthread_mutex_lock(&s->mu);
	if (!c->aux) {
		c->aux = aux;
		c->aux_free = free_fn;
	}
	void *cur = c->aux;
	pthread_mutex_unlock(&s->mu);
	return cur;
}

void *kv_ctx_aux(struct kv_ctx *c)
{
	pthread_mutex_lock(&c->store->mu);
	void *cur = c->aux;
	pthread_mutex_unlock(&c->store->mu);
	return cur;
}


int kv_ctx_fetch(struct kv_ctx *c, uint32_t layer, const uint64_t *ids, uint32_t n, void *out)
{
	const struct kv_geometry *g = &c->geom;
	const uint64_t B = c->B;
	const size_t row = (size_t)g->head_dim * g->elem_size;
	int rc = 0;
	if (layer >= g->n_layers)
		return -EINVAL;
	pthread_rwlock_rdlock(&c->lock);
	struct layer *ly = &c->layers[layer];
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] >= ly->tokens) {
			rc = -ERANGE;
			goto out;
		}
	}
	uint8_t *dst = out;
	for (uint32_t h = 0; h < g->n_kv_heads && !rc; h++) {
		for (uint32_t i = 0; i < n; i++) {
			uint64_t b = ids[i] / B, off = ids[i] % B, bad;
			const uint8_t *blk;
			if ((rc = kv_ctx_pin(c, layer, h, b, 1, &blk, &bad)))
				break;
			memcpy(dst + ((size_t)h * n + i) * row, blk + off * row, row);
			memcpy(dst + (((size_t)g->n_kv_heads + h) * n + i) * row, blk + (B + off) * row, row);
			kv_ctx_unpin(c, layer, h, b, 1);
		}
	}
out:
	pthread_rwlock_unlock(&c->lock);
	return rc;
}
