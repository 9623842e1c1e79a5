/* On-disk records: slot trailer and catalog values. */
#include "record.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY  /* XXH3_state_t on the stack */
#include <xxhash.h>

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }
static void putbe64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i)); }
static void putbe32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i)); }
static uint64_t getbe64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static uint32_t getbe32(const uint8_t *p) { uint32_t v = 0; for (int i = 0; i < 4; i++) v = v << 8 | p[i]; return v; }

uint64_t record_checksum(const void *p, size_t n)
{
	return XXH3_64bits(p, n);
}

uint64_t record_block_checksum(const void *p, size_t n, uint64_t ctx, uint32_t layer, uint32_t head,
			       uint64_t block)
{
	uint8_t key[RECORD_BLOCK_KEY_SIZE];
	record_block_key(key, ctx, layer, head, block);
	return XXH3_64bits_withSeed(p, n, XXH3_64bits(key, sizeof(key)));
}

uint64_t record_block_checksum2(const void *a, size_t na, const void *b, size_t nb, uint64_t ctx,
				uint32_t layer, uint32_t head, uint64_t block)
{
	uint8_t key[RECORD_BLOCK_KEY_SIZE];
	record_block_key(key, ctx, layer, head, block);
	XXH3_state_t st;
	XXH3_64bits_reset_withSeed(&st, XXH3_64bits(key, sizeof(key)));
	XXH3_64bits_update(&st, a, na);
	XXH3_64bits_update(&st, b, nb);
	return XXH3_64bits_digest(&st);
}

/* trailer: magic u32, version u16, pad u16, ctx u64, layer u32, head u32,
 * block u64, tokens u32, data_bytes u32, checksum u64, pad to 56, self u64 */
void record_trailer_encode(uint8_t *out, const struct block_trailer *t)
{
	memset(out, 0, RECORD_TRAILER_SIZE);
	put32(out, RECORD_TRAILER_MAGIC);
	put16(out + 4, RECORD_VERSION);
	put64(out + 8, t->ctx_id);
	put32(out + 16, t->layer);
	put32(out + 20, t->head);
	put64(out + 24, t->block);
	put32(out + 32, t->tokens);
	put32(out + 36, t->data_bytes);
	put64(out + 40, t->checksum);
	put64(out + 56, XXH3_64bits(out, 56));
}

int record_trailer_decode(const uint8_t *in, struct block_trailer *t)
{
	if (get32(in) != RECORD_TRAILER_MAGIC || get16(in + 4) != RECORD_VERSION ||
	    get64(in + 56) != XXH3_64bits(in, 56))
		return -EBADMSG;
	t->ctx_id = get64(in + 8);
	t->layer = get32(in + 16);
	t->head = get32(in + 20);
	t->block = get64(in + 24);
	t->tokens = get32(in + 32);
	t->data_bytes = get32(in + 36);
	t->checksum = get64(in + 40);
	return 0;
}

void record_block_encode(uint8_t out[RECORD_BLOCK_SIZE], const struct block_record *b)
{
	put64(out, b->slot);
	put64(out + 8, b->checksum);
	put32(out + 16, b->tokens);
	put32(out + 20, b->flags);
}

int record_block_decode(const void *in, size_t n, struct block_record *b)
{
	const uint8_t *p = in;
	if (n != RECORD_BLOCK_SIZE)
		return -EBADMSG;
	b->slot = get64(p);
	b->checksum = get64(p + 8);
	b->tokens = get32(p + 16);
	b->flags = get32(p + 20);
	if (b->flags & ~BLOCK_BAD)
		return -EBADMSG;
	return 0;
}

void record_block_key(uint8_t out[RECORD_BLOCK_KEY_SIZE], uint64_t ctx, uint32_t layer,
		      uint32_t head, uint64_t block)
{
	putbe64(out, ctx);
	putbe32(out + 8, layer);
	putbe32(out + 12, head);
	putbe64(out + 16, block);
}

int record_block_key_decode(const void *in, size_t n, uint64_t *ctx, uint32_t *layer,
			    uint32_t *head, uint64_t *block)
{
	const uint8_t *p = in;
	if (n != RECORD_BLOCK_KEY_SIZE)
		return -EBADMSG;
	*ctx = getbe64(p);
	*layer = getbe32(p + 8);
	*head = getbe32(p + 12);
	*block = getbe64(p + 16);
	return 0;
}

void record_ctx_key(uint8_t out[8], uint64_t id)
{
	putbe64(out, id);
}

/* ctx: magic u32, version u16, name_len u16, id u64, 5 x u32 geometry,
 * rope f32, owner u32, state u32, block_tokens u32, slot_bytes u32,
 * name, n_layers x u64 */
#define CTX_FIXED 56u

int record_ctx_encode(const struct ctx_record *c, uint8_t **out, size_t *len)
{
	size_t nl = strnlen(c->name, sizeof(c->name));
	size_t n = CTX_FIXED + nl + (size_t)c->n_layers * 8;
	uint8_t *p = malloc(n);
	if (!p)
		return -ENOMEM;
	uint32_t rope;
	memcpy(&rope, &c->rope_theta, 4);
	put32(p, RECORD_CTX_MAGIC);
	put16(p + 4, RECORD_VERSION);
	put16(p + 6, (uint16_t)nl);
	put64(p + 8, c->id);
	put32(p + 16, c->n_layers);
	put32(p + 20, c->n_kv_heads);
	put32(p + 24, c->n_q_heads);
	put32(p + 28, c->head_dim);
	put32(p + 32, c->dtype);
	put32(p + 36, rope);
	put32(p + 40, c->owner_uid);
	put32(p + 44, c->state);
	put32(p + 48, c->block_tokens);
	put32(p + 52, c->slot_bytes);
	memcpy(p + CTX_FIXED, c->name, nl);
	for (uint32_t l = 0; l < c->n_layers; l++)
		put64(p + CTX_FIXED + nl + 8 * l, c->layer_tokens[l]);
	*out = p;
	*len = n;
	return 0;
}

int record_ctx_decode(const void *in, size_t n, struct ctx_record *c)
{
	const uint8_t *p = in;
	memset(c, 0, sizeof(*c));
	if (n < CTX_FIXED || get32(p) != RECORD_CTX_MAGIC || get16(p + 4) != RECORD_VERSION)
		return -EBADMSG;
	size_t nl = get16(p + 6);
	c->id = get64(p + 8);
	c->n_layers = get32(p + 16);
	c->n_kv_heads = get32(p + 20);
	c->n_q_heads = get32(p + 24);
	c->head_dim = get32(p + 28);
	c->dtype = get32(p + 32);
	uint32_t rope = get32(p + 36);
	memcpy(&c->rope_theta, &rope, 4);
	c->owner_uid = get32(p + 40);
	c->state = get32(p + 44);
	c->block_tokens = get32(p + 48);
	c->slot_bytes = get32(p + 52);
	if (nl == 0 || nl > 255 || c->n_layers == 0 || c->n_layers > 1024 ||
	    n != CTX_FIXED + nl + (size_t)c->n_layers * 8 || (c->state != 1 && c->state != 2))
		return -EBADMSG;
	for (size_t i = 0; i < nl; i++)
		if (p[CTX_FIXED + i] < 0x21 || p[CTX_FIXED + i] > 0x7e)
			return -EBADMSG;     /* names are printable ASCII, as on the wire */
	memcpy(c->name, p + CTX_FIXED, nl);
	c->name[nl] = 0;
	c->layer_tokens = malloc((size_t)c->n_layers * 8);
	if (!c->layer_tokens)
		return -ENOMEM;
	for (uint32_t l = 0; l < c->n_layers; l++)
		c->layer_tokens[l] = get64(p + CTX_FIXED + nl + 8 * l);
	return 0;
}
