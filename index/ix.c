/* Helpers the policies share (ix.h): blobs, scratch, threads, scoring, selection. */
#define _GNU_SOURCE
#include "ix.h"

#include <endian.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <unistd.h>
#include <xxhash.h>

void ix_assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "mnemo index: %s:%d: %s\n", file, line, what);
	abort();
}

/* ---- blobs ------------------------------------------------------------ */

static void wr_reserve(struct ix_wr *w, size_t more)
{
	if (w->err)
		return;
	if (more > SIZE_MAX - w->len) {
		w->err = -ENOMEM;
		return;
	}
	if (w->len + more <= w->cap)
		return;
	size_t cap = w->cap ? w->cap : 256;
	while (cap < w->len + more)
		cap = cap > SIZE_MAX / 2 ? w->len + more : cap * 2;
	uint8_t *p = realloc(w->buf, cap);
	if (!p) {
		w->err = -ENOMEM;
		return;
	}
	w->buf = p;
	w->cap = cap;
}

void ix_wr_bytes(struct ix_wr *w, const void *p, size_t n)
{
	wr_reserve(w, n);
	if (w->err || !n)
		return;
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void ix_wr_u32(struct ix_wr *w, uint32_t v)
{
	uint32_t le = htole32(v);
	ix_wr_bytes(w, &le, 4);
}

void ix_wr_u64(struct ix_wr *w, uint64_t v)
{
	uint64_t le = htole64(v);
	ix_wr_bytes(w, &le, 8);
}

void ix_wr_f32(struct ix_wr *w, float v)
{
	uint32_t u;
	memcpy(&u, &v, 4);
	ix_wr_u32(w, u);
}

void ix_wr_f32s(struct ix_wr *w, const float *v, size_t n)
{
	if (n > SIZE_MAX / 4) {
		w->err = -ENOMEM;
		return;
	}
	wr_reserve(w, n * 4);
	if (w->err)
		return;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (n)
		memcpy(w->buf + w->len, v, n * 4);
	w->len += n * 4;
#else
	for (size_t i = 0; i < n; i++)
		ix_wr_f32(w, v[i]);
#endif
}

bool ix_bf16_exact(const float *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &v[i], 4);
		if (u & 0xffffu)
			return false;
	}
	return true;
}

void ix_wr_u32s(struct ix_wr *w, const uint32_t *v, size_t n)
{
	if (n > SIZE_MAX / 4) {
		w->err = -ENOMEM;
		return;
	}
	wr_reserve(w, n * 4);
	if (w->err)
		return;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (n)
		memcpy(w->buf + w->len, v, n * 4);
	w->len += n * 4;
#else
	for (size_t i = 0; i < n; i++)
		ix_wr_u32(w, v[i]);
#endif
}

void ix_wr_begin(struct ix_wr *w, unsigned policy, uint16_t version, size_t hint)
{
	memset(w, 0, sizeof(*w));
	wr_reserve(w, hint > IX_HEADER_BYTES ? hint : IX_HEADER_BYTES);
	uint8_t h[8];
	uint16_t pol = htole16((uint16_t)policy), ver = htole16(version);
	uint32_t magic = htole32(IX_MAGIC);
	memcpy(h, &magic, 4);
	memcpy(h + 4, &pol, 2);
	memcpy(h + 6, &ver, 2);
	ix_wr_bytes(w, h, 8);
	ix_wr_u64(w, 0); /* body length, patched by ix_wr_end() */
}

int ix_wr_end(struct ix_wr *w, uint8_t **buf, size_t *len)
{
	int rc = w->err;
	if (!rc && w->len < IX_HEADER_BYTES)
		rc = -EINVAL;
	if (rc) {
		free(w->buf);
		memset(w, 0, sizeof(*w));
		return rc;
	}
	uint64_t body = htole64((uint64_t)(w->len - IX_HEADER_BYTES));
	memcpy(w->buf + 8, &body, 8);
	*buf = w->buf;
	*len = w->len;
	memset(w, 0, sizeof(*w));
	return 0;
}

int ix_rd_begin(struct ix_rd *r, const uint8_t *buf, size_t len, unsigned policy, uint16_t version)
{
	r->p = buf;
	r->left = len;
	r->err = 0;
	if (!buf || len < IX_HEADER_BYTES) {
		r->err = -EBADMSG;
		return r->err;
	}
	uint32_t magic;
	uint16_t pol, ver;
	uint64_t body;
	memcpy(&magic, buf, 4);
	memcpy(&pol, buf + 4, 2);
	memcpy(&ver, buf + 6, 2);
	memcpy(&body, buf + 8, 8);
	if (le32toh(magic) != IX_MAGIC || le16toh(pol) != policy || le16toh(ver) != version ||
	    le64toh(body) != (uint64_t)(len - IX_HEADER_BYTES)) {
		r->err = -EBADMSG;
		return r->err;
	}
	r->p += IX_HEADER_BYTES;
	r->left -= IX_HEADER_BYTES;
	return 0;
}

const uint8_t *ix_rd_bytes(struct ix_rd *r, size_t n)
{
	if (r->err || n > r->left) {
		r->err = -EBADMSG;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

uint32_t ix_rd_u32(struct ix_rd *r)
{
	const uint8_t *p = ix_rd_bytes(r, 4);
	uint32_t v = 0;
	if (p)
		memcpy(&v, p, 4);
	return le32toh(v);
}

uint64_t ix_rd_u64(struct ix_rd *r)
{
	const uint8_t *p = ix_rd_bytes(r, 8);
	uint64_t v = 0;
	if (p)
		memcpy(&v, p, 8);
	return le64toh(v);
}

float ix_rd_f32(struct ix_rd *r)
{
	uint32_t u = ix_rd_u32(r);
	float f;
	memcpy(&f, &u, 4);
	if (!isfinite(f)) {
		r->err = -EBADMSG;
		return 0;
	}
	return f;
}

int ix_rd_f32s(struct ix_rd *r, size_t n, float **out)
{
	*out = NULL;
	if (r->err || n > r->left / 4) {
		r->err = -EBADMSG;
		return r->err;
	}
	uint32_t *v = ix_alloc_big(n * 4);
	if (!v)
		return -ENOMEM;
	const uint8_t *p = ix_rd_bytes(r, n * 4);
	memcpy(v, p, n * 4);
	/* one branch-free pass (it vectorizes): an all-ones exponent is an infinity or a NaN */
	uint32_t bad = 0;
	for (size_t i = 0; i < n; i++) {
		v[i] = le32toh(v[i]);
		bad |= (v[i] & 0x7f800000u) == 0x7f800000u;
	}
	if (bad) {
		free(v);
		r->err = -EBADMSG;
		return r->err;
	}
	*out = (float *)v;
	return 0;
}

int ix_rd_mat(struct ix_rd *r, uint32_t dtype, size_t n, struct ix_mat *m)
{
	*m = (struct ix_mat){ 0 };
	if (dtype == 0)
		return ix_rd_f32s(r, n, &m->f32);
	if (r->err || dtype != 1 || n > r->left / 2) {
		r->err = -EBADMSG;
		return r->err;
	}
	uint16_t *v = ix_alloc_big(n * 2);
	if (!v)
		return -ENOMEM;
	const uint8_t *p = ix_rd_bytes(r, n * 2);
	memcpy(v, p, n * 2);
#if __BYTE_ORDER != __LITTLE_ENDIAN
	for (size_t i = 0; i < n; i++)
		v[i] = le16toh(v[i]);
#endif
	/*
	 * Infinities and NaNs have an all-ones exponent. Four values per 64-bit
	 * word: a lane of (x & E) ^ E is zero exactly when its exponent is all
	 * ones, and the usual zero-lane test finds it (a restart checks
	 * megabytes of these before its first ATTEND).
	 */
	const uint64_t E = 0x7f807f807f807f80ull, ONE = 0x0001000100010001ull, TOP = 0x8000800080008000ull;
	uint64_t bad = 0;
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		uint64_t w;
		memcpy(&w, v + i, 8);
		w = (w & E) ^ E;
		bad |= (w - ONE) & ~w & TOP;
	}
	for (; i < n; i++)
		bad |= (v[i] & 0x7f80u) == 0x7f80u;
	if (bad) {
		free(v);
		r->err = -EBADMSG;
		return r->err;
	}
	m->bf16 = v;
	return 0;
}

void ix_mat_take(struct ix_mat *m, float *v, size_t n)
{
	*m = (struct ix_mat){ .f32 = v };
	if (!ix_bf16_exact(v, n))
		return;
	uint16_t *h = ix_alloc_big(n * 2);
	if (!h)
		return;             /* fp32 serves as well */
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &v[i], 4);
		h[i] = (uint16_t)(u >> 16);
	}
	free(v);
	*m = (struct ix_mat){ .bf16 = h };
}

void ix_mat_free(struct ix_mat *m)
{
	free(m->f32);
	free(m->bf16);
	*m = (struct ix_mat){ 0 };
}

size_t ix_mat_bytes(const struct ix_mat *m, size_t n)
{
	return m->f32 ? n * 4 : m->bf16 ? n * 2 : 0;
}

void ix_wr_mat(struct ix_wr *w, const struct ix_mat *m, size_t n)
{
	ix_wr_u32(w, m->bf16 != NULL);
	if (m->f32) {
		ix_wr_f32s(w, m->f32, n);
		return;
	}
	if (n > SIZE_MAX / 2) {
		w->err = -ENOMEM;
		return;
	}
	wr_reserve(w, n * 2);
	if (w->err)
		return;
	for (size_t i = 0; i < n; i++) {
		const uint16_t h = htole16(m->bf16[i]);
		memcpy(w->buf + w->len + 2 * i, &h, 2);
	}
	w->len += n * 2;
}

int ix_rd_u32s(struct ix_rd *r, size_t n, uint64_t below, uint32_t **out)
{
	*out = NULL;
	if (r->err || n > r->left / 4) {
		r->err = -EBADMSG;
		return r->err;
	}
	uint32_t *v = ix_alloc_big(n * 4);
	if (!v)
		return -ENOMEM;
	const uint8_t *p = ix_rd_bytes(r, n * 4);
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, p + 4 * i, 4);
		v[i] = le32toh(u);
		if (v[i] >= below) {
			free(v);
			r->err = -EBADMSG;
			return r->err;
		}
	}
	*out = v;
	return 0;
}

int ix_rd_end(const struct ix_rd *r)
{
	return r->err ? r->err : r->left ? -EBADMSG : 0;
}

uint64_t ix_checksum(const void *p, size_t n)
{
	return XXH3_64bits(p, n);
}

/* ---- threads and scratch ------------------------------------------------ */

unsigned ix_threads(unsigned threads, size_t items)
{
	if (!threads) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		threads = c > 0 ? (unsigned)(c < 256 ? c : 256) : 1;
	}
	if (threads > items)
		threads = items ? (unsigned)items : 1;
	return threads ? threads : 1;
}

struct par {
	int (*fn)(void *ctx, size_t item, unsigned worker);
	void *ctx;
	size_t n;
	atomic_size_t next;
	atomic_int rc;
};

struct par_worker {
	struct par *p;
	unsigned id;
};

static void par_run(struct par *p, unsigned id)
{
	for (;;) {
		size_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->n)
			return;
		int rc = p->fn(p->ctx, i, id);
		if (rc) {
			int zero = 0;
			atomic_compare_exchange_strong(&p->rc, &zero, rc);
		}
	}
}

static void *par_thread(void *arg)
{
	struct par_worker *w = arg;
	omp_set_num_threads(1);
	par_run(w->p, w->id);
	return NULL;
}

int ix_parallel(unsigned threads, size_t n_items, int (*fn)(void *ctx, size_t item, unsigned worker), void *ctx)
{
	struct par p = { .fn = fn, .ctx = ctx, .n = n_items };
	atomic_init(&p.next, 0);
	atomic_init(&p.rc, 0);
	unsigned t = ix_threads(threads, n_items);
	if (t == 1) {
		par_run(&p, 0);
		return atomic_load(&p.rc);
	}
	pthread_t tid[256];
	struct par_worker w[256];
	unsigned started = 0;
	for (unsigned i = 1; i < t; i++) {
		w[i] = (struct par_worker){ .p = &p, .id = i };
		if (pthread_create(&tid[i], NULL, par_thread, &w[i]))
			break; /* fewer workers: the items still all run */
		started = i;
	}
	int omp_saved = omp_get_max_threads();
	omp_set_num_threads(1);
	par_run(&p, 0);
	omp_set_num_threads(omp_saved);
	for (unsigned i = 1; i <= started; i++)
		pthread_join(tid[i], NULL);
	return atomic_load(&p.rc);
}

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;
static __thread void *scratch_mem;
static __thread size_t scratch_cap;

static void scratch_key_init(void)
{
	/* the key's destructor frees a thread's scratch when it exits */
	scratch_key_ok = pthread_key_create(&scratch_key, free) == 0;
}

#define IX_HUGE ((size_t)2 << 20)

void *ix_alloc_big(size_t bytes)
{
	void *p = NULL;
	if (bytes < IX_HUGE)
		return posix_memalign(&p, 64, bytes ? bytes : 1) ? NULL : p;
	if (bytes > SIZE_MAX - IX_HUGE)
		return NULL;
	const size_t len = (bytes + IX_HUGE - 1) & ~(IX_HUGE - 1);
	if (posix_memalign(&p, IX_HUGE, len))
		return NULL;
	/* best effort: without THP (or with it off) the memory is merely 4 KiB pages */
	(void)madvise(p, len, MADV_HUGEPAGE);
	return p;
}

void *ix_scratch(size_t bytes)
{
	if (bytes <= scratch_cap && scratch_mem)
		return scratch_mem;
	pthread_once(&scratch_once, scratch_key_init);
	size_t cap = scratch_cap ? scratch_cap : 65536;
	while (cap < bytes)
		cap = cap > SIZE_MAX / 2 ? bytes : cap * 2;
	void *p = ix_alloc_big(cap);
	if (!p)
		return NULL;
	free(scratch_mem);
	scratch_mem = p;
	scratch_cap = cap;
	if (scratch_key_ok)
		pthread_setspecific(scratch_key, p);
	return p;
}

/* ---- arithmetic -------------------------------------------------------- */

/* Eight floats: AVX registers in the AVX2 copies, SSE pairs otherwise.
 * Rows need no alignment (v8u); no function takes or returns one by value. */
typedef float v8f __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));

#define load8(p) (*(const v8u *)(p))

static inline float hsum8(const v8f *v)
{
	const v8f x = *v;
	return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}

static inline __attribute__((always_inline)) float dot_body(const float *a, const float *b, unsigned d)
{
	v8f acc0 = { 0 }, acc1 = { 0 };
	unsigned j = 0;
	for (; j + 16 <= d; j += 16) {
		acc0 += load8(a + j) * load8(b + j);
		acc1 += load8(a + j + 8) * load8(b + j + 8);
	}
	for (; j + 8 <= d; j += 8)
		acc0 += load8(a + j) * load8(b + j);
	acc0 += acc1;
	float s = hsum8(&acc0);
	for (; j < d; j++)
		s += a[j] * b[j];
	return s;
}

static inline __attribute__((always_inline)) void dots_body(const float *rows, size_t n, size_t stride,
							       const float *q, unsigned G, unsigned d, float *out)
{
	size_t i = 0;
	/* two rows at a time share each load of the queries */
	if (G % 4 == 0 && d % 8 == 0)
		for (; i + 2 <= n; i += 2) {
			const float *r0 = rows + i * stride, *r1 = r0 + stride;
			float *o = out + i * G;
			for (unsigned g = 0; g < G; g += 4) {
				const float *q0 = q + (size_t)g * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
				v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
				v8f b0 = { 0 }, b1 = { 0 }, b2 = { 0 }, b3 = { 0 };
				for (unsigned j = 0; j < d; j += 8) {
					v8f x = load8(r0 + j), y = load8(r1 + j), w;
					w = load8(q0 + j);
					a0 += x * w;
					b0 += y * w;
					w = load8(q1 + j);
					a1 += x * w;
					b1 += y * w;
					w = load8(q2 + j);
					a2 += x * w;
					b2 += y * w;
					w = load8(q3 + j);
					a3 += x * w;
					b3 += y * w;
				}
				o[g] = hsum8(&a0);
				o[g + 1] = hsum8(&a1);
				o[g + 2] = hsum8(&a2);
				o[g + 3] = hsum8(&a3);
				o[G + g] = hsum8(&b0);
				o[G + g + 1] = hsum8(&b1);
				o[G + g + 2] = hsum8(&b2);
				o[G + g + 3] = hsum8(&b3);
			}
		}
	for (; i < n; i++) {
		const float *r = rows + i * stride;
		float *o = out + i * G;
		unsigned g = 0;
		for (; g + 4 <= G; g += 4) {
			const float *q0 = q + (size_t)g * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
			v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
			unsigned j = 0;
			for (; j + 8 <= d; j += 8) {
				v8f x = load8(r + j);
				a0 += x * load8(q0 + j);
				a1 += x * load8(q1 + j);
				a2 += x * load8(q2 + j);
				a3 += x * load8(q3 + j);
			}
			float s0 = hsum8(&a0), s1 = hsum8(&a1), s2 = hsum8(&a2), s3 = hsum8(&a3);
			for (; j < d; j++) {
				s0 += r[j] * q0[j];
				s1 += r[j] * q1[j];
				s2 += r[j] * q2[j];
				s3 += r[j] * q3[j];
			}
			o[g] = s0;
			o[g + 1] = s1;
			o[g + 2] = s2;
			o[g + 3] = s3;
		}
		for (; g < G; g++) {
			const float *qg = q + (size_t)g * d;
			v8f a = { 0 };
			unsigned j = 0;
			for (; j + 8 <= d; j += 8)
				a += load8(r + j) * load8(qg + j);
			float s = hsum8(&a);
			for (; j < d; j++)
				s += r[j] * qg[j];
			o[g] = s;
		}
		for (g = 0; g < G; g++)
			if (isnan(o[g]))
				o[g] = -INFINITY;
	}
}

/* One bf16 row against G queries: the row widens 8 elements at a time. */
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint32_t v8w __attribute__((vector_size(32)));

/* eight bf16 at p widened to fp32 (a macro: no vector passes by value) */
#define bf16x8(p) ((v8f)(__builtin_convertvector(*(const v8h *)(p), v8w) << 16))

static inline __attribute__((always_inline)) void dots_bf16_body(const uint16_t *row, const float *q, unsigned G,
								  unsigned d, float *out)
{
	unsigned g = 0;
	if (d % 8 == 0)
		for (; g + 4 <= G; g += 4) {
			const float *q0 = q + (size_t)g * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
			v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
			for (unsigned j = 0; j < d; j += 8) {
				v8f x = bf16x8(row + j);
				a0 += x * load8(q0 + j);
				a1 += x * load8(q1 + j);
				a2 += x * load8(q2 + j);
				a3 += x * load8(q3 + j);
			}
			out[g] = hsum8(&a0);
			out[g + 1] = hsum8(&a1);
			out[g + 2] = hsum8(&a2);
			out[g + 3] = hsum8(&a3);
		}
	for (; g < G; g++) {
		float s = 0;
		for (unsigned j = 0; j < d; j++) {
			uint32_t u = (uint32_t)row[j] << 16;
			float x;
			memcpy(&x, &u, 4);
			s += x * q[(size_t)g * d + j];
		}
		out[g] = s;
	}
	for (g = 0; g < G; g++)
		if (isnan(out[g]))
			out[g] = -INFINITY;
}

static inline __attribute__((always_inline)) void dots_bf16_rows_body(const uint16_t *rows, size_t n, size_t stride,
								       const float *q, unsigned G, unsigned d,
								       float *out)
{
	for (size_t i = 0; i < n; i++)
		dots_bf16_body(rows + i * stride, q, G, d, out + i * G);
}

typedef int32_t v8i __attribute__((vector_size(32)));

/*
 * exp of eight floats, Cephes' expf: x = n ln 2 + r with |r| <= ln 2 / 2, a
 * degree-5 polynomial for e^r, 2^n into the exponent. Inputs above 88 are
 * clamped to it and those below -87.3 (where expf() leaves the normal
 * range) give 0, so -INFINITY is 0 as in expf(); NaN stays NaN.
 */
#define EXP8(out, xin)                                                                                   \
	do {                                                                                             \
		v8f x_ = (xin);                                                                          \
		const v8f hi_ = { 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f };              \
		const v8f lo_ = { -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f };      \
		v8i m_ = x_ > hi_;                                                                       \
		x_ = (v8f)(((v8i)hi_ & m_) | ((v8i)x_ & ~m_));                                           \
		const v8i under_ = x_ < lo_;                                                             \
		x_ = (v8f)(((v8i)lo_ & under_) | ((v8i)x_ & ~under_));                                   \
		const v8f magic_ = { 12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f,   \
				     12582912.0f, 12582912.0f, 12582912.0f };                            \
		v8f k_ = x_ * 1.44269504088896341f + magic_;                                            \
		const v8f n_ = k_ - magic_;                                                              \
		const v8i ni_ = (v8i)k_ - 0x4b400000;                                                    \
		const v8f r_ = x_ - n_ * 0.693359375f + n_ * 2.12194440e-4f;                             \
		v8f p_ = r_ * 1.9875691500e-4f + 1.3981999507e-3f;                                       \
		p_ = p_ * r_ + 8.3334519073e-3f;                                                         \
		p_ = p_ * r_ + 4.1665795894e-2f;                                                         \
		p_ = p_ * r_ + 1.6666665459e-1f;                                                         \
		p_ = p_ * r_ + 5.0000001201e-1f;                                                         \
		p_ = p_ * r_ * r_ + r_ + 1.0f;                                                           \
		(out) = (v8f)((v8i)(p_ * (v8f)((ni_ + 127) << 23)) & ~under_);                           \
	} while (0)

/* v[i*G + g] = exp(v[i*G + g] + c[g]) for i < n, eight values a step when G divides 8. */
static inline __attribute__((always_inline)) void exp_rows_body(float *v, size_t n, unsigned G, const float *c)
{
	const size_t total = n * G;
	size_t k = 0;
	if (G && 8 % G == 0) {
		v8f cc;
		for (unsigned i = 0; i < 8; i++)
			cc[i] = c[i % G];
		for (; k + 8 <= total; k += 8) {
			v8f y;
			EXP8(y, load8(v + k) + cc);
			memcpy(v + k, &y, sizeof(y));
		}
	}
	for (; k < total; k++)
		v[k] = expf(v[k] + c[k % G]);
}

/* A page's code weights: w[g][i] = q[g][i] * (max_i - min_i) / 15, base[g] = q[g] . min. */
static inline __attribute__((always_inline)) void code_weights_body(const struct ix_mat *m, size_t row, unsigned d,
								     const float *q, unsigned G, float *w,
								     float *base)
{
	const float inv15 = 1.0f / 15.0f;
	for (unsigned g = 0; g < G; g++) {
		const float *qg = q + (size_t)g * d;
		float *wg = w + (size_t)g * d;
		unsigned i = 0;
		v8f acc = { 0 };
		if (m->bf16)
			for (; i + 8 <= d; i += 8) {
				const v8f mx = bf16x8(m->bf16 + row + i), mn = bf16x8(m->bf16 + row + d + i);
				const v8f x = load8(qg + i);
				acc += x * mn;
				*(v8u *)(wg + i) = x * (mx - mn) * inv15;
			}
		else
			for (; i + 8 <= d; i += 8) {
				const v8f mx = load8(m->f32 + row + i), mn = load8(m->f32 + row + d + i);
				const v8f x = load8(qg + i);
				acc += x * mn;
				*(v8u *)(wg + i) = x * (mx - mn) * inv15;
			}
		float b = hsum8(&acc);
		for (; i < d; i++) {
			const float mx = ix_mat_at(m, row + i), mn = ix_mat_at(m, row + d + i);
			b += qg[i] * mn;
			wg[i] = qg[i] * (mx - mn) * inv15;
		}
		base[g] = b;
	}
}

/* Eight int8 at p widened to fp32 (a macro, as bf16x8). */
typedef int8_t v8b __attribute__((vector_size(8), aligned(1), may_alias));
#define i8x8(p) __builtin_convertvector(__builtin_convertvector(*(const v8b *)(p), v8i), v8f)

/* int8 rows against G queries: as dots_bf16_body(), the row widened from bytes. */
static inline __attribute__((always_inline)) void dots_i8_body(const int8_t *rows, size_t n, size_t stride,
								const float *q, unsigned G, unsigned d, float *out)
{
	for (size_t r = 0; r < n; r++) {
		const int8_t *row = rows + r * stride;
		float *o = out + r * G;
		unsigned g = 0;
		if (d % 8 == 0)
			for (; g + 4 <= G; g += 4) {
				const float *q0 = q + (size_t)g * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
				v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
				for (unsigned j = 0; j < d; j += 8) {
					const v8f x = i8x8(row + j);
					a0 += x * load8(q0 + j);
					a1 += x * load8(q1 + j);
					a2 += x * load8(q2 + j);
					a3 += x * load8(q3 + j);
				}
				o[g] = hsum8(&a0);
				o[g + 1] = hsum8(&a1);
				o[g + 2] = hsum8(&a2);
				o[g + 3] = hsum8(&a3);
			}
		for (; g < G; g++) {
			float acc = 0;
			for (unsigned j = 0; j < d; j++)
				acc += (float)row[j] * q[(size_t)g * d + j];
			o[g] = acc;
		}
		for (g = 0; g < G; g++)
			if (isnan(o[g]))
				o[g] = -INFINITY;
	}
}

/*
 * ix_group_softmax() for IX_MASS without log weights when G divides 8: the
 * same three passes (max, exps, each unit's summed probability), eight
 * values a step, lane l holding head l % G.
 */
static inline __attribute__((always_inline)) void group_mass_body(float *s, const uint32_t *ids, size_t n,
								   unsigned G, float *lse, struct ix_item *out)
{
	const size_t total = n * G, vec = total / 8 * 8;
	float m[8], z[8], inv[8];
	v8f vmax, cc, zacc = { 0 }, vinv;
	for (unsigned l = 0; l < 8; l++)
		vmax[l] = -INFINITY;
	for (size_t k = 0; k < vec; k += 8) {
		const v8f x = load8(s + k);
		const v8i gt = x > vmax;
		vmax = (v8f)(((v8i)x & gt) | ((v8i)vmax & ~gt));
	}
	for (unsigned g = 0; g < G; g++) {
		m[g] = -INFINITY;
		for (unsigned l = g; l < 8; l += G)
			m[g] = vmax[l] > m[g] ? vmax[l] : m[g];
	}
	for (size_t k = vec; k < total; k++)
		m[k % G] = s[k] > m[k % G] ? s[k] : m[k % G];
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(m[g]))
			m[g] = 0;
	for (unsigned l = 0; l < 8; l++)
		cc[l] = -m[l % G];
	for (size_t k = 0; k < vec; k += 8) {
		v8f e;
		EXP8(e, load8(s + k) + cc);
		memcpy(s + k, &e, sizeof(e));
		zacc += e;
	}
	for (unsigned g = 0; g < G; g++) {
		z[g] = 0;
		for (unsigned l = g; l < 8; l += G)
			z[g] += zacc[l];
	}
	for (size_t k = vec; k < total; k++) {
		s[k] = expf(s[k] - m[k % G]);
		z[k % G] += s[k];
	}
	for (unsigned g = 0; g < G; g++) {
		inv[g] = z[g] > 0 ? 1.0f / z[g] : 0;
		if (lse)
			lse[g] = z[g] > 0 ? m[g] + logf(z[g]) : -INFINITY;
	}
	for (unsigned l = 0; l < 8; l++)
		vinv[l] = inv[l % G];
	const unsigned per = 8 / G;
	size_t j = 0;
	for (size_t k = 0; k < vec; k += 8) {
		const v8f p = load8(s + k) * vinv;
		for (unsigned u = 0; u < per; u++, j++) {
			float acc = 0;
			for (unsigned g = 0; g < G; g++)
				acc += p[u * G + g];
			out[j].score = isnan(acc) ? 0 : acc;
			out[j].id = ids ? ids[j] : (uint32_t)j;
		}
	}
	for (; j < n; j++) {
		float acc = 0;
		for (unsigned g = 0; g < G; g++)
			acc += s[j * G + g] * inv[g];
		out[j].score = isnan(acc) ? 0 : acc;
		out[j].id = ids ? ids[j] : (uint32_t)j;
	}
}

/*
 * W[g*dp + i] = round(w[g*d + i] / scale[g]) with scale[g] = max_i |w_gi| / 127,
 * padding 0. The max is taken on the bit patterns of |w| (which order as
 * integers), so a NaN or an infinity shows as a pattern at or above
 * infinity's: its head gets zero weights and a NaN scale, which the caller
 * turns into an unpicked token.
 */
/* The scale of a head from the largest bit pattern of its |w| (see ix_quantize_i8()). */
static inline float quantize_scale(int32_t mbits, float *inv)
{
	float mx;
	memcpy(&mx, &mbits, 4);
	const int usable = mbits > 0 && mbits < 0x7f800000;
	*inv = usable ? 127.0f / mx : 0;
	return usable ? mx / 127.0f : mbits ? NAN : 0;
}

static inline int8_t quantize_round(float y)
{
	return (int8_t)(y >= 0 ? (int)(y + 0.5f) : -(int)(0.5f - y));
}

/*
 * The max is taken on the bit patterns of |w|, which order as integers, so
 * a NaN or an infinity shows as a pattern at or above infinity's.
 */
static void quantize_i8_scalar(const float *w, unsigned G, unsigned d, int8_t *W, float *scale)
{
	const unsigned dp = ix_code_dims(d);
	for (unsigned g = 0; g < G; g++) {
		const float *wg = w + (size_t)g * d;
		int8_t *Wg = W + (size_t)g * dp;
		int32_t mbits = 0;
		for (unsigned i = 0; i < d; i++) {
			int32_t a;
			memcpy(&a, wg + i, 4);
			a &= 0x7fffffff;
			mbits = a > mbits ? a : mbits;
		}
		float inv;
		scale[g] = quantize_scale(mbits, &inv);
		if (!(inv > 0)) { /* nothing to scale, or NaN: no weights */
			memset(Wg, 0, dp);
			continue;
		}
		for (unsigned i = 0; i < d; i++)
			Wg[i] = quantize_round(wg[i] * inv);
		for (unsigned i = d; i < dp; i++)
			Wg[i] = 0;
	}
}

/*
 * Blocked 4-bit codes (ix_code_put()) against int8 weights: per head the
 * exact integer dot, then sum_g exp(scale_g * dot + c_g). This copy and the
 * AVX2 one compute the same integers.
 */
static void nibble_mass_scalar(const uint8_t *blocks, size_t nblocks, unsigned d, const int8_t *W,
			       const float *scale, const float *c, unsigned G, float *out)
{
	const unsigned dp = ix_code_dims(d);
	const size_t bb = ix_code_block_bytes(d);
	for (size_t b = 0; b < nblocks; b++)
		for (unsigned t = 0; t < IX_CODE_BLOCK; t++) {
			float mass = 0;
			for (unsigned g = 0; g < G; g++) {
				int32_t dot = 0;
				for (unsigned i = 0; i < dp; i++)
					dot += W[(size_t)g * dp + i] * (int32_t)ix_code_get(blocks + b * bb, t, i);
				mass += expf(scale[g] * (float)dot + c[g]);
			}
			out[b * IX_CODE_BLOCK + t] = mass;
		}
}

/* ix_code_weights_q8(), one channel at a time. */
static void code_weights_q8_scalar(const int8_t *row, unsigned d, const int16_t *q16, const float *qs, unsigned G,
				   int8_t *W, float *base)
{
	const unsigned dp = ix_code_dims(d);
	for (unsigned g = 0; g < G; g++) {
		const int16_t *qg = q16 + (size_t)g * dp;
		int8_t *Wg = W + (size_t)g * dp;
		float b = 0;
		for (unsigned i = 0; i < d; i++) {
			/* as vpmulhrsw: (a * b + 2^14) >> 15 with a = r << 7 */
			const int32_t x = (int32_t)qg[i] * ((row[i] - row[d + i]) << 7);
			Wg[i] = (int8_t)((x + (1 << 14)) >> 15);
			b += qs[(size_t)g * d + i] * (float)row[d + i];
		}
		for (unsigned i = d; i < dp; i++)
			Wg[i] = 0;
		base[g] = b;
	}
}

/*
 * One copy of each loop compiled for AVX2 with FMA and one for the x86-64
 * baseline, picked once from what the CPU reports (by feature, so AMD and
 * Intel alike get the wide one).
 */
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, unsigned d)
{
	return dot_body(a, b, d);
}

static float dot_base(const float *a, const float *b, unsigned d)
{
	return dot_body(a, b, d);
}

__attribute__((target("avx2,fma"))) static void dots_avx2(const float *rows, size_t n, size_t stride,
							  const float *q, unsigned G, unsigned d, float *out)
{
	dots_body(rows, n, stride, q, G, d, out);
}

static void dots_base(const float *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
		      float *out)
{
	dots_body(rows, n, stride, q, G, d, out);
}

__attribute__((target("avx2,fma"))) static void dots_bf16_avx2(const uint16_t *row, const float *q, unsigned G,
							       unsigned d, float *out)
{
	dots_bf16_body(row, q, G, d, out);
}

static void dots_bf16_base(const uint16_t *row, const float *q, unsigned G, unsigned d, float *out)
{
	dots_bf16_body(row, q, G, d, out);
}

__attribute__((target("avx2,fma"))) static void dots_bf16_rows_avx2(const uint16_t *rows, size_t n, size_t stride,
								    const float *q, unsigned G, unsigned d, float *out)
{
	dots_bf16_rows_body(rows, n, stride, q, G, d, out);
}

static void dots_bf16_rows_base(const uint16_t *rows, size_t n, size_t stride, const float *q, unsigned G,
				unsigned d, float *out)
{
	dots_bf16_rows_body(rows, n, stride, q, G, d, out);
}

__attribute__((target("avx2,fma"))) static void code_weights_avx2(const struct ix_mat *m, size_t row, unsigned d,
								  const float *q, unsigned G, float *w, float *base)
{
	code_weights_body(m, row, d, q, G, w, base);
}

static void code_weights_base(const struct ix_mat *m, size_t row, unsigned d, const float *q, unsigned G, float *w,
			      float *base)
{
	code_weights_body(m, row, d, q, G, w, base);
}

__attribute__((target("avx2,fma"))) static void exp_rows_avx2(float *v, size_t n, unsigned G, const float *c)
{
	exp_rows_body(v, n, G, c);
}

static void exp_rows_base(float *v, size_t n, unsigned G, const float *c)
{
	exp_rows_body(v, n, G, c);
}

/* 32 weights a step: the rounded int32s narrow with two saturating packs, and a permute undoes their lane order. */
__attribute__((target("avx2,fma"))) static void quantize_i8_avx2(const float *w, unsigned G, unsigned d, int8_t *W,
								 float *scale)
{
	const unsigned dp = ix_code_dims(d);
	const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)0x80000000)), half = _mm256_set1_ps(0.5f);
	const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
	for (unsigned g = 0; g < G; g++) {
		const float *wg = w + (size_t)g * d;
		int8_t *Wg = W + (size_t)g * dp;
		__m256i vmax = _mm256_setzero_si256();
		unsigned i = 0;
		for (; i + 8 <= d; i += 8)
			vmax = _mm256_max_epi32(vmax, _mm256_castps_si256(_mm256_and_ps(_mm256_loadu_ps(wg + i), absmask)));
		int32_t lanes[8], mbits = 0;
		_mm256_storeu_si256((__m256i *)lanes, vmax);
		for (unsigned j = 0; j < 8; j++)
			mbits = lanes[j] > mbits ? lanes[j] : mbits;
		for (; i < d; i++) {
			int32_t a;
			memcpy(&a, wg + i, 4);
			a &= 0x7fffffff;
			mbits = a > mbits ? a : mbits;
		}
		float inv;
		scale[g] = quantize_scale(mbits, &inv);
		if (!(inv > 0)) { /* nothing to scale, or NaN: no weights */
			memset(Wg, 0, dp);
			continue;
		}
		const __m256 vinv = _mm256_set1_ps(inv);
		i = 0;
		for (; i + 32 <= d; i += 32) {
			__m256i c[4];
			for (unsigned k = 0; k < 4; k++) {
				const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(wg + i + 8 * k), vinv);
				/* round half away from zero: add 0.5 with y's sign, then truncate */
				c[k] = _mm256_cvttps_epi32(_mm256_add_ps(y, _mm256_or_ps(_mm256_and_ps(y, sign), half)));
			}
			const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
			_mm256_storeu_si256((__m256i *)(Wg + i), _mm256_permutevar8x32_epi32(b, order));
		}
		for (; i < d; i++)
			Wg[i] = quantize_round(wg[i] * inv);
		for (; i < dp; i++)
			Wg[i] = 0;
	}
}

/*
 * 32 channels a step: the ranges widen to 16 bits, shifted up 7 (<= 32512),
 * vpmulhrsw multiplies them by the 16-bit query weights and rounds to the
 * weights' units, two saturating packs that cannot saturate take them to
 * bytes and a permute undoes their lane order; base takes the mins as
 * floats against qs.
 */
__attribute__((target("avx2,fma"))) static void code_weights_q8_avx2(const int8_t *row, unsigned d,
								     const int16_t *q16, const float *qs, unsigned G,
								     int8_t *W, float *base)
{
	if (d % 32) {
		code_weights_q8_scalar(row, d, q16, qs, G, W, base);
		return;
	}
	const unsigned dp = ix_code_dims(d);
	for (unsigned g = 0; g < G; g++) {
		const int16_t *qg = q16 + (size_t)g * dp;
		int8_t *Wg = W + (size_t)g * dp;
		__m256 acc = _mm256_setzero_ps();
		for (unsigned i = 0; i < d; i += 32) {
			__m256i w[2];
			for (unsigned h = 0; h < 2; h++) {
				const unsigned o = i + 16 * h;
				const __m256i mx = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + o)));
				const __m256i mn = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + d + o)));
				const __m256i q = _mm256_loadu_si256((const __m256i *)(qg + o));
				w[h] = _mm256_mulhrs_epi16(_mm256_slli_epi16(_mm256_sub_epi16(mx, mn), 7), q);
			}
			_mm256_storeu_si256((__m256i *)(Wg + i),
					    _mm256_permute4x64_epi64(_mm256_packs_epi16(w[0], w[1]), 0xd8));
			for (unsigned k = 0; k < 32; k += 8) {
				int64_t m8;
				memcpy(&m8, row + d + i + k, 8);
				const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(m8)));
				acc = _mm256_fmadd_ps(_mm256_loadu_ps(qs + (size_t)g * d + i + k), mn, acc);
			}
		}
		for (unsigned i = d; i < dp; i++)
			Wg[i] = 0;
		const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
		const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
		base[g] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
	}
}

static void quantize_i8_base(const float *w, unsigned G, unsigned d, int8_t *W, float *scale)
{
	quantize_i8_scalar(w, G, d, W, scale);
}

/*
 * A block's plane is 32 bytes, 8 tokens x 4 channels, two planes a byte:
 * pmaddubsw multiplies the unsigned codes by the signed weights and adds
 * pairs (|sum| <= 2 * 15 * 127), a plane pair adds four products and four
 * plane pairs stay under 2^15 in 16 bits before pmaddwd widens them.
 */
/*
 * The exps of K heads' code scores of one block, added to @p mass: each
 * plane's nibbles are split once for all K (K is a constant where it is
 * inlined, so the accumulators stay in registers).
 */
__attribute__((target("avx2,fma"), always_inline)) static inline void
nibble_heads_avx2(const uint8_t *blk, unsigned planes, unsigned dp, const int8_t *W, const float *scale, const float *c,
		  unsigned K, v8f *mass)
{
	const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
	__m256i acc[4];
	for (unsigned k = 0; k < K; k++)
		acc[k] = _mm256_setzero_si256();
	for (unsigned m0 = 0; m0 < planes; m0 += 4) {
		const unsigned m1 = m0 + 4 < planes ? m0 + 4 : planes;
		__m256i a16[4];
		for (unsigned k = 0; k < K; k++)
			a16[k] = _mm256_setzero_si256();
		for (unsigned m = m0; m < m1; m++) {
			const __m256i x = _mm256_loadu_si256((const __m256i *)(blk + (size_t)m * 32));
			const __m256i lo = _mm256_and_si256(x, nib), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
			for (unsigned k = 0; k < K; k++) {
				int32_t wl, wh;
				memcpy(&wl, W + (size_t)k * dp + 8 * m, 4);
				memcpy(&wh, W + (size_t)k * dp + 8 * m + 4, 4);
				a16[k] = _mm256_add_epi16(a16[k], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(wl)));
				a16[k] = _mm256_add_epi16(a16[k], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(wh)));
			}
		}
		for (unsigned k = 0; k < K; k++)
			acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(a16[k], ones));
	}
	for (unsigned k = 0; k < K; k++) {
		const v8f s = (v8f)_mm256_cvtepi32_ps(acc[k]) * scale[k] + c[k];
		v8f e;
		EXP8(e, s);
		*mass += e;
	}
}

__attribute__((target("avx2,fma"))) static void nibble_mass_avx2(const uint8_t *blocks, size_t nblocks, unsigned d,
								 const int8_t *W, const float *scale, const float *c,
								 unsigned G, float *out)
{
	const unsigned dp = ix_code_dims(d), planes = dp / 8;
	const size_t bb = ix_code_block_bytes(d);
	for (size_t b = 0; b < nblocks; b++) {
		const uint8_t *blk = blocks + b * bb;
		v8f mass = { 0 };
		unsigned g = 0;
		for (; g + 4 <= G; g += 4)
			nibble_heads_avx2(blk, planes, dp, W + (size_t)g * dp, scale + g, c + g, 4, &mass);
		for (; g < G; g++)
			nibble_heads_avx2(blk, planes, dp, W + (size_t)g * dp, scale + g, c + g, 1, &mass);
		memcpy(out + b * IX_CODE_BLOCK, &mass, sizeof(mass));
	}
}

static void nibble_mass_base(const uint8_t *blocks, size_t nblocks, unsigned d, const int8_t *W, const float *scale,
			     const float *c, unsigned G, float *out)
{
	nibble_mass_scalar(blocks, nblocks, d, W, scale, c, G, out);
}

__attribute__((target("avx2,fma"))) static void group_mass_avx2(float *s, const uint32_t *ids, size_t n,
								unsigned G, float *lse, struct ix_item *out)
{
	group_mass_body(s, ids, n, G, lse, out);
}

static void group_mass_base(float *s, const uint32_t *ids, size_t n, unsigned G, float *lse, struct ix_item *out)
{
	group_mass_body(s, ids, n, G, lse, out);
}

/* The bodies' i8x8() comes out a byte at a time; here one pmovsxbd widens eight. */
__attribute__((target("avx2,fma"))) static inline v8f i8x8_avx2(const int8_t *p)
{
	return (v8f)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

__attribute__((target("avx2,fma"))) static void dots_i8_avx2(const int8_t *rows, size_t n, size_t stride,
							     const float *q, unsigned G, unsigned d, float *out)
{
	if (d % 8 || G % 4) {
		dots_i8_body(rows, n, stride, q, G, d, out);
		return;
	}
	for (size_t r = 0; r < n; r++) {
		const int8_t *row = rows + r * stride;
		float *o = out + r * G;
		for (unsigned g = 0; g < G; g += 4) {
			const float *q0 = q + (size_t)g * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
			v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
			for (unsigned j = 0; j < d; j += 8) {
				const v8f x = i8x8_avx2(row + j);
				a0 += x * load8(q0 + j);
				a1 += x * load8(q1 + j);
				a2 += x * load8(q2 + j);
				a3 += x * load8(q3 + j);
			}
			o[g] = hsum8(&a0);
			o[g + 1] = hsum8(&a1);
			o[g + 2] = hsum8(&a2);
			o[g + 3] = hsum8(&a3);
		}
		for (unsigned g = 0; g < G; g++)
			if (isnan(o[g]))
				o[g] = -INFINITY;
	}
}

static void dots_i8_base(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
			 float *out)
{
	dots_i8_body(rows, n, stride, q, G, d, out);
}

/*
 * ix_bounds_i8q()'s int8 path, for G % 4 == 0 and d % 32 == 0: @p Wp [G][d]
 * the queries' q+ in int8 steps (>= 0), @p Wn [G][d] their -q- (>= 0).
 * vpmaddubsw multiplies those magnitudes (unsigned, <= 127) by the signed
 * row bytes, two products a 16-bit lane; a channel has q+ or q-, not both,
 * so max's lane minus min's still holds at most two products
 * (|x| <= 2 * 127 * 128: no overflow), and vpmaddwd widens pairs of lanes
 * to 32 bits. A page's four queries' accumulators fold into its four
 * bounds; few enough registers live at once that nothing spills.
 */
__attribute__((target("avx2"))) static void bounds_i8q_avx2(const int8_t *rows, size_t n, size_t stride,
							     const uint8_t *Wp, const uint8_t *Wn, const float *scale,
							     unsigned G, unsigned d, float *out)
{
	const __m256i ones = _mm256_set1_epi16(1);
	for (unsigned g0 = 0; g0 < G; g0 += 4) {
		const __m128 sc = _mm_loadu_ps(scale + g0);
		const uint8_t *wp = Wp + (size_t)g0 * d, *wn = Wn + (size_t)g0 * d;
		for (size_t r = 0; r < n; r++) {
			const int8_t *row = rows + r * stride;
			__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
			for (unsigned c = 0; c < d; c += 32) {
				const __m256i mx = _mm256_loadu_si256((const __m256i *)(row + c));
				const __m256i mn = _mm256_loadu_si256((const __m256i *)(row + d + c));
#define BOUNDS_TERM(acc, g)                                                                                       \
	acc = _mm256_add_epi32(                                                                                   \
		acc, _mm256_madd_epi16(                                                                           \
			     _mm256_sub_epi16(                                                                    \
				     _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(wp + (g) * d + c)), mx), \
				     _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(wn + (g) * d + c)), mn)), \
			     ones))
				BOUNDS_TERM(a0, 0);
				BOUNDS_TERM(a1, 1);
				BOUNDS_TERM(a2, 2);
				BOUNDS_TERM(a3, 3);
#undef BOUNDS_TERM
			}
			/* [a0 a1 a2 a3] sums of each 128-bit lane, then the lanes added */
			const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
			const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
			_mm_storeu_ps(out + r * G + g0, _mm_mul_ps(_mm_cvtepi32_ps(t), sc));
		}
	}
	/* a query with a NaN or an infinity has a NaN scale (ix_quantize_i8()): no page is its pick */
	for (unsigned g = 0; g < G; g++)
		if (isnan(scale[g]))
			for (size_t r = 0; r < n; r++)
				out[r * G + g] = -INFINITY;
}

static int have_avx2_fma(void)
{
	static atomic_int known; /* 0 unknown, 1 no, 2 yes */
	int k = atomic_load_explicit(&known, memory_order_relaxed);
	if (!k) {
		__builtin_cpu_init();
		k = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 2 : 1;
		atomic_store_explicit(&known, k, memory_order_relaxed);
	}
	return k == 2;
}

#else
static float dot_avx2(const float *a, const float *b, unsigned d)
{
	return dot_body(a, b, d);
}

#define dot_base dot_avx2

static void dots_avx2(const float *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
		      float *out)
{
	dots_body(rows, n, stride, q, G, d, out);
}

#define dots_base dots_avx2

static void dots_bf16_avx2(const uint16_t *row, const float *q, unsigned G, unsigned d, float *out)
{
	dots_bf16_body(row, q, G, d, out);
}

#define dots_bf16_base dots_bf16_avx2

static void dots_bf16_rows_avx2(const uint16_t *rows, size_t n, size_t stride, const float *q, unsigned G,
				unsigned d, float *out)
{
	dots_bf16_rows_body(rows, n, stride, q, G, d, out);
}

#define dots_bf16_rows_base dots_bf16_rows_avx2

static void code_weights_avx2(const struct ix_mat *m, size_t row, unsigned d, const float *q, unsigned G, float *w,
			      float *base)
{
	code_weights_body(m, row, d, q, G, w, base);
}

#define code_weights_base code_weights_avx2

static void exp_rows_avx2(float *v, size_t n, unsigned G, const float *c)
{
	exp_rows_body(v, n, G, c);
}

#define exp_rows_base exp_rows_avx2

#define quantize_i8_avx2 quantize_i8_scalar
#define code_weights_q8_avx2 code_weights_q8_scalar
#define quantize_i8_base quantize_i8_scalar
#define nibble_mass_avx2 nibble_mass_scalar
#define nibble_mass_base nibble_mass_scalar

static void group_mass_avx2(float *s, const uint32_t *ids, size_t n, unsigned G, float *lse, struct ix_item *out)
{
	group_mass_body(s, ids, n, G, lse, out);
}

#define group_mass_base group_mass_avx2

static void dots_i8_avx2(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
			 float *out)
{
	dots_i8_body(rows, n, stride, q, G, d, out);
}

#define dots_i8_base dots_i8_avx2


static int have_avx2_fma(void)
{
	return 0;
}

static void bounds_i8q_avx2(const int8_t *rows, size_t n, size_t stride, const uint8_t *Wp, const uint8_t *Wn,
			    const float *scale, unsigned G, unsigned d, float *out)
{
	(void)rows, (void)n, (void)stride, (void)Wp, (void)Wn, (void)scale, (void)G, (void)d, (void)out;
}
#endif

void ix_centre_normalise(const float *x, size_t n, unsigned d, const float *mu, float *out)
{
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (unsigned j = 0; j < d; j++) {
			float c = x[i * d + j] - mu[j];
			out[i * d + j] = c;
			s += (double)c * c;
		}
		float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0;
		for (unsigned j = 0; j < d; j++)
			out[i * d + j] *= inv;
	}
}

void ix_row_f32(const uint8_t *row, unsigned dtype, unsigned d, float *out)
{
	if (dtype == IX_ROW_F32) {
		memcpy(out, row, (size_t)d * sizeof(float));
		return;
	}
	for (unsigned j = 0; j < d; j++) {
		uint16_t h;
		memcpy(&h, row + 2 * (size_t)j, 2);
		if (dtype == IX_ROW_BF16) {
			uint32_t u = (uint32_t)h << 16;
			memcpy(&out[j], &u, 4);
			continue;
		}
		/* IEEE half: scale the bits into place, subnormals by arithmetic */
		uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
		if (e == 0x1f) {
			u = sign | 0x7f800000u | (m << 13);
		} else if (e) {
			u = sign | ((e + 112) << 23) | (m << 13);
		} else {
			float f = ldexpf((float)m, -24);
			memcpy(&u, &f, 4);
			u |= sign;
		}
		memcpy(&out[j], &u, 4);
	}
}

float ix_dot(const float *a, const float *b, unsigned d)
{
	return have_avx2_fma() ? dot_avx2(a, b, d) : dot_base(a, b, d);
}

void ix_dots_bf16(const uint16_t *row, const float *q, unsigned G, unsigned d, float *out)
{
	if (have_avx2_fma())
		dots_bf16_avx2(row, q, G, d, out);
	else
		dots_bf16_base(row, q, G, d, out);
}

void ix_mat_dots(const struct ix_mat *m, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
		 float *out)
{
	if (m->f32)
		ix_dots(m->f32, n, stride, q, G, d, out);
	else if (have_avx2_fma())
		dots_bf16_rows_avx2(m->bf16, n, stride, q, G, d, out);
	else
		dots_bf16_rows_base(m->bf16, n, stride, q, G, d, out);
}

void ix_exp_rows(float *v, size_t n, unsigned G, const float *c)
{
	if (have_avx2_fma())
		exp_rows_avx2(v, n, G, c);
	else
		exp_rows_base(v, n, G, c);
}

void ix_code_weights(const struct ix_mat *m, size_t row, unsigned d, const float *q, unsigned G, float *w,
		     float *base)
{
	if (have_avx2_fma())
		code_weights_avx2(m, row, d, q, G, w, base);
	else
		code_weights_base(m, row, d, q, G, w, base);
}

void ix_dots_i8(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out)
{
	if (have_avx2_fma())
		dots_i8_avx2(rows, n, stride, q, G, d, out);
	else
		dots_i8_base(rows, n, stride, q, G, d, out);
}

void ix_bounds_i8q(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out)
{
	enum { MAX_G = 64, MAX_D = 256 };
	if (!have_avx2_fma() || G % 4 || G > MAX_G || d % 32 || d > MAX_D) {
		ix_dots_i8(rows, n, stride, q, G, 2 * d, out);
		return;
	}
	int8_t W[MAX_G * 2 * MAX_D];
	uint8_t Wp[MAX_G * MAX_D], Wn[MAX_G * MAX_D];
	float scale[MAX_G];
	/* one scale over both halves: 2d is a multiple of 8, so no padding */
	ix_quantize_i8(q, G, 2 * d, W, scale);
	int split = 1;
	for (unsigned g = 0; g < G; g++)
		for (unsigned i = 0; i < d; i++) {
			const int8_t p = W[(size_t)g * 2 * d + i], m = W[(size_t)g * 2 * d + d + i];
			split &= p >= 0 && m <= 0 && (p == 0 || m == 0);
			Wp[(size_t)g * d + i] = (uint8_t)p;
			Wn[(size_t)g * d + i] = (uint8_t)-m;
		}
	if (!split) { /* not [q+ | q-], one of them 0 a channel: the 16-bit lanes could overflow */
		ix_dots_i8(rows, n, stride, q, G, 2 * d, out);
		return;
	}
	bounds_i8q_avx2(rows, n, stride, Wp, Wn, scale, G, d, out);
}

void ix_code_weights_q8(const int8_t *row, unsigned d, const int16_t *q16, const float *qs, unsigned G, int8_t *W,
			float *base)
{
	if (have_avx2_fma())
		code_weights_q8_avx2(row, d, q16, qs, G, W, base);
	else
		code_weights_q8_scalar(row, d, q16, qs, G, W, base);
}

void ix_quantize_i8(const float *w, unsigned G, unsigned d, int8_t *W, float *scale)
{
	if (have_avx2_fma())
		quantize_i8_avx2(w, G, d, W, scale);
	else
		quantize_i8_base(w, G, d, W, scale);
}

void ix_nibble_mass(const uint8_t *blocks, size_t nblocks, unsigned d, const int8_t *W, const float *scale,
		    const float *c, unsigned G, float *out)
{
	if (have_avx2_fma())
		nibble_mass_avx2(blocks, nblocks, d, W, scale, c, G, out);
	else
		nibble_mass_base(blocks, nblocks, d, W, scale, c, G, out);
}

void ix_dots(const float *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out)
{
	if (have_avx2_fma())
		dots_avx2(rows, n, stride, q, G, d, out);
	else
		dots_base(rows, n, stride, q, G, d, out);
}

/* ---- selection ---------------------------------------------------------- */

static inline int item_before(const struct ix_item *a, const struct ix_item *b)
{
	return a->score > b->score || (a->score == b->score && a->id < b->id);
}

static int item_cmp(const void *pa, const void *pb)
{
	const struct ix_item *a = pa, *b = pb;
	return item_before(a, b) ? -1 : item_before(b, a) ? 1 : 0;
}

static inline void item_swap(struct ix_item *a, struct ix_item *b)
{
	struct ix_item t = *a;
	*a = *b;
	*b = t;
}

/* Median of three to a[hi-1], then partition [lo, hi-1) around it; returns the pivot's place. */
static size_t partition(struct ix_item *a, size_t lo, size_t hi)
{
	size_t mid = lo + (hi - lo) / 2;
	if (item_before(&a[mid], &a[lo]))
		item_swap(&a[mid], &a[lo]);
	if (item_before(&a[hi - 1], &a[lo]))
		item_swap(&a[hi - 1], &a[lo]);
	if (item_before(&a[hi - 1], &a[mid]))
		item_swap(&a[hi - 1], &a[mid]);
	item_swap(&a[mid], &a[hi - 1]);
	const struct ix_item piv = a[hi - 1];
	size_t s = lo;
	for (size_t i = lo; i < hi - 1; i++)
		if (item_before(&a[i], &piv))
			item_swap(&a[i], &a[s++]);
	item_swap(&a[s], &a[hi - 1]);
	return s;
}

static void insertion_sort(struct ix_item *a, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		struct ix_item x = a[i];
		size_t j = i;
		for (; j && item_before(&x, &a[j - 1]); j--)
			a[j] = a[j - 1];
		a[j] = x;
	}
}

static unsigned depth_budget(size_t n)
{
	unsigned b = 2;
	for (size_t t = n; t; t >>= 1)
		b += 2;
	return b;
}

/* Quicksort on the smaller side, looping on the larger; after too many
 * rounds it hands the rest to qsort, so adversarial scores stay O(n log n). */
static void sort_items(struct ix_item *a, size_t n)
{
	unsigned budget = depth_budget(n);
	while (n > 16) {
		if (!budget--) {
			qsort(a, n, sizeof(*a), item_cmp);
			return;
		}
		size_t s = partition(a, 0, n);
		if (s < n - s - 1) {
			sort_items(a, s);
			a += s + 1;
			n -= s + 1;
		} else {
			sort_items(a + s + 1, n - s - 1);
			n = s;
		}
	}
	insertion_sort(a, n);
}

/* The r-th largest (from 0) of v[n], v reordered: quickselect on plain floats. */
static float nth_largest(float *v, size_t n, size_t r)
{
	size_t lo = 0, hi = n;
	while (hi - lo > 1) {
		const float piv = v[lo + (hi - lo) / 2];
		size_t i = lo, j = hi - 1;
		while (i <= j) {
			while (v[i] > piv)
				i++;
			while (v[j] < piv)
				j--;
			if (i <= j) {
				const float t = v[i];
				v[i++] = v[j];
				v[j] = t;
				if (!j--)
					break;
			}
		}
		if (r <= j)
			hi = j + 1;
		else if (r >= i)
			lo = i;
		else
			return v[r];
	}
	return v[lo];
}

#define PREFILTER_MIN 8192
#define PREFILTER_SAMPLE 512

/*
 * For a few best of many: a threshold from a sample, a little below where
 * the k-th should fall, and one pass moving the items at or above it to the
 * front. Most items fail one well-predicted compare, where quickselect's
 * first passes mispredict on every other. Returns how many moved, or 0 when
 * the sample gives no threshold (a NaN) or too few passed it; the items
 * stay a permutation either way.
 */
static size_t prefilter(struct ix_item *a, size_t n, size_t k)
{
	float sample[PREFILTER_SAMPLE];
	const size_t step = n / PREFILTER_SAMPLE;
	for (size_t i = 0; i < PREFILTER_SAMPLE; i++) {
		sample[i] = a[i * step].score;
		if (isnan(sample[i]))
			return 0;
	}
	/* the expected place of the k-th in the sample, one and a half times over, and a margin */
	size_t r = (size_t)((double)(k + 1) / (double)n * PREFILTER_SAMPLE * 1.5) + 8;
	if (r >= PREFILTER_SAMPLE)
		return 0;
	const float tau = nth_largest(sample, PREFILTER_SAMPLE, r);
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		if (a[i].score >= tau)
			item_swap(&a[i], &a[c++]);
	return c > k ? c : 0;
}

/* Quickselect: a[k] in its sorted place, better items before it. */
static void select_nth(struct ix_item *a, size_t n, size_t k)
{
	if (n >= PREFILTER_MIN && k < n / 4) {
		const size_t c = prefilter(a, n, k);
		if (c)
			n = c; /* the k + 1 best are among them */
	}
	size_t lo = 0, hi = n; /* k in [lo, hi) */
	unsigned budget = depth_budget(n);
	while (hi - lo > 16) {
		if (!budget--)
			break;
		size_t s = partition(a, lo, hi);
		if (s == k)
			return;
		if (k < s)
			hi = s;
		else
			lo = s + 1;
	}
	sort_items(a + lo, hi - lo);
}

void ix_select(struct ix_item *a, size_t n, size_t m)
{
	if (m && m < n)
		select_nth(a, n, m - 1);
}

void ix_top(struct ix_item *a, size_t n, size_t m)
{
	if (m > n)
		m = n;
	if (!m)
		return;
	if (m < n)
		select_nth(a, n, m - 1);
	sort_items(a, m);
}

void ix_group_softmax(float *s, const float *lw, const uint32_t *ids, size_t n, unsigned G,
		      float *lse, enum ix_score how, struct ix_item *out)
{
	float m[IX_MAX_GROUP], z[IX_MAX_GROUP], inv[IX_MAX_GROUP];
	IX_ASSERT(G >= 1 && G <= IX_MAX_GROUP);
	if (!lw && how == IX_MASS && 8 % G == 0) {
		if (have_avx2_fma())
			group_mass_avx2(s, ids, n, G, lse, out);
		else
			group_mass_base(s, ids, n, G, lse, out);
		return;
	}
	for (unsigned g = 0; g < G; g++) {
		m[g] = -INFINITY;
		z[g] = 0;
	}
	for (size_t j = 0; j < n; j++)
		for (unsigned g = 0; g < G; g++) {
			float x = (lw ? lw[j] : 0) + s[j * G + g];
			m[g] = x > m[g] ? x : m[g];
		}
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(m[g]))
			m[g] = 0;
	/* s becomes w_j * exp(s - m): one exponential per unit and head */
	for (size_t j = 0; j < n; j++)
		for (unsigned g = 0; g < G; g++) {
			float e = expf((lw ? lw[j] : 0) + s[j * G + g] - m[g]);
			s[j * G + g] = e;
			z[g] += e;
		}
	for (unsigned g = 0; g < G; g++) {
		inv[g] = z[g] > 0 ? 1.0f / z[g] : 0;
		if (lse)
			lse[g] = z[g] > 0 ? m[g] + logf(z[g]) : -INFINITY;
	}
	for (size_t j = 0; j < n; j++) {
		float acc = 0;
		for (unsigned g = 0; g < G; g++) {
			float p = s[j * G + g] * inv[g];
			acc = how == IX_DENSITY_MAX ? (p > acc ? p : acc) : acc + p;
		}
		/* per token: divide by the weight w_j = exp(lw[j]) */
		if (how != IX_MASS && lw)
			acc *= expf(-lw[j]);
		out[j].score = isnan(acc) ? 0 : acc;
		out[j].id = ids ? ids[j] : (uint32_t)j;
	}
}

/* ---- token sets ---------------------------------------------------------- */

uint64_t ix_bits_emit(const uint64_t *bits, uint64_t n, uint64_t *out)
{
	uint64_t k = 0;
	size_t words = ix_bits_words(n);
	for (size_t i = 0; i < words; i++) {
		uint64_t w = bits[i];
		while (w) {
			out[k++] = (uint64_t)i * 64 + (uint64_t)__builtin_ctzll(w);
			w &= w - 1;
		}
	}
	return k;
}

int64_t ix_tail_fill(const struct index_keys *keys, const float *q, unsigned G, const float *off, int sumexp,
		     const uint32_t *ids, size_t cnt, size_t take, uint64_t *bits, struct ix_item *tmp)
{
	enum { BATCH = 64 };
	float s[IX_MAX_GROUP];
	float *rows = NULL;
	if (!keys->k) {
		if (!keys->fetch)
			return -EINVAL;
		if (!(rows = malloc((size_t)BATCH * keys->d * sizeof(float))))
			return -ENOMEM;
	}
	for (size_t i = 0; i < cnt; i++) {
		const float *row;
		if (rows) {
			if (i % BATCH == 0) {
				int rc = keys->fetch(keys->fetch_ctx, ids + i, cnt - i < BATCH ? cnt - i : BATCH, rows);
				if (rc) {
					free(rows);
					return rc;
				}
			}
			row = rows + (i % BATCH) * keys->d;
		} else {
			row = keys->k + (size_t)ids[i] * keys->d;
		}
		ix_dots(row, 1, 0, q, G, keys->d, s);
		float acc = sumexp ? 0 : -INFINITY;
		for (unsigned g = 0; g < G; g++) {
			float x = s[g] - off[g];
			if (sumexp)
				acc += expf(x);
			else if (x > acc)
				acc = x;
		}
		tmp[i].score = isnan(acc) ? -INFINITY : acc;
		tmp[i].id = ids[i];
	}
	if (take > cnt)
		take = cnt;
	free(rows);
	ix_top(tmp, cnt, take);
	for (size_t i = 0; i < take; i++)
		ix_bit_set(bits, tmp[i].id);
	return (int64_t)cnt;
}

uint64_t ix_merge_heads(const float *D, const int64_t *L, unsigned G, size_t k, uint64_t n, uint64_t budget,
			float *best, uint64_t *bits, struct ix_item *pool, uint64_t *out)
{
	size_t np = 0;
	memset(bits, 0, ix_bits_words(n) * sizeof(uint64_t));
	for (unsigned g = 0; g < G; g++) {
		const float *dg = D + (size_t)g * k;
		const int64_t *lg = L + (size_t)g * k;
		float top = -INFINITY;
		for (size_t i = 0; i < k; i++)
			if (lg[i] >= 0 && (uint64_t)lg[i] < n && dg[i] > top)
				top = dg[i];
		for (size_t i = 0; i < k; i++) {
			if (lg[i] < 0 || (uint64_t)lg[i] >= n)
				continue;
			uint64_t t = (uint64_t)lg[i];
			float rel = dg[i] - top;
			if (isnan(rel))
				rel = -INFINITY;
			if (!ix_bit_get(bits, t)) {
				ix_bit_set(bits, t);
				best[t] = rel;
				pool[np++] = (struct ix_item){ .id = (uint32_t)t };
			} else if (rel > best[t]) {
				best[t] = rel;
			}
		}
	}
	if (np > budget) {
		for (size_t i = 0; i < np; i++)
			pool[i].score = best[pool[i].id];
		ix_select(pool, np, budget);
		for (size_t i = budget; i < np; i++)
			bits[pool[i].id >> 6] &= ~(1ull << (pool[i].id & 63));
	}
	return ix_bits_emit(bits, n, out);
}

int64_t ix_fill_units(struct ix_walk *w, uint64_t n, unsigned unit, uint64_t budget, size_t min_units, int whole,
		       const struct index_keys *keys, const float *q, unsigned G, const float *off, int sumexp,
		       uint64_t *bits, uint32_t *ids, struct ix_item *tmp)
{
	const struct ix_item *it;
	uint64_t left = budget;
	size_t walked = 0, pooled = 0;
	while (left && (it = ix_walk_next(w))) {
		uint64_t t0 = (uint64_t)it->id * unit, t1 = t0 + unit < n ? t0 + unit : n;
		walked++;
		if (whole && !pooled && t1 - t0 <= left) {
			for (uint64_t t = t0; t < t1; t++)
				ix_bit_set(bits, t);
			left -= t1 - t0;
			continue;
		}
		for (uint64_t t = t0; t < t1; t++)
			ids[pooled++] = (uint32_t)t;
		if (pooled >= left && walked >= min_units)
			break;
	}
	if (!left || !pooled)
		return 0;
	return ix_tail_fill(keys, q, G, off, sumexp, ids, pooled, left, bits, tmp);
}

int ix_search_prologue(uint64_t n, unsigned d, const struct index_keys *keys, int need_keys, const float *q,
		       unsigned G, uint64_t budget, struct index_result *res)
{
	if (!res || !q || !G || G > IX_MAX_GROUP)
		return -EINVAL;
	if (keys && (keys->n != n || keys->d != d || (!keys->k && !keys->fetch && !keys->fetch_ordered)))
		return -EINVAL;
	if (need_keys && !keys)
		return -EINVAL;
	if (need_keys == 1 && !keys->k)
		return -EINVAL;
	res->n_tokens = 0;
	res->scanned = 0;
	res->n_est = 0;
	res->n_runs = 0;
	if (!budget)
		return 1;
	if (!res->tokens)
		return -EINVAL;
	if (budget >= n) {
		for (uint64_t i = 0; i < n; i++)
			res->tokens[i] = i;
		res->n_tokens = n;
		return 1;
	}
	return 0;
}
