/*
 * The host tier and the block store: appends land where FETCH finds them
 * (checked against the request bytes themselves), layers grow on their own,
 * a refused append changes nothing, the budget holds, names are unique,
 * drop frees memory once the last handle goes.
 */
#include <errno.h>
#include <string.h>

#include "../check.h"
#include "store.h"
#include "tier.h"

static struct tier *host;
static struct store *st;

static void setup(uint64_t budget, uint32_t B)
{
	struct tier_config tc = { .budget_bytes = budget };
	if (tier_host_ops.open(&tc, &host))
		abort();
	struct store_config sc = { .block_tokens = B, .host_ops = &tier_host_ops, .host = host };
	const char *why;
	if (store_open(&sc, &st, &why))
		abort();
}

static void teardown(void)
{
	store_destroy(st);
	struct tier_stats ts;
	tier_host_ops.stats(host, &ts);
	CHECK(ts.used_bytes == 0 && ts.blocks == 0, "memory left after destroy: %llu bytes",
	      (unsigned long long)ts.used_bytes);
	tier_host_ops.close(host);
}

/* Element (layer, kv, head, token, i) of a synthetic context, as a byte pattern. */
static void fill(uint8_t *p, const struct kv_geometry *g, uint32_t l0, uint32_t nl, uint64_t t0,
		 uint32_t n)
{
	size_t row = (size_t)g->head_dim * g->elem_size;
	for (uint32_t l = 0; l < nl; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t h = 0; h < g->n_kv_heads; h++)
				for (uint32_t t = 0; t < n; t++)
					for (size_t b = 0; b < row; b++)
						*p++ = (uint8_t)((l0 + l) * 131 + kv * 71 + h * 37 +
								 (t0 + t) * 11 + b * 3);
}

static void test_append_fetch(uint32_t B, uint32_t dtype, uint32_t d)
{
	setup(1ull << 30, B);
	struct kv_geometry g = { .n_layers = 3, .n_kv_heads = 2, .n_q_heads = 4, .head_dim = d,
				 .dtype = dtype, .elem_size = dtype == 0 ? 4 : 2 };
	struct kv_ctx *c;
	CHECK(store_ctx_create(st, "a", 1, &g, 1000, &c) == 0, "create");
	const size_t row = (size_t)d * g.elem_size;
	/* uneven chunks, crossing block edges, layers at different lengths */
	const uint32_t chunks[] = { 1, B - 1, 2 * B + 3, 5, 300 };
	uint64_t t = 0;
	const char *why;
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		uint32_t n = chunks[i];
		if (!n)
			continue;
		size_t len = 3ull * 2 * g.n_kv_heads * n * row;
		uint8_t *buf = malloc(len);
		fill(buf, &g, 0, 3, t, n);
		uint64_t lt, ct;
		CHECK(kv_ctx_append(c, 0, 3, t, n, buf, len, &lt, &ct, &why) == 0, "append %zu", i);
		CHECK(lt == t + n && ct == t + n, "lengths after append %zu", i);
		free(buf);
		t += n;
	}
	/* layer 1 alone runs ahead */
	{
		uint32_t n = 10;
		size_t len = 2ull * g.n_kv_heads * n * row;
		uint8_t *buf = malloc(len);
		fill(buf, &g, 1, 1, t, n);
		uint64_t lt, ct;
		CHECK(kv_ctx_append(c, 1, 1, t, n, buf, len, &lt, &ct, &why) == 0, "layer 1 alone");
		CHECK(lt == t + 10 && ct == t, "context length is the shortest layer");
		free(buf);
		/* the same range again is refused: token_begin is no longer the length */
		buf = malloc(len);
		fill(buf, &g, 1, 1, t, n);
		CHECK(kv_ctx_append(c, 1, 1, t, n, buf, len, &lt, &ct, &why) == -ERANGE, "re-append");
		free(buf);
	}
	uint64_t sealed;
	CHECK(kv_ctx_seal(c, &sealed) == -EINVAL, "seal with uneven layers");

	/* fetch positions across blocks and compare with the pattern */
	uint64_t ids[] = { 0, 1, B - 1, B, B + 1, t - 1, t / 2, 7 };
	uint32_t n = sizeof(ids) / sizeof(ids[0]);
	for (uint32_t l = 0; l < 3; l++) {
		size_t len = 2ull * g.n_kv_heads * n * row;
		uint8_t *got = malloc(len), *want = malloc(len), *one = malloc(2ull * g.n_kv_heads * row);
		CHECK(kv_ctx_fetch(c, l, ids, n, got) == 0, "fetch layer %u", l);
		/* expected: [2][H][n][row] */
		for (uint32_t i = 0; i < n; i++) {
			fill(one, &g, l, 1, ids[i], 1);   /* [2][H][1][row] */
			for (uint32_t kv = 0; kv < 2; kv++)
				for (uint32_t h = 0; h < g.n_kv_heads; h++)
					memcpy(want + (((size_t)kv * g.n_kv_heads + h) * n + i) * row,
					       one + ((size_t)kv * g.n_kv_heads + h) * row, row);
		}
		CHECK(!memcmp(got, want, len), "fetched bytes of layer %u", l);
		free(got);
		free(want);
		free(one);
	}
	uint64_t past = t + 10;
	uint8_t tmp[2 * 2 * 4 * 64];
	CHECK(kv_ctx_fetch(c, 0, &past, 1, tmp) == -ERANGE, "fetch past the end");
	CHECK(kv_ctx_fetch(c, 3, ids, 1, tmp) == -EINVAL, "fetch bad layer");

	/* bring the others level, seal, and appends are refused */
	for (uint32_t l = 0; l < 3; l += 2) {
		size_t len = 2ull * g.n_kv_heads * 10 * row;
		uint8_t *buf = malloc(len);
		fill(buf, &g, l, 1, t, 10);
		uint64_t lt, ct;
		CHECK(kv_ctx_append(c, l, 1, t, 10, buf, len, &lt, &ct, &why) == 0, "level layer %u", l);
		free(buf);
	}
	CHECK(kv_ctx_seal(c, &sealed) == 0 && sealed == t + 10, "seal");
	{
		size_t len = 3ull * 2 * g.n_kv_heads * row;
		uint8_t *buf = calloc(1, len);
		uint64_t lt, ct;
		CHECK(kv_ctx_append(c, 0, 3, t + 10, 1, buf, len, &lt, &ct, &why) == -EROFS, "append after seal");
		free(buf);
	}
	kv_ctx_put(c);
	teardown();
}

static void test_refusals(void)
{
	const uint32_t B = 16;
	struct kv_geometry g = { .n_layers = 2, .n_kv_heads = 1, .n_q_heads = 1, .head_dim = 8,
				 .dtype = 0, .elem_size = 4 };
	const size_t block = 2ull * B * 8 * 4;   /* RAM only: a block is its bytes */
	/* room for exactly 5 blocks */
	setup(5 * block, B);
	struct kv_ctx *c, *c2;
	CHECK(store_ctx_create(st, "x", 1, &g, 1, &c) == 0, "create");
	CHECK(store_ctx_create(st, "x", 1, &g, 2, &c2) == -EEXIST, "duplicate name");
	const char *why;
	uint64_t lt, ct;
	uint8_t buf[2 * 2 * 64 * 8 * 4];
	memset(buf, 1, sizeof(buf));
	CHECK(kv_ctx_append(c, 0, 2, 0, 32, buf, 2ull * 2 * 32 * 32, &lt, &ct, &why) == 0, "4 blocks");
	/* 2 more blocks (one per layer) do not fit in the fifth: nothing may change */
	CHECK(kv_ctx_append(c, 0, 2, 32, 1, buf, 2ull * 2 * 1 * 32, &lt, &ct, &why) == -ENOMEM,
	      "over budget accepted");
	CHECK(kv_ctx_layer_tokens(c, 0) == 32 && kv_ctx_layer_tokens(c, 1) == 32, "refusal changed lengths");
	struct tier_stats ts;
	tier_host_ops.stats(host, &ts);
	CHECK(ts.used_bytes == 4 * block, "refusal leaked %llu bytes", (unsigned long long)ts.used_bytes);
	/* one layer still fits */
	CHECK(kv_ctx_append(c, 0, 1, 32, 1, buf, 2ull * 1 * 1 * 32, &lt, &ct, &why) == 0, "fifth block");
	CHECK(kv_ctx_append(c, 0, 1, 33, 1, buf, 2ull * 32 - 1, &lt, &ct, &why) == -EINVAL, "short data");
	CHECK(kv_ctx_append(c, 0, 1, 33, 0, buf, 0, &lt, &ct, &why) == -EINVAL, "zero tokens");
	CHECK(kv_ctx_append(c, 1, 2, 32, 1, buf, 2ull * 2 * 32, &lt, &ct, &why) == -EINVAL, "layer range");

	/* drop with a handle still held: found no more, freed at the last put */
	struct kv_ctx *h;
	CHECK(store_ctx_find(st, 0, "x", 1, &h) == 0 && h == c, "find by name");
	store_ctx_drop(st, c);
	CHECK(store_ctx_find(st, kv_ctx_id(c), NULL, 0, &c2) == -ENOENT, "dropped is found");
	tier_host_ops.stats(host, &ts);
	CHECK(ts.used_bytes == 5 * block, "freed while a handle is held");
	kv_ctx_put(h);
	kv_ctx_put(c);
	tier_host_ops.stats(host, &ts);
	CHECK(ts.used_bytes == 0, "not freed after the last handle");
	CHECK(store_ctx_create(st, "x", 1, &g, 1, &c) == 0, "name free again");
	kv_ctx_put(c);
	teardown();
}

int main(void)
{
	test_append_fetch(64, 2, 128);
	test_append_fetch(16, 0, 7);
	test_append_fetch(1, 1, 3);
	test_refusals();
	return check_exit();
}
