/* The block store: contexts, their per-layer block tables, append and fetch. */
#define _GNU_SOURCE
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct layer {
	uint64_t tokens;
	uint8_t **blocks;         /* [n_blocks][n_kv_heads] */
	uint64_t n_blocks;
	uint64_t cap_blocks;
};

struct kv_ctx {
	_Atomic uint32_t refs;
	uint64_t id;
	char *name;
	uint32_t owner;
	struct kv_geometry geom;
	struct store *store;      /* for its tier; the store outlives every handle */
	pthread_rwlock_t lock;
	bool sealed;
	size_t block_bytes;       /* 2 * B * d * elem */
	_Atomic uint64_t bytes;
	struct layer *layers;
};

struct store {
	struct store_config cfg;
	pthread_mutex_t mu;
	struct kv_ctx **ctx;
	uint32_t n_ctx, cap_ctx;
	uint64_t next_id;
};

int store_open(const struct store_config *cfg, struct store **out)
{
	if (!cfg->host_ops || !cfg->host || cfg->block_tokens == 0)
		return -EINVAL;
	struct store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->next_id = 1;
	pthread_mutex_init(&s->mu, NULL);
	*out = s;
	return 0;
}

static void ctx_free(struct kv_ctx *c)
{
	const struct tier_ops *ops = c->store->cfg.host_ops;
	struct tier *t = c->store->cfg.host;
	for (uint32_t l = 0; c->layers && l < c->geom.n_layers; l++) {
		struct layer *ly = &c->layers[l];
		for (uint64_t i = 0; i < ly->n_blocks * c->geom.n_kv_heads; i++)
			ops->block_free(t, ly->blocks[i], c->block_bytes);
		free(ly->blocks);
	}
	free(c->layers);
	pthread_rwlock_destroy(&c->lock);
	free(c->name);
	free(c);
}

void store_destroy(struct store *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_ctx; i++)
		kv_ctx_put(s->ctx[i]);
	free(s->ctx);
	pthread_mutex_destroy(&s->mu);
	free(s);
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

static struct kv_ctx *find_locked(struct store *s, uint64_t id, const char *name, size_t n)
{
	for (uint32_t i = 0; i < s->n_ctx; i++) {
		struct kv_ctx *c = s->ctx[i];
		if (id ? c->id == id : (strlen(c->name) == n && !memcmp(c->name, name, n)))
			return c;
	}
	return NULL;
}

int store_ctx_create(struct store *s, const char *name, size_t name_len,
		     const struct kv_geometry *g, uint32_t owner_uid, struct kv_ctx **out)
{
	int rc = -ENOMEM;
	struct kv_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->name = strndup(name, name_len);
	c->layers = calloc(g->n_layers, sizeof(*c->layers));
	if (!c->name || !c->layers) {
		free(c->name);
		free(c->layers);
		free(c);
		return -ENOMEM;
	}
	c->geom = *g;
	c->owner = owner_uid;
	c->store = s;
	c->block_bytes = 2ull * s->cfg.block_tokens * g->head_dim * g->elem_size;
	pthread_rwlock_init(&c->lock, NULL);
	atomic_store(&c->refs, 2);          /* the store's and the caller's */

	pthread_mutex_lock(&s->mu);
	if (find_locked(s, 0, name, name_len)) {
		rc = -EEXIST;
		goto fail_locked;
	}
	if (s->n_ctx == s->cap_ctx) {
		uint32_t cap = s->cap_ctx ? s->cap_ctx * 2 : 16;
		struct kv_ctx **a = realloc(s->ctx, cap * sizeof(*a));
		if (!a)
			goto fail_locked;
		s->ctx = a;
		s->cap_ctx = cap;
	}
	c->id = s->next_id++;
	s->ctx[s->n_ctx++] = c;
	pthread_mutex_unlock(&s->mu);
	*out = c;
	return 0;

fail_locked:
	pthread_mutex_unlock(&s->mu);
	atomic_store(&c->refs, 1);
	kv_ctx_put(c);
	return rc;
}

int store_ctx_find(struct store *s, uint64_t id, const char *name, size_t name_len,
		   struct kv_ctx **out)
{
	pthread_mutex_lock(&s->mu);
	struct kv_ctx *c = find_locked(s, id, name, name_len);
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

void store_foreach(struct store *s, void (*fn)(struct kv_ctx *c, void *arg), void *arg)
{
	pthread_mutex_lock(&s->mu);
	uint32_t n = s->n_ctx;
	struct kv_ctx **snap = malloc((n ? n : 1) * sizeof(*snap));
	if (!snap) {
		pthread_mutex_unlock(&s->mu);
		return;
	}
	for (uint32_t i = 0; i < n; i++) {
		snap[i] = s->ctx[i];
		kv_ctx_get(snap[i]);
	}
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
	uint32_t n = s->n_ctx;
	pthread_mutex_unlock(&s->mu);
	return n;
}

uint32_t store_block_tokens(const struct store *s) { return s->cfg.block_tokens; }
uint64_t kv_ctx_id(const struct kv_ctx *c) { return c->id; }
const char *kv_ctx_name(const struct kv_ctx *c) { return c->name; }
uint32_t kv_ctx_owner(const struct kv_ctx *c) { return c->owner; }
const struct kv_geometry *kv_ctx_geometry(const struct kv_ctx *c) { return &c->geom; }
uint32_t kv_ctx_block_tokens(const struct kv_ctx *c) { return c->store->cfg.block_tokens; }

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
	out->tokens = shortest_layer(c);
	out->bytes = atomic_load(&c->bytes);
	pthread_rwlock_unlock(&c->lock);
}

/* Make room in a layer's table for @p n_blocks rows. */
static int reserve_rows(struct kv_ctx *c, struct layer *ly, uint64_t n_blocks)
{
	if (n_blocks <= ly->cap_blocks)
		return 0;
	uint64_t cap = ly->cap_blocks ? ly->cap_blocks : 16;
	while (cap < n_blocks)
		cap *= 2;
	uint8_t **b = realloc(ly->blocks, cap * c->geom.n_kv_heads * sizeof(*b));
	if (!b)
		return -ENOMEM;
	ly->blocks = b;
	ly->cap_blocks = cap;
	return 0;
}

int kv_ctx_append(struct kv_ctx *c, uint32_t layer_begin, uint32_t layer_count,
		  uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len,
		  uint64_t *layer_tokens, uint64_t *context_tokens, const char **why)
{
	const struct kv_geometry *g = &c->geom;
	const uint64_t B = c->store->cfg.block_tokens;
	const size_t row = (size_t)g->head_dim * g->elem_size;  /* one token of one head */
	const struct tier_ops *ops = c->store->cfg.host_ops;
	struct tier *t = c->store->cfg.host;
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
	uint64_t want = (uint64_t)layer_count * 2 * g->n_kv_heads * n_tokens * row;
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

	/* Allocate every new block first so that a refusal leaves nothing behind. */
	uint64_t old_blocks = (token_begin + B - 1) / B;
	uint64_t new_blocks = (token_begin + n_tokens + B - 1) / B;
	uint64_t per_layer = (new_blocks - old_blocks) * g->n_kv_heads;
	uint32_t done_layers = 0;
	uint64_t done_in_layer = 0;
	for (uint32_t i = 0; i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		done_in_layer = 0;
		rc = reserve_rows(c, ly, new_blocks);
		if (rc) {
			*why = "out of memory for the block table";
			goto undo;
		}
		for (done_in_layer = 0; done_in_layer < per_layer; done_in_layer++) {
			void *p;
			rc = ops->block_alloc(t, c->block_bytes, &p);
			if (rc) {
				*why = "host memory budget exhausted (raise --host-mem)";
				goto undo;
			}
			ly->blocks[old_blocks * g->n_kv_heads + done_in_layer] = p;
		}
		done_layers++;
	}

	/* Copy: tokens of a head are contiguous in the request, so each block
	 * takes at most two memcpy runs (keys and values). */
	const uint8_t *src = data;
	for (uint32_t i = 0; i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		for (uint32_t kvsel = 0; kvsel < 2; kvsel++) {
			for (uint32_t h = 0; h < g->n_kv_heads; h++) {
				const uint8_t *s = src;
				uint64_t tok = token_begin, left = n_tokens;
				while (left) {
					uint64_t b = tok / B, off = tok % B;
					uint64_t n = B - off < left ? B - off : left;
					uint8_t *blk = ly->blocks[b * g->n_kv_heads + h];
					memcpy(blk + kvsel * B * row + off * row, s, n * row);
					s += n * row;
					tok += n;
					left -= n;
				}
				src += (size_t)n_tokens * row;
			}
		}
		ly->n_blocks = new_blocks;
		ly->tokens = token_begin + n_tokens;
	}
	atomic_fetch_add(&c->bytes, (uint64_t)layer_count * per_layer * c->block_bytes);
	*layer_tokens = token_begin + n_tokens;
	*context_tokens = shortest_layer(c);
	goto out;

undo:
	for (uint32_t i = 0; i <= done_layers && i < layer_count; i++) {
		struct layer *ly = &c->layers[layer_begin + i];
		uint64_t n = i < done_layers ? per_layer : done_in_layer;
		if (!ly->blocks)
			continue;
		for (uint64_t j = 0; j < n; j++)
			ops->block_free(t, ly->blocks[old_blocks * g->n_kv_heads + j], c->block_bytes);
	}
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
	if (!rc) {
		c->sealed = true;
		*tokens = t;
	}
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

void kv_ctx_read_begin(struct kv_ctx *c) { pthread_rwlock_rdlock(&c->lock); }
void kv_ctx_read_end(struct kv_ctx *c) { pthread_rwlock_unlock(&c->lock); }

uint64_t kv_ctx_layer_tokens(struct kv_ctx *c, uint32_t layer)
{
	return layer < c->geom.n_layers ? c->layers[layer].tokens : 0;
}

const uint8_t *kv_ctx_block(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b)
{
	return c->layers[layer].blocks[b * c->geom.n_kv_heads + head];
}

int kv_ctx_fetch(struct kv_ctx *c, uint32_t layer, const uint64_t *ids, uint32_t n, void *out)
{
	const struct kv_geometry *g = &c->geom;
	const uint64_t B = c->store->cfg.block_tokens;
	const size_t row = (size_t)g->head_dim * g->elem_size;
	int rc = 0;
	if (layer >= g->n_layers)
		return -EINVAL;
	pthread_rwlock_rdlock(&c->lock);
	const struct layer *ly = &c->layers[layer];
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] >= ly->tokens) {
			rc = -ERANGE;
			goto out;
		}
	}
	uint8_t *dst = out;
	for (uint32_t kvsel = 0; kvsel < 2; kvsel++)
		for (uint32_t h = 0; h < g->n_kv_heads; h++)
			for (uint32_t i = 0; i < n; i++) {
				uint64_t b = ids[i] / B, off = ids[i] % B;
				const uint8_t *blk = ly->blocks[b * g->n_kv_heads + h];
				memcpy(dst, blk + kvsel * B * row + off * row, row);
				dst += row;
			}
out:
	pthread_rwlock_unlock(&c->lock);
	return rc;
}
