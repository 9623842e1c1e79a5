/*
 * What the policies of this folder share: blob reading and writing, a
 * per-thread scratch arena, a parallel loop for builds, dot products,
 * top-m selection, token bitmaps, group softmax and tail fill. Internal to
 * index/: nothing outside this folder includes it.
 *
 * Glossary
 *   blob     a saved index: a 16-byte header (magic "MNIX", policy u16,
 *            format version u16, body length u64), then the policy's body;
 *            all integers and floats little-endian
 *   scratch  memory a search borrows from its thread (grown on demand,
 *            freed when the thread exits), so that concurrent searches of
 *            one index need no lock and a warm thread allocates nothing
 *   item     a (score, id) pair that selection orders by score descending,
 *            then id ascending (deterministic on ties)
 *   bits     a bitmap over the segment's tokens: setting bits and reading
 *            them back in order yields sorted, unique token lists
 */
#ifndef MNEMO_INDEX_IX_H
#define MNEMO_INDEX_IX_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "policy.h"

/**
 * What every policy's index starts with: search() and save() check it, so
 * an index handed to another policy's methods is refused (-EINVAL).
 */
struct index {
	uint32_t policy;          /* enum index_policy */
};

/** A check that must hold or the process is broken: on in every build. */
#define IX_ASSERT(cond)                                                                    \
	do {                                                                               \
		if (!(cond))                                                               \
			ix_assert_fail(#cond, __FILE__, __LINE__);                         \
	} while (0)

__attribute__((noreturn)) void ix_assert_fail(const char *what, const char *file, int line);

#define IX_MAGIC 0x58494e4du      /* "MNIX" read as a little-endian u32 */
#define IX_HEADER_BYTES 16
#define IX_MAX_DIM 65536u         /* largest head_dim a blob may claim */
#define IX_MAX_GROUP 1024u        /* largest G a search accepts */
#define IX_MAX_TOKENS 0xffffffffull /* segments hold at most this many tokens (u32 ids) */

/* ---- blobs ------------------------------------------------------------ */

/** A growing output buffer; the first failure sticks in @c err. */
struct ix_wr {
	uint8_t *buf;
	size_t len, cap;
	int err;
};

/** Start a blob: header with @p policy and format @p version. */
void ix_wr_begin(struct ix_wr *w, unsigned policy, uint16_t version, size_t hint);
void ix_wr_bytes(struct ix_wr *w, const void *p, size_t n);
void ix_wr_u32(struct ix_wr *w, uint32_t v);
void ix_wr_u64(struct ix_wr *w, uint64_t v);
void ix_wr_f32(struct ix_wr *w, float v);
void ix_wr_f32s(struct ix_wr *w, const float *v, size_t n);
void ix_wr_u32s(struct ix_wr *w, const uint32_t *v, size_t n);
/** Whether every float of @p v is a bf16 value (its low 16 bits zero): then bf16 loses nothing. */
bool ix_bf16_exact(const float *v, size_t n);
/**
 * Patch the body length and hand the buffer out (caller frees with free()).
 * @return 0, or the first error (-ENOMEM); on error nothing is handed out.
 */
int ix_wr_end(struct ix_wr *w, uint8_t **buf, size_t *len);

/** A cursor over a hostile blob; the first failure sticks in @c err (-EBADMSG). */
struct ix_rd {
	const uint8_t *p;
	size_t left;
	int err;
};

/**
 * Check the header (magic, @p policy, @p version, body length == what
 * follows exactly) and position @p r on the body.
 * @return 0 or -EBADMSG.
 */
int ix_rd_begin(struct ix_rd *r, const uint8_t *buf, size_t len, unsigned policy, uint16_t version);
uint32_t ix_rd_u32(struct ix_rd *r);
uint64_t ix_rd_u64(struct ix_rd *r);
/** A float that must be finite (else err). */
float ix_rd_f32(struct ix_rd *r);
/** Raw bytes: a pointer into the blob, NULL (and err) when fewer than @p n are left. */
const uint8_t *ix_rd_bytes(struct ix_rd *r, size_t n);
/**
 * Allocate and read @p n finite floats; nothing is allocated unless the blob
 * still holds them. @return 0, -EBADMSG, -ENOMEM.
 */
int ix_rd_f32s(struct ix_rd *r, size_t n, float **out);
/** Allocate and read @p n u32, each < @p below. @return 0, -EBADMSG, -ENOMEM. */
int ix_rd_u32s(struct ix_rd *r, size_t n, uint64_t below, uint32_t **out);
/** 0 when the body was consumed exactly and nothing failed, else -EBADMSG. */
int ix_rd_end(const struct ix_rd *r);

/* ---- threads and scratch ------------------------------------------------ */

/** Worker count for @p threads (0: online cores), at least 1, at most @p items. */
unsigned ix_threads(unsigned threads, size_t items);

/**
 * Run fn(ctx, item, worker) for item in [0, n_items) on @p threads threads
 * (worker < threads). With more than one thread each worker limits OpenMP
 * (FAISS, BLAS) to one thread, so nested FAISS calls do not oversubscribe.
 * @return 0 or the first nonzero return of fn (the others still run).
 */
int ix_parallel(unsigned threads, size_t n_items, int (*fn)(void *ctx, size_t item, unsigned worker), void *ctx);

/**
 * This thread's scratch of at least @p bytes (64-byte aligned), or NULL
 * (-ENOMEM). Valid until the thread's next call; never free it.
 */
void *ix_scratch(size_t bytes);

/**
 * @p bytes for an array a search reads at random (codes, bounds, edges):
 * from 2 MiB up, 2 MiB aligned and advised onto transparent huge pages, so
 * that a page-to-page walk over tens of MiB does not miss the TLB at every
 * step; smaller, 64-byte aligned. Untouched (not zeroed); free() frees it.
 */
void *ix_alloc_big(size_t bytes);

/** Round @p n up to a multiple of 64 (carving scratch into aligned parts). */
static inline size_t ix_align(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

/* ---- arithmetic -------------------------------------------------------- */

float ix_dot(const float *a, const float *b, unsigned d);

/** out = (x - mu) / |x - mu| for @p n rows of @p d (a row equal to mu stays zero). */
void ix_centre_normalise(const float *x, size_t n, unsigned d, const float *mu, float *out);

/** Row element types of struct index_rows (the values of enum kv_dtype). */
enum { IX_ROW_F32 = 0, IX_ROW_F16 = 1, IX_ROW_BF16 = 2 };

/** Bytes per element of row type @p dtype, or 0 when unknown. */
static inline size_t ix_row_elem(unsigned dtype)
{
	return dtype == IX_ROW_F32 ? 4 : dtype == IX_ROW_F16 || dtype == IX_ROW_BF16 ? 2 : 0;
}

/** Convert one row of @p d elements of type @p dtype to fp32. */
void ix_row_f32(const uint8_t *row, unsigned dtype, unsigned d, float *out);

/**
 * out[i*G + g] = rows[i*stride .. +d) . q[g*d .. +d) for i < n; NaN
 * becomes -INFINITY so that selection stays total.
 */
void ix_dots(const float *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out);

/** The same for one bf16 row (the top 16 bits of an fp32): out[g] = row . q[g]. */
void ix_dots_bf16(const uint16_t *row, const float *q, unsigned G, unsigned d, float *out);

/**
 * An index's rows of floats as it keeps them: fp32, or bf16 when every
 * value is a bf16 value (representatives and bounds drawn from a bf16
 * context's keys are): half the RAM, and a load from a bf16 side file keeps
 * the bytes as they are instead of widening them. Exactly one of the two
 * pointers is set.
 */
struct ix_mat {
	float *f32;
	uint16_t *bf16;
};

/** Take @p v (n floats, malloc'ed) into @p m: kept as bf16 when that loses nothing (v is then freed). */
void ix_mat_take(struct ix_mat *m, float *v, size_t n);
void ix_mat_free(struct ix_mat *m);
/** RAM @p m holds for @p n values. */
size_t ix_mat_bytes(const struct ix_mat *m, size_t n);
/** A bf16 value (the top 16 bits of an fp32) as fp32. */
static inline float ix_bf16_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float x;
	__builtin_memcpy(&x, &u, 4);
	return x;
}
/** Value @p i as fp32. */
static inline float ix_mat_at(const struct ix_mat *m, size_t i)
{
	return m->f32 ? m->f32[i] : ix_bf16_f32(m->bf16[i]);
}
/**
 * v[i*G + g] = exp(v[i*G + g] + c[g]) for i < n, in place; within a few
 * ulp of expf() (the vector path clamps its argument at 88 and gives 0
 * below -87.3, so -INFINITY is 0).
 */
void ix_exp_rows(float *v, size_t n, unsigned G, const float *c);

/**
 * The weights that score 4-bit codes on a [min, max] grid (quest's rerank):
 * for the row pair at @p row of @p m ([max | min], d each), w[g*d + i] =
 * q[g*d + i] * (max_i - min_i) / 15 and base[g] = q_g . min, so that
 * q_g . k^ = base[g] + w_g . c for codes c (ix_nibble_mass() after ix_quantize_i8()).
 */
void ix_code_weights(const struct ix_mat *m, size_t row, unsigned d, const float *q, unsigned G, float *w,
		     float *base);
/** ix_dots() over int8 rows: out[i*G + g] = rows[i*stride .. +d) . q[g*d .. +d). */
void ix_dots_i8(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out);
/**
 * Quest's page bounds for ranking: rows [max | min] (d int8 each, stride
 * apart) against queries [q+ | q-] (2d floats each, q+ >= 0 >= q-), each
 * query rounded to int8 on one scale s_g = max |q_g| / 127
 * (ix_quantize_i8()): out[i*G + g] = s_g * (max_i . W+_g + min_i . W-_g)
 * in exact integer sums, so within s_g / 2 * sum |row_i| of ix_dots_i8()'s.
 * With AVX2, G % 4 == 0 (<= 64) and d % 32 == 0 (<= 256) the bytes
 * multiply 32 at a time (vpmaddubsw) and no row is widened to floats;
 * otherwise, or for queries not split so, it is ix_dots_i8(), exact. A NaN
 * dot comes out as -INFINITY; on the int8 path so does every dot of a
 * query with a NaN or an infinity.
 */
void ix_bounds_i8q(const int8_t *rows, size_t n, size_t stride, const float *q, unsigned G, unsigned d, float *out);

/*
 * Blocked 4-bit codes: tokens in blocks of IX_CODE_BLOCK, channels padded
 * to ix_code_dims(d); a block is one 32-byte plane per 8 channels, byte
 * t*4 + (i % 4) of plane i / 8 holding channel i of token t in its low
 * nibble when i % 8 < 4 and in its high one otherwise. So one plane is
 * 8 tokens x 4 channels twice over, what a byte-wise multiply-add takes.
 */
#define IX_CODE_BLOCK 8u
static inline unsigned ix_code_dims(unsigned d)
{
	return (d + 7) / 8 * 8;
}
static inline size_t ix_code_block_bytes(unsigned d)
{
	return (size_t)ix_code_dims(d) * IX_CODE_BLOCK / 2;
}
/** OR code @p v (< 16) of channel @p i of token @p t into a zeroed block. */
static inline void ix_code_put(uint8_t *blk, unsigned t, unsigned i, unsigned v)
{
	blk[(size_t)(i / 8) * 32 + t * 4 + i % 4] |= (uint8_t)(v << (4 * (i / 4 % 2)));
}
static inline unsigned ix_code_get(const uint8_t *blk, unsigned t, unsigned i)
{
	return blk[(size_t)(i / 8) * 32 + t * 4 + i % 4] >> (4 * (i / 4 % 2)) & 15;
}

/**
 * Weights of G heads (@p w [G][d]) as int8: W[g*dp + i] = round(w_gi /
 * scale[g]) with scale[g] = max_i |w_gi| / 127 and dp = ix_code_dims(d),
 * the padding 0. A head with a NaN or an infinity gets a NaN scale.
 */
void ix_quantize_i8(const float *w, unsigned G, unsigned d, int8_t *W, float *scale);

/**
 * The int8 code weights of a row pair [max | min] in int8 steps from
 * 16-bit query weights made once a search: W[g*dp + i] = round(r_i *
 * q16[g*dp + i] / 256) with r_i = max_i - min_i, rounded as vpmulhrsw
 * does (half up). With q16_gi = round(256 qs_gi / D_g), D_g = max_i
 * |qs_gi| R_i / 127 and R_i the largest r_i of any page, |W| <= 127 on
 * every page and qs_g . (k^ - min) ~ (D_g / 15) W_g . c for codes c: one
 * scale a head for all pages, no per-page rounding pass. base[g] = qs_g .
 * min. dp = ix_code_dims(d); q16's padding is ignored, W's is 0.
 */
void ix_code_weights_q8(const int8_t *row, unsigned d, const int16_t *q16, const float *qs, unsigned G, int8_t *W,
			float *base);

/**
 * Blocked codes against int8 weights (ix_quantize_i8()):
 * out[b*IX_CODE_BLOCK + t] = sum_g exp(scale[g] * (W_g . c_bt) + c[g]), the
 * dot exact in integers, the exps as ix_exp_rows()'.
 */
void ix_nibble_mass(const uint8_t *blocks, size_t nblocks, unsigned d, const int8_t *W, const float *scale,
		    const float *c, unsigned G, float *out);
/** ix_dots() over the rows of @p m. */
void ix_mat_dots(const struct ix_mat *m, size_t n, size_t stride, const float *q, unsigned G, unsigned d,
		 float *out);
/** Write dtype u32 (0 f32, 1 bf16), then the @p n values in it. */
void ix_wr_mat(struct ix_wr *w, const struct ix_mat *m, size_t n);
/** Read @p n finite values of @p dtype (0 f32, 1 bf16, as ix_wr_mat() wrote them) into @p m. */
int ix_rd_mat(struct ix_rd *r, uint32_t dtype, size_t n, struct ix_mat *m);

/** fp32 to bf16, rounded to nearest even (NaN stays NaN); exact for values that came from bf16. */
static inline uint16_t ix_f32_bf16(float x)
{
	uint32_t u;
	__builtin_memcpy(&u, &x, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* ---- selection ---------------------------------------------------------- */

struct ix_item {
	float score;
	uint32_t id;
};

/**
 * Put the @p m best of @p a[0..n) first, in order (score descending, id
 * ascending); the rest follow in no order. m is clamped to n.
 */
void ix_top(struct ix_item *a, size_t n, size_t m);

/** Put the @p m best of @p a[0..n) first, in no order (m clamped to n). */
void ix_select(struct ix_item *a, size_t n, size_t m);

/** What ix_group_softmax() scores a unit by. */
enum ix_score {
	IX_MASS,                  /* sum_g w_j*exp(s_jg) / Z_g: the group's estimated attention mass */
	IX_DENSITY,               /* sum_g exp(s_jg) / Z_g: the same per token (mass / w_j) */
	IX_DENSITY_MAX,           /* max_g exp(s_jg) / Z_g: threshold mode's statistic */
};

/**
 * The group's softmax over units of weight w_j = exp(lw[j]): for each head
 * g, Z_g = sum_j w_j*exp(s[j*G + g]) and lse[g] = log Z_g; out[j].score as
 * @p how says, out[j].id = ids ? ids[j] : j.
 * @param s    [n][G] scores, overwritten (with scaled exponentials)
 * @param lw   log weights (NULL: all 0)
 * @param lse  [G] output (may be NULL)
 */
void ix_group_softmax(float *s, const float *lw, const uint32_t *ids, size_t n, unsigned G,
		      float *lse, enum ix_score how, struct ix_item *out);

/**
 * Items in order, selected lazily: ix_top() runs on the next batch only
 * when the walk reaches it, so walking k items of n costs O(n + k log k).
 */
struct ix_walk {
	struct ix_item *a;
	size_t n, ready, pos;
};

static inline void ix_walk_init(struct ix_walk *w, struct ix_item *a, size_t n, size_t first)
{
	w->a = a;
	w->n = n;
	w->ready = first < n ? first : n;
	w->pos = 0;
	ix_top(a, n, w->ready);
}

/** The next item in order, or NULL at the end. */
static inline const struct ix_item *ix_walk_next(struct ix_walk *w)
{
	if (w->pos == w->n)
		return NULL;
	if (w->pos == w->ready) {
		size_t more = w->ready > 64 ? w->ready : 64;
		if (more > w->n - w->ready)
			more = w->n - w->ready;
		ix_top(w->a + w->ready, w->n - w->ready, more);
		w->ready += more;
	}
	return &w->a[w->pos++];
}

/* ---- token sets ---------------------------------------------------------- */

static inline void ix_bit_set(uint64_t *bits, uint64_t i)
{
	bits[i >> 6] |= 1ull << (i & 63);
}

static inline int ix_bit_get(const uint64_t *bits, uint64_t i)
{
	return (int)(bits[i >> 6] >> (i & 63)) & 1;
}

static inline size_t ix_bits_words(uint64_t n)
{
	return (size_t)((n + 63) / 64);
}

/** Write the set tokens of @p bits (over n tokens) to @p out in order; returns how many. */
uint64_t ix_bits_emit(const uint64_t *bits, uint64_t n, uint64_t *out);

/**
 * Tail fill: score the tokens @p ids[0..cnt) exactly for the group and set
 * the bits of the best @p take. A token's score is, with @p sumexp,
 * sum_g exp(q_g.k - off[g]), else max_g (q_g.k - off[g]). Keys come from
 * keys->k, or from keys->fetch when k is NULL.
 * @param tmp  room for @p cnt items
 * @return the tokens scored (cnt), or fetch's negative errno
 */
int64_t ix_tail_fill(const struct index_keys *keys, const float *q, unsigned G, const float *off, int sumexp,
		      const uint32_t *ids, size_t cnt, size_t take, uint64_t *bits, struct ix_item *tmp);

/**
 * Merge per-head nearest-neighbour lists (FAISS results: @p D scores, @p L
 * labels, [G][k], -1 for none) into at most @p budget tokens: the union,
 * ranked by the best over heads of (score - that head's top score).
 * @param best  room for n floats (need not be initialised)
 * @param bits  room for n bits (cleared here)
 * @param pool  room for G*k items
 * @param out   sorted, unique tokens
 * @return the number of tokens written to @p out
 */
uint64_t ix_merge_heads(const float *D, const int64_t *L, unsigned G, size_t k, uint64_t n, uint64_t budget,
			float *best, uint64_t *bits, struct ix_item *pool, uint64_t *out);

/**
 * Units of @p unit consecutive tokens (unit i holds [i*unit, min(n, (i+1)*unit)))
 * in the order of @p w: with @p whole, whole units while they fit in
 * @p budget; the next ones are pooled until they hold what is left and at
 * least @p min_units units were walked, and the pool is tail filled
 * (ix_tail_fill()). Without @p whole every unit goes to the pool.
 * @param ids, tmp  room for ix_fill_units_room() entries
 * @return the tokens scored by tail fill, or a negative errno (ix_tail_fill())
 */
int64_t ix_fill_units(struct ix_walk *w, uint64_t n, unsigned unit, uint64_t budget, size_t min_units, int whole,
		       const struct index_keys *keys, const float *q, unsigned G, const float *off, int sumexp,
		       uint64_t *bits, uint32_t *ids, struct ix_item *tmp);

static inline size_t ix_fill_units_room(uint64_t n, unsigned unit, uint64_t budget, size_t min_units)
{
	uint64_t room = budget + ((uint64_t)min_units + 1) * unit;
	return (size_t)(room < n ? room : n);
}

/**
 * Check search()'s arguments common to every policy and answer the
 * trivial cases: budget 0 (nothing) and budget >= n (every token).
 * @p need_keys: 0 keys may be NULL, 1 keys->k is required, 2 keys->k or
 * keys->fetch (sparse_keys policies).
 * @return 1 when @p res is already complete, 0 to go on, -EINVAL.
 */
int ix_search_prologue(uint64_t n, unsigned d, const struct index_keys *keys, int need_keys, const float *q,
		       unsigned G, uint64_t budget, struct index_result *res);

/* ---- k-means (kmeans.c) ---------------------------------------------------- */

/**
 * Spherical k-means of @p n points through FAISS: inner-product assignment,
 * centroids L2-normalised after every iteration.
 * @param x          [n][d] points (normalise them for spherical k-means proper)
 * @param max_per    points k-means samples per centroid (0: all)
 * @param threads    OpenMP threads for FAISS (0: leave as is)
 * @param centroids  [k][d] output, unit norm
 * @param assign     [n] output (may be NULL): each point's nearest centroid by inner product
 * @return 0, -EINVAL, -ENOMEM, -EIO
 */
int ix_kmeans_ip(const float *x, size_t n, unsigned d, unsigned k, unsigned iters, uint32_t seed, unsigned max_per,
		 unsigned threads, float *centroids, uint32_t *assign);

/** Map a FAISS C API return code to 0 / -EIO (the message stays in index_faiss_last_error()). */
int ix_faiss_error(int code);

/** A 64-bit checksum of @p n bytes (XXH3). */
uint64_t ix_checksum(const void *p, size_t n);

#endif
