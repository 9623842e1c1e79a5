/*
 * Durable side files of a context: what layers above the store derive from
 * its K/V and want back after a restart (retrieval indexes), kept beside
 * the catalog rather than in it because they are large and rebuildable.
 *
 * Layout: DIR/ctx-<id as 16 hex digits>/NAME. A file is a 32-byte header
 * (magic "MNSF", version 1, body length u64, XXH3-64 of the body u64,
 * 8 reserved bytes that must be zero) and the body. Writes are atomic: a temporary file, fdatasync,
 * rename over NAME, fsync of the directory, so a crash leaves the old file
 * or the new one. Reads check everything: a file that fails is refused
 * with -EBADMSG, never half-used.
 *
 * Every function returns 0 or a negative errno.
 */
#ifndef MNEMO_TIERS_SIDEFILE_H
#define MNEMO_TIERS_SIDEFILE_H

#include <stddef.h>
#include <stdint.h>

/** Longest NAME: letters, digits, '-', '_' and '.', not starting with '.'. */
#define SIDEFILE_MAX_NAME 64

/** Write NAME of context @p ctx (creates the directories). -EINVAL: a bad name. */
int sidefile_write(const char *dir, uint64_t ctx, const char *name, const void *buf, size_t len);

/**
 * Read NAME of context @p ctx into a malloc'ed buffer (the caller frees it).
 * @return 0, -ENOENT (none), -EBADMSG (short, foreign or corrupt), -ENOMEM, -EIO
 */
int sidefile_read(const char *dir, uint64_t ctx, const char *name, void **buf, size_t *len);

/**
 * Start reading NAME of context @p ctx into the page cache without waiting,
 * so that several files needed together are read at once.
 * @return 0, -ENOENT, or another -errno (a hint: callers may ignore it)
 */
int sidefile_prefetch(const char *dir, uint64_t ctx, const char *name);

/** Remove NAME of context @p ctx (-ENOENT is not an error). */
int sidefile_remove(const char *dir, uint64_t ctx, const char *name);

/** Remove every side file of @p ctx and its directory (-ENOENT is not an error). */
int sidefile_remove_ctx(const char *dir, uint64_t ctx);

/** The context ids that have a directory under @p dir (malloc'ed; an absent dir gives none). */
int sidefile_list_ctx(const char *dir, uint64_t **ids, size_t *n);

#endif
