/*
 * Fuzz target for the on-disk decoders: the slot trailer, the catalog's
 * block and context records and block keys. Whatever the bytes, a decoder
 * accepts or refuses without reading out of bounds, and what it accepts
 * re-encodes to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	switch (data[0] % 4) {
	case 0:
		if (n >= RECORD_TRAILER_SIZE) {
			struct block_trailer t;
			if (record_trailer_decode(p, &t) == 0) {
				uint8_t again[RECORD_TRAILER_SIZE];
				record_trailer_encode(again, &t);
				if (memcmp(again, p, 48) || memcmp(again + 56, p + 56, 8))
					abort();
			}
		}
		break;
	case 1: {
		struct block_record b;
		if (record_block_decode(p, n, &b) == 0) {
			uint8_t again[RECORD_BLOCK_SIZE];
			record_block_encode(again, &b);
			if (memcmp(again, p, RECORD_BLOCK_SIZE))
				abort();
		}
		break;
	}
	case 2: {
		struct ctx_record c;
		if (record_ctx_decode(p, n, &c) == 0) {
			uint8_t *again;
			size_t len;
			if (record_ctx_encode(&c, &again, &len) == 0) {
				if (len != n || memcmp(again, p, n))
					abort();
				free(again);
			}
			free(c.layer_tokens);
		}
		break;
	}
	default: {
		uint64_t ctx, block;
		uint32_t layer, head;
		if (record_block_key_decode(p, n, &ctx, &layer, &head, &block) == 0) {
			uint8_t again[RECORD_BLOCK_KEY_SIZE];
			record_block_key(again, ctx, layer, head, block);
			if (memcmp(again, p, RECORD_BLOCK_KEY_SIZE))
				abort();
		}
		break;
	}
	}
	return 0;
}

/* Valid encodings for the replay driver to mutate. */
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap)
{
	if (cap < 1 + 200)
		return 0;
	buf[0] = (uint8_t)(i % 4);
	switch (i % 4) {
	case 0: {
		struct block_trailer t = { 7, 1, 2, 3, 64, 4096, 0x1234 };
		record_trailer_encode(buf + 1, &t);
		return 1 + RECORD_TRAILER_SIZE;
	}
	case 1: {
		struct block_record b = { 5, 6, 7, 0 };
		record_block_encode(buf + 1, &b);
		return 1 + RECORD_BLOCK_SIZE;
	}
	case 2: {
		uint64_t lt[2] = { 100, 64 };
		struct ctx_record c = { .id = 3, .n_layers = 2, .n_kv_heads = 1, .n_q_heads = 4, .head_dim = 64,
					.dtype = 2, .state = 1, .block_tokens = 64, .slot_bytes = 20480,
					.layer_tokens = lt };
		strcpy(c.name, "ctx");
		uint8_t *e;
		size_t len;
		if (record_ctx_encode(&c, &e, &len) || len + 1 > cap)
			return 0;
		memcpy(buf + 1, e, len);
		free(e);
		return 1 + len;
	}
	default:
		record_block_key(buf + 1, 1, 2, 3, 4);
		return 1 + RECORD_BLOCK_KEY_SIZE;
	}
}
