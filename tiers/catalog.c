/* The LMDB catalog. LMDB types stay in this file. */
#define _GNU_SOURCE
#include "catalog.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct catalog {
	MDB_env *env;
	MDB_dbi ctx, blocks, meta;
};

struct catalog_txn {
	struct catalog *c;
	MDB_txn *txn;
};

/* The one place LMDB's codes become ours. */
static int lmdb_error(int rc)
{
	switch (rc) {
	case MDB_SUCCESS: return 0;
	case MDB_NOTFOUND: return -ENOENT;
	case MDB_MAP_FULL: return -ENOSPC;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID:
	case MDB_VERSION_MISMATCH: return -EBADMSG;
	case MDB_READERS_FULL:
	case MDB_TXN_FULL: return -EBUSY;
	default: return rc > 0 ? -rc : -EIO;
	}
}

int catalog_open(const char *dir, struct catalog **out)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	struct catalog *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	MDB_txn *txn = NULL;
	int rc = lmdb_error(mdb_env_create(&c->env));
	if (rc)
		goto fail;
	/* The map is sparse: 64 GiB of address space costs nothing until used. */
	if ((rc = lmdb_error(mdb_env_set_mapsize(c->env, 64ull << 30))) ||
	    (rc = lmdb_error(mdb_env_set_maxdbs(c->env, 4))) ||
	    (rc = lmdb_error(mdb_env_open(c->env, dir, MDB_NOTLS, 0600))))
		goto fail;
	if ((rc = lmdb_error(mdb_txn_begin(c->env, NULL, 0, &txn))) ||
	    (rc = lmdb_error(mdb_dbi_open(txn, "contexts", MDB_CREATE, &c->ctx))) ||
	    (rc = lmdb_error(mdb_dbi_open(txn, "blocks", MDB_CREATE, &c->blocks))) ||
	    (rc = lmdb_error(mdb_dbi_open(txn, "meta", MDB_CREATE, &c->meta))))
		goto fail;
	rc = lmdb_error(mdb_txn_commit(txn));
	txn = NULL;
	if (rc)
		goto fail;
	*out = c;
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	if (c->env)
		mdb_env_close(c->env);
	free(c);
	return rc;
}

void catalog_close(struct catalog *c)
{
	if (!c)
		return;
	mdb_env_close(c->env);
	free(c);
}

int catalog_begin(struct catalog *c, struct catalog_txn **out)
{
	struct catalog_txn *t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->c = c;
	int rc = lmdb_error(mdb_txn_begin(c->env, NULL, 0, &t->txn));
	if (rc) {
		free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int catalog_put_ctx(struct catalog_txn *t, const struct ctx_record *r)
{
	uint8_t key[8], *val;
	size_t len;
	record_ctx_key(key, r->id);
	int rc = record_ctx_encode(r, &val, &len);
	if (rc)
		return rc;
	MDB_val k = { 8, key }, v = { len, val };
	rc = lmdb_error(mdb_put(t->txn, t->c->ctx, &k, &v, 0));
	free(val);
	return rc;
}

int catalog_put_block(struct catalog_txn *t, uint64_t ctx, uint32_t layer, uint32_t head,
		      uint64_t block, const struct block_record *b)
{
	uint8_t key[RECORD_BLOCK_KEY_SIZE], val[RECORD_BLOCK_SIZE];
	record_block_key(key, ctx, layer, head, block);
	record_block_encode(val, b);
	MDB_val k = { sizeof(key), key }, v = { sizeof(val), val };
	return lmdb_error(mdb_put(t->txn, t->c->blocks, &k, &v, 0));
}

int catalog_del_ctx(struct catalog_txn *t, uint64_t ctx)
{
	uint8_t key[RECORD_BLOCK_KEY_SIZE];
	record_ctx_key(key, ctx);
	MDB_val k = { 8, key };
	int rc = lmdb_error(mdb_del(t->txn, t->c->ctx, &k, NULL));
	if (rc && rc != -ENOENT)
		return rc;
	MDB_cursor *cur;
	if ((rc = lmdb_error(mdb_cursor_open(t->txn, t->c->blocks, &cur))))
		return rc;
	record_block_key(key, ctx, 0, 0, 0);
	MDB_val bk = { sizeof(key), key }, bv;
	rc = mdb_cursor_get(cur, &bk, &bv, MDB_SET_RANGE);
	while (rc == MDB_SUCCESS) {
		uint64_t c;
		uint32_t l, h;
		uint64_t b;
		if (record_block_key_decode(bk.mv_data, bk.mv_size, &c, &l, &h, &b) || c != ctx)
			break;
		if ((rc = mdb_cursor_del(cur, 0)) != MDB_SUCCESS)
			break;
		rc = mdb_cursor_get(cur, &bk, &bv, MDB_GET_CURRENT);
		if (rc == MDB_NOTFOUND || rc == EINVAL)
			rc = mdb_cursor_get(cur, &bk, &bv, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND || rc == MDB_SUCCESS ? 0 : lmdb_error(rc);
}

int catalog_put_meta_u64(struct catalog_txn *t, const char *key, uint64_t v)
{
	uint8_t val[8];
	record_ctx_key(val, v);
	MDB_val k = { strlen(key), (void *)key }, d = { 8, val };
	return lmdb_error(mdb_put(t->txn, t->c->meta, &k, &d, 0));
}

int catalog_commit(struct catalog_txn *t)
{
	int rc = lmdb_error(mdb_txn_commit(t->txn));
	free(t);
	return rc;
}

void catalog_abort(struct catalog_txn *t)
{
	if (!t)
		return;
	mdb_txn_abort(t->txn);
	free(t);
}

int catalog_get_meta_u64(struct catalog *c, const char *key, uint64_t *v)
{
	MDB_txn *txn;
	int rc = lmdb_error(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn));
	if (rc)
		return rc;
	MDB_val k = { strlen(key), (void *)key }, d;
	rc = lmdb_error(mdb_get(txn, c->meta, &k, &d));
	if (!rc && d.mv_size != 8)
		rc = -EBADMSG;
	if (!rc) {
		const uint8_t *p = d.mv_data;
		*v = 0;
		for (int i = 0; i < 8; i++)
			*v = *v << 8 | p[i];
	}
	mdb_txn_abort(txn);
	return rc;
}

int catalog_load(struct catalog *c, int (*on_ctx)(void *arg, const struct ctx_record *r),
		 int (*on_block)(void *arg, uint64_t ctx, uint32_t layer, uint32_t head,
				 uint64_t block, const struct block_record *b),
		 void *arg)
{
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	int rc = lmdb_error(mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn));
	if (rc)
		return rc;
	MDB_val k, v;
	if ((rc = lmdb_error(mdb_cursor_open(txn, c->ctx, &cur))))
		goto out;
	for (int op = MDB_FIRST; (rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op)) == MDB_SUCCESS; op = MDB_NEXT) {
		struct ctx_record r;
		if (k.mv_size != 8 || record_ctx_decode(v.mv_data, v.mv_size, &r)) {
			rc = -EBADMSG;
			goto out;
		}
		rc = on_ctx(arg, &r);
		free(r.layer_tokens);
		if (rc)
			goto out;
	}
	if (rc != MDB_NOTFOUND) {
		rc = lmdb_error(rc);
		goto out;
	}
	mdb_cursor_close(cur);
	if ((rc = lmdb_error(mdb_cursor_open(txn, c->blocks, &cur))))
		goto out;
	for (int op = MDB_FIRST; (rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op)) == MDB_SUCCESS; op = MDB_NEXT) {
		uint64_t ctx, block;
		uint32_t layer, head;
		struct block_record b;
		if (record_block_key_decode(k.mv_data, k.mv_size, &ctx, &layer, &head, &block) ||
		    record_block_decode(v.mv_data, v.mv_size, &b)) {
			rc = -EBADMSG;
			goto out;
		}
		if ((rc = on_block(arg, ctx, layer, head, block, &b)))
			goto out;
	}
	rc = rc == MDB_NOTFOUND ? 0 : lmdb_error(rc);
out:
	if (cur)
		mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return rc;
}
