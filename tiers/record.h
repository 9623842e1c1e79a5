/*
 * On-disk records, little-endian, decoded as hostile input:
 * - the slot trailer: the last 64 bytes of an SSD slot that has room for it
 *   past its block, naming the block it holds and carrying the XXH3 checksum
 *   of its bytes (a slot whose block fills it has none: its checksum is
 *   seeded with the block's identity instead, record_block_checksum());
 * - the catalog values (LMDB): a context record and a block record.
 * Every decoder checks lengths, magic and version and returns -EBADMSG on
 * anything it does not recognise.
 */
#ifndef MNEMO_TIERS_RECORD_H
#define MNEMO_TIERS_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define RECORD_TRAILER_SIZE 64u
#define RECORD_TRAILER_MAGIC 0x4B424E4Du  /* "MNBK" */
#define RECORD_CTX_MAGIC 0x58434E4Du      /* "MNCX" */
#define RECORD_VERSION 1u

/** XXH3-64 of a block's bytes, the checksum of slots with a trailer. */
uint64_t record_checksum(const void *p, size_t n);

/**
 * XXH3-64 of a block's bytes seeded with the block's identity (the XXH3 of
 * its catalog key): the checksum of slots without a trailer. A block read
 * from another block's slot fails it, as a trailer naming the wrong block
 * would.
 */
uint64_t record_block_checksum(const void *p, size_t n, uint64_t ctx, uint32_t layer, uint32_t head,
			       uint64_t block);
/** record_block_checksum() of the bytes of @p a then @p b, as if contiguous. */
uint64_t record_block_checksum2(const void *a, size_t na, const void *b, size_t nb, uint64_t ctx,
				uint32_t layer, uint32_t head, uint64_t block);

struct block_trailer {
	uint64_t ctx_id;
	uint32_t layer, head;
	uint64_t block;
	uint32_t tokens;          /* valid tokens in the block */
	uint32_t data_bytes;      /* bytes covered by the checksum */
	uint64_t checksum;
};

/** Write the trailer at @p out (RECORD_TRAILER_SIZE bytes). */
void record_trailer_encode(uint8_t *out, const struct block_trailer *t);
/** -EBADMSG unless magic, version and the trailer's own checksum hold. */
int record_trailer_decode(const uint8_t *in, struct block_trailer *t);

/** Catalog value of one block. */
struct block_record {
	uint64_t slot;
	uint64_t checksum;
	uint32_t tokens;
	uint32_t flags;           /* BLOCK_BAD once a read failed its check */
};
#define BLOCK_BAD 1u
#define RECORD_BLOCK_SIZE 24u

void record_block_encode(uint8_t out[RECORD_BLOCK_SIZE], const struct block_record *b);
int record_block_decode(const void *in, size_t n, struct block_record *b);

/** Catalog key of a block: sorts by context, layer, head, block. */
#define RECORD_BLOCK_KEY_SIZE 24u
void record_block_key(uint8_t out[RECORD_BLOCK_KEY_SIZE], uint64_t ctx, uint32_t layer,
		      uint32_t head, uint64_t block);
int record_block_key_decode(const void *in, size_t n, uint64_t *ctx, uint32_t *layer,
			    uint32_t *head, uint64_t *block);
/** Catalog key of a context: its id, big-endian so that keys sort by id. */
void record_ctx_key(uint8_t out[8], uint64_t id);

/** Catalog value of a context. */
struct ctx_record {
	uint64_t id;
	char name[256];
	uint32_t n_layers, n_kv_heads, n_q_heads, head_dim, dtype;
	float rope_theta;
	uint32_t owner_uid;
	uint32_t state;           /* 1 open, 2 sealed */
	uint32_t block_tokens;
	uint32_t slot_bytes;
	uint64_t *layer_tokens;   /* [n_layers] durable tokens; decode allocates it */
};

/** Encode into a malloc'ed buffer. */
int record_ctx_encode(const struct ctx_record *c, uint8_t **out, size_t *len);
/** Decode; on success the caller frees c->layer_tokens. */
int record_ctx_decode(const void *in, size_t n, struct ctx_record *c);

#endif
