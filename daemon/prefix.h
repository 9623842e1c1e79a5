/*
 * Prefix reuse: every context that was given its token ids keeps a chain
 * of chunk hashes (proto_chunk_hash(): 256 ids a chunk, each hash seeded
 * with the previous one and the tenant's salt), and the daemon keeps one
 * table from chunk hash to (context, chunk). Because a hash covers its
 * whole prefix, "the first k chunks are stored" is monotone in k, so the
 * longest stored prefix of a request is found by binary search in
 * O(log n) table probes.
 *
 * A context's chain (and the ids of its unfinished last chunk) is saved as
 * its side file "prefix.chain" when the store has side files, and put back
 * in the table at start (prefix_restore()).
 *
 * Thread-safe: one mutex around the table. Every function returns 0 or a
 * negative errno.
 */
#ifndef MNEMO_DAEMON_PREFIX_H
#define MNEMO_DAEMON_PREFIX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kv_ctx;
struct store;
struct prefix;

int prefix_open(struct prefix **out);
void prefix_close(struct prefix *p);

/**
 * Add token ids [begin, begin + n) to context @p c's chain under @p salt.
 * The first ids fix the context's salt; later calls must give the same one
 * and continue where the ids stopped (-EINVAL, -ERANGE otherwise), and ids
 * never run past the context's tokens (-ERANGE).
 * @param total   receives the ids the context now has
 * @param chunks  receives its whole chunks (hashed and findable)
 */
int prefix_add(struct prefix *p, struct kv_ctx *c, uint64_t salt, uint64_t begin, const uint32_t *ids, uint32_t n,
	       uint64_t *total, uint64_t *chunks);

/**
 * The longest prefix of @p hashes [n] (a request's chain, proto_chunk_hash())
 * stored in a context that @p uid owns or that is shared.
 * @param ctx     receives the context (0: none)
 * @param chunks  receives the matching chunks
 * @param probes  receives the table probes made
 */
int prefix_lookup(struct prefix *p, struct store *s, uid_t uid, const uint64_t *hashes, size_t n, uint64_t *ctx,
		  uint64_t *chunks, unsigned *probes);

/** Forget context @p id (on DROP). */
void prefix_forget(struct prefix *p, uint64_t id);

/** Put the saved chains of every context of @p s back in the table (at start). */
int prefix_restore(struct prefix *p, struct store *s);

#endif
