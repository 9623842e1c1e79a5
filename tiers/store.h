/*
 * The block store: every context's K/V, cut into blocks that live in the
 * host tier (RAM) and, when an SSD tier is configured, durably on SSD with
 * the LMDB catalog naming them. RAM is then a cache: durable blocks nobody
 * uses leave it under memory pressure (least recently used first) and are
 * read back, checksum-verified, when a request needs them.
 *
 * Glossary
 *   context   one stored token sequence: a name, a geometry, an owner uid, a
 *             state (open while appending, sealed after), and per layer a
 *             length and a table of blocks (one row of n_kv_heads blocks per
 *             B tokens).
 *   layer length  tokens appended to one layer so far; each layer grows on
 *             its own, and the context's token count is the shortest layer.
 *   durable   a block whose bytes are on SSD, synced, and named by a
 *             committed catalog transaction. An APPEND makes the blocks it
 *             fills durable before it is acknowledged; SEAL makes the last,
 *             partial blocks durable too.
 *   pinned    a block a request is reading: it cannot leave RAM.
 *
 * Locking: the store's table has its own mutex; each context has a
 * read/write lock. Readers (attention, fetch) hold it shared between
 * kv_ctx_read_begin() and kv_ctx_read_end(); append, seal and drop take it
 * exclusively. Contexts are reference counted: a handle from
 * store_ctx_create() or store_ctx_find() stays valid until kv_ctx_put(),
 * even if the context is dropped meanwhile.
 */
#ifndef MNEMO_TIERS_STORE_H
#define MNEMO_TIERS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tier.h"

struct kv_geometry {
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t n_q_heads;
	uint32_t head_dim;
	uint32_t dtype;           /* 0 f32, 1 f16, 2 bf16 (the wire values) */
	uint32_t elem_size;       /* bytes per element, derived from dtype */
	float rope_theta;
};

struct store;
struct kv_ctx;

struct ssd;
struct catalog;

struct store_config {
	uint32_t block_tokens;            /* B, default 64 */
	const struct tier_ops *host_ops;  /* the tier blocks live in */
	struct tier *host;                /* borrowed; outlives the store */
	struct ssd *ssd;                  /* NULL: RAM only, nothing survives a restart;
	                                   * else host must align blocks to SSD_ALIGN */
	struct catalog *catalog;          /* with ssd: where durable blocks are named */
	const char *side_dir;             /* with ssd (may be NULL): where side files live
	                                   * (sidefile.h); borrowed, outlives the store */
	uint64_t stream_sync_bytes;       /* with ssd: bytes of KV_APPEND_STREAM blocks a
	                                   * context writes between sync points; 0: every
	                                   * append is one */
};

struct store_stats {
	uint64_t hits;            /* block pins served from RAM */
	uint64_t misses;          /* block pins that read from SSD */
	uint64_t evictions;
	uint64_t bad_blocks;      /* reads that failed their checksum */
	uint64_t recovered_contexts;
	uint64_t prefetched;      /* blocks kv_ctx_prefetch() read from SSD */
	uint64_t prefetch_used;   /* of those, pinned by a request (each also counts a miss) */
};

/**
 * Open the store. With an SSD tier it loads the catalog: every context
 * comes back with its durable blocks (not yet in RAM), open contexts at
 * their last durable block. The caller owns the store (store_destroy()).
 * @param why  receives a static reason on failure
 */
int store_open(const struct store_config *cfg, struct store **out, const char **why);
void store_stats(struct store *s, struct store_stats *out);
/** Free the store and every context still in it. No handle may be in use. */
void store_destroy(struct store *s);

/**
 * Create a context. Returns a reference in @p out.
 * @return 0, -EEXIST (name taken), -ENOMEM
 */
int store_ctx_create(struct store *s, const char *name, size_t name_len,
		     const struct kv_geometry *g, uint32_t owner_uid, struct kv_ctx **out);

/**
 * Create a continuation of @p parent (sealed): a context of its geometry,
 * owned by @p owner_uid, whose tokens follow the parent's without copying
 * them (the caller checked that the owner may read the parent). The link
 * is a side file ("parent": parent id, parent tokens) written before the
 * catalog names the context, restored at start; the parent cannot be
 * deleted while it has continuations. Returns a reference in @p out.
 * @return 0, -EBUSY (parent not sealed), -ENODATA (parent empty), -EEXIST, -ENOMEM, I/O errors
 */
int store_ctx_continue(struct store *s, struct kv_ctx *parent, const char *name, size_t name_len,
		       uint32_t owner_uid, struct kv_ctx **out);

/**
 * A continuation's parent (no reference taken; the continuation holds one),
 * or NULL: not a continuation when *parent_id is 0, a parent that could not
 * be restored otherwise. @p parent_id and @p tokens (may be NULL): the link.
 */
struct kv_ctx *kv_ctx_parent(const struct kv_ctx *c, uint64_t *parent_id, uint64_t *tokens);

/**
 * The context derived from @p parent under @p tag: storage the layers above
 * keep beside a context (retrieval's cluster-ordered copies of its rows),
 * with geometry @p g, owned by the parent's owner. Derived contexts are
 * hidden: store_ctx_find(), store_foreach() and store_count() skip them,
 * and their names (tags) are a namespace of the parent's own. They are
 * deleted with the parent by store_ctx_delete(); with an SSD tier the link
 * is the side file "derived" (the parent's id), written before the catalog
 * names the context, and a derived context whose parent is gone at start
 * is deleted then. Returns a reference in @p out.
 * @param create  make it when it is not there
 * @return 0, -ENOENT (not there and !create, or the parent was deleted),
 *         -EEXIST (there with another geometry), -EINVAL (empty tag, a
 *         parent that is itself derived), -ENOTSUP (an SSD tier without
 *         side files), -ENOMEM, I/O errors
 */
int kv_ctx_derived(struct kv_ctx *parent, const char *tag, const struct kv_geometry *g, bool create,
		   struct kv_ctx **out);

/** Whether the context's blocks live on an SSD tier (and survive a restart). */
bool kv_ctx_on_ssd(const struct kv_ctx *c);

/** Find by id, or by name when @p id is 0 (derived contexts are not found). Returns a reference, or -ENOENT. */
int store_ctx_find(struct store *s, uint64_t id, const char *name, size_t name_len,
		   struct kv_ctx **out);

/**
 * Remove a context from the store: it can no longer be found; its memory is
 * freed when the last reference goes.
 */
void store_ctx_drop(struct store *s, struct kv_ctx *c);

/** Call @p fn for every context but the derived ones (a reference held during the call). */
void store_foreach(struct store *s, void (*fn)(struct kv_ctx *c, void *arg), void *arg);

uint32_t store_count(struct store *s);
uint32_t store_block_tokens(const struct store *s);

void kv_ctx_get(struct kv_ctx *c);
void kv_ctx_put(struct kv_ctx *c);

uint64_t kv_ctx_id(const struct kv_ctx *c);
const char *kv_ctx_name(const struct kv_ctx *c);   /* NUL-terminated */
uint32_t kv_ctx_owner(const struct kv_ctx *c);
const struct kv_geometry *kv_ctx_geometry(const struct kv_ctx *c);

struct kv_ctx_info {
	bool sealed;
	bool recovered;           /* was open when the daemon stopped; holds its durable prefix */
	uint64_t tokens;          /* the shortest layer */
	uint64_t bytes;           /* block bytes held */
};
void kv_ctx_info(struct kv_ctx *c, struct kv_ctx_info *out);

/**
 * Append tokens [token_begin, token_begin + n_tokens) to layers
 * [layer_begin, layer_begin + layer_count). @p data is
 * [layer_count][2][n_kv_heads][n_tokens][head_dim] of the context's dtype
 * and @p len must be exactly its size. All or nothing: on failure no layer
 * changed.
 * @param why  receives a static reason on failure
 * With an SSD tier the blocks it fills are durable when it returns 0.
 * @return 0, -EINVAL (sizes), -ERANGE (token_begin is not the layer length),
 *         -EROFS (sealed), -ENOMEM (tier budget), -EOVERFLOW (too many tokens),
 *         -ENOSPC (SSD full or --ssd-max), -EIO
 */
int kv_ctx_append(struct kv_ctx *c, uint32_t layer_begin, uint32_t layer_count,
		  uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len,
		  uint64_t *layer_tokens, uint64_t *context_tokens, const char **why);

/*
 * KV_APPEND_STREAM: whole blocks go from @p data straight to the SSD tier and
 * are not kept in RAM (preloading data larger than RAM). Taken when the
 * context has an SSD tier, its blocks fill their slots, token_begin and
 * n_tokens are whole blocks and @p data and every block's keys and values in
 * it are SSD_ALIGN-aligned; otherwise the append is served as without it.
 * @p data must stay unchanged until the call returns. The blocks are written
 * when it returns and durable at the context's next sync point: an append
 * with KV_APPEND_SYNC or without STREAM, kv_ctx_seal(), once the context
 * has streamed stream_sync_bytes since the last one, or store_destroy().
 * A crash before it loses them: the context comes back at its last durable
 * block. A failed sync point refuses later appends with -EIO.
 *
 * KV_APPEND_SYNC: this append is a sync point (everything the context has
 * written is durable when it returns).
 */
#define KV_APPEND_STREAM 1u
#define KV_APPEND_SYNC 2u
/** kv_ctx_append() with KV_APPEND_* @p flags. */
int kv_ctx_append_ex(struct kv_ctx *c, uint32_t layer_begin, uint32_t layer_count,
		     uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len, unsigned flags,
		     uint64_t *layer_tokens, uint64_t *context_tokens, const char **why);

/** Seal: all layers must have the same length (-EINVAL otherwise); with an
 * SSD tier the last partial blocks become durable. */
int kv_ctx_seal(struct kv_ctx *c, uint64_t *tokens);

/**
 * Drop for good: remove from the catalog and the SSD, then from the store.
 * @return 0, -EBUSY (the context has continuations), catalog errors
 */
int store_ctx_delete(struct store *s, struct kv_ctx *c);

/* ---- reading (between read_begin and read_end) ---- */

void kv_ctx_read_begin(struct kv_ctx *c);
void kv_ctx_read_end(struct kv_ctx *c);

uint64_t kv_ctx_layer_tokens(struct kv_ctx *c, uint32_t layer);
uint32_t kv_ctx_block_tokens(const struct kv_ctx *c);

/**
 * Pin blocks [b0, b0 + n) of (layer, head) in RAM, reading the missing ones
 * from SSD in one batch, and return their addresses in @p out: each holds
 * keys [B][d] then values [B][d]; only tokens below the layer's length hold
 * data. Every pinned block must be given back with kv_ctx_unpin().
 * @param err  on -EBADMSG, receives the first block that failed its check
 * @return 0, -EBADMSG (a block failed its checksum: it is marked bad and
 *         never served), -ENOMEM (pinned blocks fill the budget), -EIO
 */
int kv_ctx_pin(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b0, uint32_t n,
	       const uint8_t **out, uint64_t *err);
void kv_ctx_unpin(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t b0, uint32_t n);

/** kv_ctx_pin() of any blocks (distinct, in any order), loaded in one batch. */
int kv_ctx_pin_list(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n,
		    const uint8_t **out, uint64_t *err);
void kv_ctx_unpin_list(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n);

/**
 * Read blocks @p blocks[0..n) of (layer, head) into RAM in the background
 * and return at once: a hint from a request that knows what it (or the
 * next one) will pin. One store thread reads the queued hints in order,
 * each in batches of up to 1024 blocks; a kv_ctx_pin() of a block still on
 * its way waits for that read instead of issuing its own, and a pin that
 * finds RAM full of blocks being read ahead waits for them to land (they
 * are evictable then) instead of failing. Blocks in RAM are skipped (moved
 * to the young end of the LRU), blocks past the layer's end when it runs
 * are ignored, the thread never waits for another request's reads, and
 * errors (a failed checksum, a full budget) are left for the pin that
 * needs the block. A block read ahead and then pinned counts as a miss
 * (store_stats.prefetch_used says how many were); one evicted unpinned
 * was read for nothing. Without an SSD tier it does nothing.
 * Any thread; with or without the read lock. The hint holds a reference on
 * the context until it has run.
 * @return 0 (queued or nothing to do), -EINVAL, -EOVERFLOW, -ENOMEM, -ESHUTDOWN
 *         (the store is closing), pthread_create()'s errors
 */
int kv_ctx_prefetch(struct kv_ctx *c, uint32_t layer, uint32_t head, const uint64_t *blocks, uint32_t n);

/**
 * One pointer the layers above may hang on a context (retrieval keeps its
 * indexes there), freed with @p free_fn when the context is. The first
 * install wins: the return value is what the context holds afterwards; a
 * caller whose @p aux lost frees its own.
 */
void *kv_ctx_aux_install(struct kv_ctx *c, void *aux, void (*free_fn)(void *aux));
void *kv_ctx_aux(struct kv_ctx *c);

/**
 * Shared read-only with every user (the owner alone may change it): only a
 * sealed context can be shared (-EBUSY), so what readers see never moves.
 * Saved as the side file "shared" where the store has side files, and read
 * back at start.
 * @return 0, -EBUSY, and sidefile errors (the flag is then unchanged)
 */
int kv_ctx_set_shared(struct kv_ctx *c, int shared);
int kv_ctx_shared(const struct kv_ctx *c);

/**
 * Durable side data of a context (sidefile.h), removed with the context:
 * what retrieval derives from the K/V and wants back after a restart.
 * @return 0, -ENOTSUP (a store without side_dir: nothing survives anyway),
 *         and sidefile_write()/sidefile_read()'s errors
 */
int kv_ctx_side_save(struct kv_ctx *c, const char *name, const void *buf, size_t len);
int kv_ctx_side_load(struct kv_ctx *c, const char *name, void **buf, size_t *len);
/** Start reading side file @p name into the page cache (a hint; see sidefile_prefetch()). */
int kv_ctx_side_prefetch(struct kv_ctx *c, const char *name);

/**
 * Copy K/V of @p n token positions of @p layer into @p out laid out
 * [2][n_kv_heads][n][head_dim]. Takes the read lock itself.
 * @return 0, -ERANGE (a position past the layer's length), -EINVAL (layer),
 *         and kv_ctx_pin()'s errors
 */
int kv_ctx_fetch(struct kv_ctx *c, uint32_t layer, const uint64_t *ids, uint32_t n, void *out);

#endif
