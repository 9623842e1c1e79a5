/* Prefix reuse: chunk-hash chains and the daemon's table (prefix.h). */
#define _GNU_SOURCE
#include "prefix.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "store.h"

#define CHUNK PROTO_CHUNK_TOKENS
#define SIDE_NAME "prefix.chain"
#define CHAIN_MAGIC 0x43504e4du /* "MNPC" */
#define CHAIN_VERSION 1u

/* One context's chain. */
struct chain {
	uint64_t ctx, salt;
	uint64_t ids;             /* token ids given so far */
	uint64_t *hash;           /* [ids / CHUNK] */
	size_t cap;
	uint32_t pending[CHUNK];  /* ids of the unfinished chunk: ids % CHUNK of them */
	int salted;
};

/* Table slot: hash 0 is empty; ctx 0 a removed entry that keeps probe runs whole. */
struct slot {
	uint64_t hash, ctx;
	uint64_t chunk;
};

struct prefix {
	pthread_mutex_t mu;
	struct slot *t;
	size_t cap, used;         /* used counts removed entries too */
	struct chain **chains;
	size_t n_chains, cap_chains;
};

static uint64_t key_of(uint64_t h)
{
	return h ? h : 1; /* 0 marks an empty slot */
}

static int table_grow(struct prefix *p)
{
	size_t cap = p->cap ? 2 * p->cap : 1024;
	struct slot *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	size_t used = 0;
	for (size_t i = 0; i < p->cap; i++) {
		const struct slot *s = &p->t[i];
		if (!s->hash || !s->ctx)
			continue;
		size_t j = s->hash & (cap - 1);
		while (t[j].hash)
			j = (j + 1) & (cap - 1);
		t[j] = *s;
		used++;
	}
	free(p->t);
	p->t = t;
	p->cap = cap;
	p->used = used;
	return 0;
}

static int table_put(struct prefix *p, uint64_t h, uint64_t ctx, uint64_t chunk)
{
	int rc;
	if (2 * (p->used + 1) > p->cap && (rc = table_grow(p)))
		return rc;
	h = key_of(h);
	size_t j = h & (p->cap - 1);
	while (p->t[j].hash && !(p->t[j].hash == h && p->t[j].ctx == ctx))
		j = (j + 1) & (p->cap - 1);
	if (!p->t[j].hash)
		p->used++;
	p->t[j] = (struct slot){ h, ctx, chunk };
	return 0;
}

static void table_remove(struct prefix *p, uint64_t h, uint64_t ctx)
{
	if (!p->cap)
		return;
	h = key_of(h);
	for (size_t j = h & (p->cap - 1); p->t[j].hash; j = (j + 1) & (p->cap - 1))
		if (p->t[j].hash == h && p->t[j].ctx == ctx) {
			p->t[j].ctx = 0;
			return;
		}
}

static struct chain *chain_find(struct prefix *p, uint64_t ctx)
{
	for (size_t i = 0; i < p->n_chains; i++)
		if (p->chains[i]->ctx == ctx)
			return p->chains[i];
	return NULL;
}

static struct chain *chain_get(struct prefix *p, uint64_t ctx)
{
	struct chain *ch = chain_find(p, ctx);
	if (ch)
		return ch;
	if (p->n_chains == p->cap_chains) {
		size_t cap = p->cap_chains ? 2 * p->cap_chains : 16;
		struct chain **a = realloc(p->chains, cap * sizeof(*a));
		if (!a)
			return NULL;
		p->chains = a;
		p->cap_chains = cap;
	}
	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return NULL;
	ch->ctx = ctx;
	p->chains[p->n_chains++] = ch;
	return ch;
}

static int chain_push(struct chain *ch, uint64_t h)
{
	size_t n = (size_t)(ch->ids / CHUNK);
	if (n == ch->cap) {
		size_t cap = ch->cap ? 2 * ch->cap : 64;
		uint64_t *a = realloc(ch->hash, cap * sizeof(uint64_t));
		if (!a)
			return -ENOMEM;
		ch->hash = a;
		ch->cap = cap;
	}
	ch->hash[n] = h;
	return 0;
}

/* The chain as its side file: header, hashes, pending ids. */
static void chain_save(struct kv_ctx *c, const struct chain *ch)
{
	const size_t nh = (size_t)(ch->ids / CHUNK), np = (size_t)(ch->ids % CHUNK);
	const size_t len = 32 + nh * 8 + np * 4;
	uint8_t *b = malloc(len);
	if (!b)
		return;
	uint32_t u32[2] = { CHAIN_MAGIC, CHAIN_VERSION };
	memcpy(b, u32, 8);
	memcpy(b + 8, &ch->salt, 8);
	memcpy(b + 16, &ch->ids, 8);
	memset(b + 24, 0, 8);
	memcpy(b + 32, ch->hash, nh * 8);
	memcpy(b + 32 + nh * 8, ch->pending, np * 4);
	/* best effort: a lost chain only costs reuse, never data */
	kv_ctx_side_save(c, SIDE_NAME, b, len);
	free(b);
}

int prefix_open(struct prefix **out)
{
	struct prefix *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	*out = p;
	return 0;
}

void prefix_close(struct prefix *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_chains; i++) {
		free(p->chains[i]->hash);
		free(p->chains[i]);
	}
	free(p->chains);
	free(p->t);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

int prefix_add(struct prefix *p, struct kv_ctx *c, uint64_t salt, uint64_t begin, const uint32_t *ids, uint32_t n,
	       uint64_t *total, uint64_t *chunks)
{
	struct kv_ctx_info info;
	kv_ctx_info(c, &info);
	pthread_mutex_lock(&p->mu);
	int rc = 0;
	struct chain *ch = chain_get(p, kv_ctx_id(c));
	if (!ch) {
		rc = -ENOMEM;
		goto out;
	}
	if (ch->salted && ch->salt != salt) {
		rc = -EINVAL;
		goto out;
	}
	if (begin != ch->ids || begin + n > info.tokens) {
		rc = -ERANGE;
		goto out;
	}
	ch->salt = salt;
	ch->salted = 1;
	for (uint32_t i = 0; i < n; i++) {
		ch->pending[ch->ids % CHUNK] = ids[i];
		if ((ch->ids + 1) % CHUNK == 0) {
			uint64_t k = ch->ids / CHUNK;
			uint64_t h = proto_chunk_hash(k ? ch->hash[k - 1] : 0, salt, ch->pending);
			if ((rc = chain_push(ch, h)) || (rc = table_put(p, h, ch->ctx, k)))
				break;
		}
		ch->ids++;
	}
	chain_save(c, ch);
out:
	if (ch) {
		*total = ch->ids;
		*chunks = ch->ids / CHUNK;
	}
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* Is chunk k (0-based) of @p hashes stored in a context @p uid owns? Mutex held. */
static uint64_t probe(struct prefix *p, struct store *s, uid_t uid, uint64_t h, uint64_t k)
{
	if (!p->cap)
		return 0;
	h = key_of(h);
	for (size_t j = h & (p->cap - 1); p->t[j].hash; j = (j + 1) & (p->cap - 1)) {
		const struct slot *e = &p->t[j];
		if (e->hash != h || !e->ctx || e->chunk != k)
			continue;
		struct kv_ctx *c;
		if (store_ctx_find(s, e->ctx, NULL, 0, &c))
			continue;
		int readable = kv_ctx_owner(c) == uid || kv_ctx_shared(c);
		kv_ctx_put(c);
		if (readable)
			return e->ctx;
	}
	return 0;
}

int prefix_lookup(struct prefix *p, struct store *s, uid_t uid, const uint64_t *hashes, size_t n, uint64_t *ctx,
		  uint64_t *chunks, unsigned *probes)
{
	*ctx = 0;
	*chunks = 0;
	*probes = 0;
	pthread_mutex_lock(&p->mu);
	/* the largest k with chunk k-1 stored: lo is stored (or 0), hi is not */
	size_t lo = 0, hi = n + 1;
	uint64_t found = 0;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		uint64_t c = probe(p, s, uid, hashes[mid - 1], mid - 1);
		(*probes)++;
		if (c) {
			lo = mid;
			found = c;
		} else {
			hi = mid;
		}
	}
	pthread_mutex_unlock(&p->mu);
	if (lo) {
		*ctx = found;
		*chunks = lo;
	}
	return 0;
}

void prefix_forget(struct prefix *p, uint64_t id)
{
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < p->n_chains; i++) {
		struct chain *ch = p->chains[i];
		if (ch->ctx != id)
			continue;
		for (uint64_t k = 0; k < ch->ids / CHUNK; k++)
			table_remove(p, ch->hash[k], id);
		free(ch->hash);
		free(ch);
		p->chains[i] = p->chains[--p->n_chains];
		break;
	}
	pthread_mutex_unlock(&p->mu);
}

struct restore_state {
	struct prefix *p;
	int err;
};

static void restore_one(struct kv_ctx *c, void *arg)
{
	struct restore_state *st = arg;
	void *buf;
	size_t len;
	if (kv_ctx_side_load(c, SIDE_NAME, &buf, &len))
		return;
	const uint8_t *b = buf;
	uint32_t u32[2];
	uint64_t salt, ids;
	struct kv_ctx_info info;
	kv_ctx_info(c, &info);
	if (len >= 32) {
		memcpy(u32, b, 8);
		memcpy(&salt, b + 8, 8);
		memcpy(&ids, b + 16, 8);
	}
	/* a chain that does not fit its file or its context is dropped: only reuse is lost */
	if (len < 32 || u32[0] != CHAIN_MAGIC || u32[1] != CHAIN_VERSION || ids > info.tokens ||
	    len != 32 + (ids / CHUNK) * 8 + (ids % CHUNK) * 4) {
		free(buf);
		return;
	}
	struct prefix *p = st->p;
	pthread_mutex_lock(&p->mu);
	struct chain *ch = chain_get(p, kv_ctx_id(c));
	if (ch && !ch->ids) {
		ch->salt = salt;
		ch->salted = 1;
		for (uint64_t k = 0; k < ids / CHUNK; k++) {
			uint64_t h;
			memcpy(&h, b + 32 + k * 8, 8);
			if (chain_push(ch, h) || table_put(p, h, ch->ctx, k)) {
				st->err = -ENOMEM;
				break;
			}
			ch->ids += CHUNK;
		}
		if (!st->err) {
			memcpy(ch->pending, b + 32 + (ids / CHUNK) * 8, (ids % CHUNK) * 4);
			ch->ids = ids;
		}
	} else if (!ch) {
		st->err = -ENOMEM;
	}
	pthread_mutex_unlock(&p->mu);
	free(buf);
}

int prefix_restore(struct prefix *p, struct store *s)
{
	struct restore_state st = { .p = p };
	store_foreach(s, restore_one, &st);
	return st.err;
}
