/* Prefill queries of one layer, an even subsample of every position sent (qstore.h). */
#include "qstore.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define QS_MAGIC 0x53514e4du /* "MNQS" little-endian */
#define QS_VERSION 1u
#define QS_HEADER 48u
#define QS_MAX_ROW (1u << 20)   /* n_q * d: PROTO_MAX_HEADS * PROTO_MAX_HEAD_DIM */

struct qstore {
	uint32_t n_q, d, cap;
	uint64_t stride;          /* kept row j holds the position of ordinal j * stride */
	uint64_t seen, kept;
	uint64_t rows;            /* rows allocated */
	float *q;                 /* [rows][n_q][d] */
};

static size_t row_floats(const struct qstore *s) { return (size_t)s->n_q * s->d; }

struct qstore *qstore_new(uint32_t n_q, uint32_t d, uint32_t cap)
{
	if (!n_q || !d || (uint64_t)n_q * d > QS_MAX_ROW || cap < 2)
		return NULL;
	struct qstore *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->n_q = n_q;
	s->d = d;
	s->cap = cap;
	s->stride = 1;
	return s;
}

void qstore_free(struct qstore *s)
{
	if (!s)
		return;
	free(s->q);
	free(s);
}

uint64_t qstore_kept(const struct qstore *s) { return s->kept; }
uint64_t qstore_seen(const struct qstore *s) { return s->seen; }
size_t qstore_memory(const struct qstore *s) { return sizeof(*s) + s->rows * row_floats(s) * sizeof(float); }

static int reserve(struct qstore *s, uint64_t rows)
{
	if (rows <= s->rows)
		return 0;
	uint64_t want = s->rows ? s->rows : 16;
	while (want < rows)
		want *= 2;
	if (want > s->cap)
		want = s->cap;
	float *q = realloc(s->q, want * row_floats(s) * sizeof(float));
	if (!q)
		return -ENOMEM;
	s->q = q;
	s->rows = want;
	return 0;
}

/* Keep the even rows: ordinals that are multiples of twice the stride. */
static void halve(struct qstore *s)
{
	const size_t rf = row_floats(s);
	uint64_t j = 0;
	for (uint64_t i = 0; i < s->kept; i += 2, j++)
		if (i != j)
			memcpy(s->q + j * rf, s->q + i * rf, rf * sizeof(float));
	s->kept = j;
	s->stride *= 2;
}

int qstore_add(struct qstore *s, uint32_t n_pos, const float *q)
{
	if (!n_pos)
		return -EINVAL;
	/* the rows this call can need at most, reserved first so failure changes nothing */
	uint64_t need = s->kept + n_pos;
	if (reserve(s, need < s->cap ? need : s->cap))
		return -ENOMEM;
	const size_t rf = row_floats(s);
	for (uint32_t i = 0; i < n_pos; i++, s->seen++) {
		if (s->seen % s->stride)
			continue;
		if (s->kept == s->cap) {
			halve(s);
			if (s->seen % s->stride)
				continue;
		}
		float *row = s->q + s->kept * rf;
		for (uint32_t h = 0; h < s->n_q; h++)
			memcpy(row + (size_t)h * s->d, q + ((size_t)h * n_pos + i) * s->d, s->d * sizeof(float));
		s->kept++;
	}
	return 0;
}

int qstore_group(const struct qstore *s, uint32_t first, uint32_t G, float scale, float **out, uint64_t *n)
{
	*out = NULL;
	*n = 0;
	if (!G || first > s->n_q || G > s->n_q - first)
		return -EINVAL;
	if (!s->kept)
		return 0;
	const size_t gd = (size_t)G * s->d;
	float *g = malloc(s->kept * gd * sizeof(float));
	if (!g)
		return -ENOMEM;
	for (uint64_t r = 0; r < s->kept; r++) {
		const float *src = s->q + r * row_floats(s) + (size_t)first * s->d;
		for (size_t i = 0; i < gd; i++)
			g[r * gd + i] = src[i] * scale;
	}
	*out = g;
	*n = s->kept;
	return 0;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int qstore_save(const struct qstore *s, uint8_t **buf, size_t *len)
{
	const size_t body = s->kept * row_floats(s) * sizeof(float);
	uint8_t *b = malloc(QS_HEADER + body);
	if (!b)
		return -ENOMEM;
	put32(b, QS_MAGIC);
	put32(b + 4, QS_VERSION);
	put32(b + 8, s->n_q);
	put32(b + 12, s->d);
	put32(b + 16, s->cap);
	put32(b + 20, 0);
	put64(b + 24, s->stride);
	put64(b + 32, s->seen);
	put64(b + 40, s->kept);
	if (body)
		memcpy(b + QS_HEADER, s->q, body);
	*buf = b;
	*len = QS_HEADER + body;
	return 0;
}

int qstore_load(const uint8_t *buf, size_t len, uint32_t n_q, uint32_t d, uint32_t cap, struct qstore **out)
{
	*out = NULL;
	if (len < QS_HEADER || get32(buf) != QS_MAGIC || get32(buf + 4) != QS_VERSION || get32(buf + 8) != n_q ||
	    get32(buf + 12) != d || get32(buf + 20))
		return -EBADMSG;
	const uint64_t stride = get64(buf + 24), seen = get64(buf + 32), kept = get64(buf + 40);
	/* a power-of-two stride, and the rows the ordinals [0, seen) that are its multiples fill */
	if (!stride || (stride & (stride - 1)) || kept > cap || seen / stride + (seen % stride != 0) != kept)
		return -EBADMSG;
	struct qstore *s = qstore_new(n_q, d, cap);
	if (!s)
		return -ENOMEM;
	const size_t body = kept * row_floats(s) * sizeof(float);
	if (len - QS_HEADER != body) {
		qstore_free(s);
		return -EBADMSG;
	}
	if (kept && reserve(s, kept)) {
		qstore_free(s);
		return -ENOMEM;
	}
	if (body)
		memcpy(s->q, buf + QS_HEADER, body);
	s->stride = stride;
	s->seen = seen;
	s->kept = kept;
	*out = s;
	return 0;
}
