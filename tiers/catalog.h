/*
 * The catalog (LMDB): what the daemon stored, so that a restart serves it
 * again. Three tables: contexts (id -> ctx_record), blocks ((ctx, layer,
 * head, block) -> block_record), meta (name -> value).
 *
 * The store writes block bytes and makes them durable (fdatasync) before
 * the transaction that names them commits, so the catalog never names bytes
 * that are not on disk. LMDB's own commit is durable (no MDB_NOSYNC).
 * No LMDB type crosses this header; lmdb errors become negative errno.
 */
#ifndef MNEMO_TIERS_CATALOG_H
#define MNEMO_TIERS_CATALOG_H

#include <stdint.h>

#include "record.h"

struct catalog;
struct catalog_txn;

/** Open (or create) the catalog in folder @p dir (created 0700). */
int catalog_open(const char *dir, struct catalog **out);
void catalog_close(struct catalog *c);

/** Begin a write transaction (one at a time; others wait). */
int catalog_begin(struct catalog *c, struct catalog_txn **out);
int catalog_put_ctx(struct catalog_txn *t, const struct ctx_record *r);
int catalog_put_block(struct catalog_txn *t, uint64_t ctx, uint32_t layer, uint32_t head,
		      uint64_t block, const struct block_record *b);
/** Delete a context and all its blocks. */
int catalog_del_ctx(struct catalog_txn *t, uint64_t ctx);
int catalog_put_meta_u64(struct catalog_txn *t, const char *key, uint64_t v);
/** Commit durably; the transaction is gone either way. */
int catalog_commit(struct catalog_txn *t);
void catalog_abort(struct catalog_txn *t);

int catalog_get_meta_u64(struct catalog *c, const char *key, uint64_t *v);

/**
 * Walk everything: each context, then each of its blocks in key order.
 * A callback returning non-zero stops the walk with that value. A record
 * that does not decode stops it with -EBADMSG.
 */
int catalog_load(struct catalog *c, int (*on_ctx)(void *arg, const struct ctx_record *r),
		 int (*on_block)(void *arg, uint64_t ctx, uint32_t layer, uint32_t head,
				 uint64_t block, const struct block_record *b),
		 void *arg);

#endif
