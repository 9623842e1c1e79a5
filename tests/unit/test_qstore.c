/*
 * Prefill query stores (retrieval/qstore.h): fed positions in random-sized
 * calls, a store keeps exactly the ordinals that are multiples of the
 * smallest power of two p with ceil(seen / p) <= cap (computed here
 * independently), each row holding its own position's queries; the group
 * view is the right heads, scaled; a saved store loads back identical, and
 * hostile blobs (truncated, a flipped header field, rows that disagree with
 * the counts) are refused.
 */
#include <errno.h>
#include <string.h>

#include "../check.h"
#include "qstore.h"

enum { NQ = 6, D = 8 };

/* position t, head h, element i: exact in f32 for the sizes used here */
static float value(uint64_t t, uint32_t h, uint32_t i) { return (float)(t * 100 + h * 10 + i); }

static uint64_t expected_stride(uint64_t seen, uint32_t cap)
{
	uint64_t p = 1;
	while ((seen + p - 1) / p > cap)
		p *= 2;
	return p;
}

/* every kept row holds ordinal j * stride, checked through the group view of all heads */
static int rows_ok(const struct qstore *s, uint64_t stride)
{
	float *g;
	uint64_t n;
	if (qstore_group(s, 0, NQ, 1.0f, &g, &n))
		return 0;
	int ok = n == qstore_kept(s);
	for (uint64_t j = 0; ok && j < n; j++)
		for (uint32_t h = 0; h < NQ; h++)
			for (uint32_t i = 0; i < D; i++)
				ok &= g[(j * NQ + h) * D + i] == value(j * stride, h, i);
	free(g);
	return ok;
}

static void feed(struct qstore *s, uint64_t first, uint32_t n)
{
	float *q = malloc((size_t)NQ * n * D * sizeof(float));
	for (uint32_t h = 0; h < NQ; h++)
		for (uint32_t t = 0; t < n; t++)
			for (uint32_t i = 0; i < D; i++)
				q[((size_t)h * n + t) * D + i] = value(first + t, h, i);
	CHECK(qstore_add(s, n, q) == 0, "add %u", n);
	free(q);
}

int main(void)
{
	uint64_t seed = check_seed();
	CHECK(!qstore_new(0, D, 8) && !qstore_new(NQ, 0, 8) && !qstore_new(NQ, D, 1), "bad shapes accepted");

	const uint32_t caps[] = { 2, 3, 16, 100 };
	for (unsigned c = 0; c < 4; c++) {
		const uint32_t cap = caps[c];
		struct qstore *s = qstore_new(NQ, D, cap);
		CHECK(s && qstore_kept(s) == 0 && qstore_seen(s) == 0, "new store");
		float *g;
		uint64_t n;
		CHECK(qstore_group(s, 0, 2, 1.0f, &g, &n) == 0 && !g && n == 0, "empty group view");
		CHECK(qstore_add(s, 0, NULL) == -EINVAL, "zero positions accepted");
		uint64_t seen = 0;
		int ok = 1;
		for (int call = 0; call < 40; call++) {
			uint32_t k = 1 + (uint32_t)(check_rand(&seed) % (call < 20 ? 7 : 90));
			feed(s, seen, k);
			seen += k;
			uint64_t p = expected_stride(seen, cap);
			ok &= qstore_seen(s) == seen && qstore_kept(s) == (seen + p - 1) / p && qstore_kept(s) <= cap &&
			      rows_ok(s, p);
		}
		CHECK(ok, "cap %u: the kept ordinals are not the multiples of the smallest fitting stride", cap);

		/* the group view: heads [2, 5) scaled */
		const uint64_t p = expected_stride(seen, cap);
		CHECK(qstore_group(s, 2, 3, 0.5f, &g, &n) == 0 && n == qstore_kept(s), "group view");
		ok = 1;
		for (uint64_t j = 0; g && j < n; j++)
			for (uint32_t h = 0; h < 3; h++)
				for (uint32_t i = 0; i < D; i++)
					ok &= g[(j * 3 + h) * D + i] == 0.5f * value(j * p, 2 + h, i);
		CHECK(ok, "group view holds other heads or another scale");
		free(g);
		CHECK(qstore_group(s, 4, 3, 1.0f, &g, &n) == -EINVAL && qstore_group(s, 0, 0, 1.0f, &g, &n) == -EINVAL,
		      "a group past the heads accepted");

		/* save, load, and the loaded store goes on as the original does */
		uint8_t *blob;
		size_t len;
		CHECK(qstore_save(s, &blob, &len) == 0, "save");
		struct qstore *r;
		CHECK(qstore_load(blob, len, NQ, D, cap, &r) == 0 && qstore_kept(r) == qstore_kept(s) &&
			      qstore_seen(r) == seen && rows_ok(r, p),
		      "cap %u: loaded store differs", cap);
		feed(s, seen, 37);
		feed(r, seen, 37);
		uint64_t p2 = expected_stride(seen + 37, cap);
		CHECK(rows_ok(r, p2) && qstore_kept(r) == qstore_kept(s), "loaded store grows differently");
		qstore_free(r);

		/* hostile blobs */
		int refused = 1;
		for (size_t cut = 0; cut < len; cut += 1 + len / 50)
			refused &= qstore_load(blob, cut, NQ, D, cap, &r) == -EBADMSG && !r;
		refused &= qstore_load(blob, len, NQ + 1, D, cap, &r) == -EBADMSG;
		refused &= qstore_load(blob, len, NQ, D * 2, cap, &r) == -EBADMSG;
		uint8_t *bad = malloc(len + 8);
		const size_t fields[] = { 0, 4, 20, 24, 40 };  /* magic, version, reserved, stride, kept */
		for (unsigned f = 0; f < 5; f++) {
			memcpy(bad, blob, len);
			bad[fields[f]] ^= f == 3 ? 0x03 : 0x01;
			refused &= qstore_load(bad, len, NQ, D, cap, &r) == -EBADMSG;
		}
		/* seen two strides on: more rows than the blob holds */
		memcpy(bad, blob, len);
		uint64_t v;
		memcpy(&v, bad + 32, 8);
		v += 2 * p;
		memcpy(bad + 32, &v, 8);
		refused &= qstore_load(bad, len, NQ, D, cap, &r) == -EBADMSG;
		memcpy(bad, blob, len);
		bad[len] = 0;
		refused &= qstore_load(bad, len + 1, NQ, D, cap, &r) == -EBADMSG;
		CHECK(refused, "cap %u: a hostile blob was accepted", cap);
		free(bad);
		free(blob);
		qstore_free(s);
	}
	return check_exit();
}
