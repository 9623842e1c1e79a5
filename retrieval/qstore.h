/*
 * Prefill queries of one layer, as the client sends them (QUERIES), kept
 * for the indexes that draw their structure from queries (ann).
 *
 * A store keeps an even subsample of every position it was sent, at most
 * cap of them: the positions whose ordinal (0, 1, ... in the order sent)
 * is a multiple of a stride. The stride starts at 1 and doubles whenever
 * the store is full, dropping every other kept position, so whatever the
 * prefill's length the kept positions spread over all of it, and the RAM
 * stays under cap rows. Rows are [n_q_heads][head_dim] f32, unscaled.
 */
#ifndef MNEMO_RETRIEVAL_QSTORE_H
#define MNEMO_RETRIEVAL_QSTORE_H

#include <stddef.h>
#include <stdint.h>

struct qstore;

/** An empty store; @p cap >= 2. @return NULL on a bad shape or no memory. */
struct qstore *qstore_new(uint32_t n_q, uint32_t d, uint32_t cap);
void qstore_free(struct qstore *s);

/**
 * Take in @p n_pos more positions, @p q laid out [n_q][n_pos][d] (the
 * trace's q_prefill layout for one layer).
 * @return 0, -EINVAL (n_pos 0), -ENOMEM (the store is unchanged)
 */
int qstore_add(struct qstore *s, uint32_t n_pos, const float *q);

/** Positions kept, and positions sent so far. */
uint64_t qstore_kept(const struct qstore *s);
uint64_t qstore_seen(const struct qstore *s);
/** Bytes of RAM the store holds. */
size_t qstore_memory(const struct qstore *s);

/**
 * The kept queries of query heads [first, first + G), times @p scale, as
 * a malloc'ed [kept][G][d] array (a policy's prefill_q for one KV head).
 * @return 0 (*out NULL and *n 0 when empty), -EINVAL, -ENOMEM
 */
int qstore_group(const struct qstore *s, uint32_t first, uint32_t G, float scale, float **out, uint64_t *n);

/**
 * Serialise to a malloc'ed blob: magic "MNQS", version 1, n_q, d, cap,
 * reserved (u32 each), stride, seen, kept (u64 each), then the kept rows
 * [kept][n_q][d] f32, all little-endian.
 */
int qstore_save(const struct qstore *s, uint8_t **buf, size_t *len);

/**
 * Rebuild a store from a hostile blob of qstore_save(): it must have the
 * shape asked for, a power-of-two stride and exactly the rows its seen
 * count implies. @return 0, -EBADMSG, -ENOMEM
 */
int qstore_load(const uint8_t *buf, size_t len, uint32_t n_q, uint32_t d, uint32_t cap, struct qstore **out);

#endif
