/* EM-LLM's episodic events: online boundaries from surprise, refined on the key graph (events.h). */
#include "events.h"
#include "ix.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SEG_REFINE_PASSES 4

int seg_params_resolve(const struct seg_params *p, struct seg_params *out)
{
	struct seg_params r = { .gamma = 1.0f, .window = 4096, .min_len = 8, .max_len = 128 };
	if (p) {
		if (p->gamma != 0)
			r.gamma = p->gamma;
		if (p->window)
			r.window = p->window;
		if (p->min_len)
			r.min_len = p->min_len;
		if (p->max_len)
			r.max_len = p->max_len;
	}
	if (!(r.gamma >= 0) || !isfinite(r.gamma) || r.min_len > r.max_len || r.window > (1u << 24))
		return -EINVAL;
	*out = r;
	return 0;
}

struct seg_state {
	struct seg_params p;
	uint64_t t;               /* tokens fed */
	uint64_t last;            /* the current event's start */
	double sum, sumsq;        /* over the ring's values */
	uint32_t filled, next;
	float ring[];             /* [window] the last surprises */
};

struct seg_state *seg_new(const struct seg_params *p)
{
	struct seg_params r;
	if (seg_params_resolve(p, &r))
		return NULL;
	struct seg_state *s = calloc(1, sizeof(*s) + (size_t)r.window * sizeof(float));
	if (s)
		s->p = r;
	return s;
}

void seg_free(struct seg_state *s) { free(s); }

uint64_t seg_tokens(const struct seg_state *s) { return s->t; }

int64_t seg_feed(struct seg_state *s, const float *surprise, uint32_t n, uint64_t *starts)
{
	for (uint32_t i = 0; i < n; i++)
		if (!isfinite(surprise[i]))
			return -EINVAL;
	int64_t k = 0;
	for (uint32_t i = 0; i < n; i++, s->t++) {
		const double x = surprise[i];
		int start = s->t == 0;
		if (!start) {
			const uint64_t len = s->t - s->last;
			if (len >= s->p.max_len) {
				start = 1;
			} else if (len >= s->p.min_len && s->filled) {
				double mean = s->sum / s->filled, var = s->sumsq / s->filled - mean * mean;
				start = x > mean + s->p.gamma * sqrt(var > 0 ? var : 0);
			}
		}
		if (start) {
			s->last = s->t;
			starts[k++] = s->t;
		}
		/* the token joins the window of the tokens after it */
		if (s->filled == s->p.window) {
			const double old = s->ring[s->next];
			s->sum -= old;
			s->sumsq -= old * old;
		} else {
			s->filled++;
		}
		s->ring[s->next] = (float)x;
		s->sum += x;
		s->sumsq += x * x;
		s->next = (s->next + 1) % s->p.window;
		/* keep the running sums honest: recompute once per window */
		if (s->next == 0) {
			double a = 0, b = 0;
			for (uint32_t j = 0; j < s->filled; j++) {
				a += s->ring[j];
				b += (double)s->ring[j] * s->ring[j];
			}
			s->sum = a;
			s->sumsq = b;
		}
	}
	return k;
}

int seg_similarity_add(const float *k, uint32_t n, unsigned d, float *A)
{
	/* the keys against themselves as "queries", with the AVX2 scorer, a block of rows at a time */
	enum { BLOCK = 256 };
	float *tmp = malloc((size_t)n * BLOCK * sizeof(float));
	if (!tmp)
		return -ENOMEM;
	for (uint32_t j0 = 0; j0 < n; j0 += BLOCK) {
		const unsigned b = n - j0 < BLOCK ? n - j0 : BLOCK;
		ix_dots(k, n, d, k + (size_t)j0 * d, b, d, tmp);
		for (uint32_t i = 0; i < n; i++)
			for (unsigned j = 0; j < b; j++)
				A[(size_t)i * n + j0 + j] += tmp[(size_t)i * b + j];
	}
	free(tmp);
	return 0;
}

void seg_clamp(float *A, uint32_t n)
{
	for (size_t i = 0; i < (size_t)n * n; i++)
		if (!(A[i] > 0))
			A[i] = 0;
}

static int starts_ok(uint32_t n, const uint32_t *starts, uint32_t n_ev)
{
	if (!n || !n_ev || starts[0] != 0)
		return 0;
	for (uint32_t i = 1; i < n_ev; i++)
		if (starts[i] <= starts[i - 1] || starts[i] >= n)
			return 0;
	return 1;
}

/* Prefix sums of a chunk's graph: P[i][j] = sum of A over [0,i) x [0,j); D[i] = sum of deg over [0,i). */
struct prefix {
	uint32_t n;
	double *P, *D, two_m;
};

static int prefix_build(const float *A, uint32_t n, struct prefix *x)
{
	const size_t w = (size_t)n + 1;
	x->n = n;
	x->P = calloc(w * w, sizeof(double));
	x->D = calloc(w, sizeof(double));
	if (!x->P || !x->D) {
		free(x->P);
		free(x->D);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		double row = 0;
		for (uint32_t j = 0; j < n; j++) {
			row += A[(size_t)i * n + j];
			x->P[(i + 1) * w + j + 1] = x->P[i * w + j + 1] + row;
		}
		x->D[i + 1] = x->D[i] + row;
	}
	x->two_m = x->D[n];
	return 0;
}

static void prefix_free(struct prefix *x)
{
	free(x->P);
	free(x->D);
}

/* in_c and tot_c of the event [a, b). */
static double in_of(const struct prefix *x, uint32_t a, uint32_t b)
{
	const size_t w = (size_t)x->n + 1;
	return x->P[b * w + b] - x->P[a * w + b] - x->P[b * w + a] + x->P[a * w + a];
}

static double tot_of(const struct prefix *x, uint32_t a, uint32_t b) { return x->D[b] - x->D[a]; }

/* The event [a, b)'s term: its modularity share (times 2m), or its phi. */
static double term(const struct prefix *x, uint32_t a, uint32_t b, enum seg_metric m)
{
	const double in = in_of(x, a, b), tot = tot_of(x, a, b);
	if (m == SEG_MODULARITY)
		return x->two_m > 0 ? in - tot * tot / x->two_m : 0;
	const double den = fmin(tot, x->two_m - tot);
	return den > 0 ? (tot - in) / den : 0;
}

double seg_score(const float *A, uint32_t n, const uint32_t *starts, uint32_t n_ev, enum seg_metric m)
{
	if (!starts_ok(n, starts, n_ev))
		return NAN;
	struct prefix x;
	if (prefix_build(A, n, &x))
		return NAN;
	double s = 0;
	for (uint32_t e = 0; e < n_ev; e++)
		s += term(&x, starts[e], e + 1 < n_ev ? starts[e + 1] : n, m);
	double r = m == SEG_MODULARITY ? (x.two_m > 0 ? s / x.two_m : 0) : s / n_ev;
	prefix_free(&x);
	return r;
}

int seg_refine(const float *A, uint32_t n, uint32_t *starts, uint32_t n_ev, enum seg_metric m,
	       const struct seg_params *p)
{
	struct seg_params r;
	if (!starts_ok(n, starts, n_ev) || seg_params_resolve(p, &r))
		return -EINVAL;
	struct prefix x;
	if (prefix_build(A, n, &x))
		return -ENOMEM;
	/* a move changes its neighbours' best places: passes until none moves */
	int moved = 1;
	for (int pass = 0; moved && pass < SEG_REFINE_PASSES; pass++) {
	moved = 0;
	for (uint32_t e = 1; e < n_ev; e++) {
		const uint32_t a = starts[e - 1], c = e + 1 < n_ev ? starts[e + 1] : n;
		/* both events stay within [min_len, max_len] */
		int64_t lo = (int64_t)a + r.min_len, hi = (int64_t)c - r.min_len;
		if ((int64_t)c - r.max_len > lo)
			lo = (int64_t)c - r.max_len;
		if ((int64_t)a + r.max_len < hi)
			hi = (int64_t)a + r.max_len;
		const uint32_t b0 = starts[e];
		uint32_t best = b0;
		double best_v = term(&x, a, b0, m) + term(&x, b0, c, m);
		for (int64_t b = lo; b <= hi; b++) {
			const double v = term(&x, a, (uint32_t)b, m) + term(&x, (uint32_t)b, c, m);
			/* strictly better only: ties keep the surprise's boundary */
			if (m == SEG_MODULARITY ? v > best_v + 1e-12 * fabs(best_v) : v < best_v - 1e-12 * fabs(best_v)) {
				best_v = v;
				best = (uint32_t)b;
			}
		}
		moved |= best != b0;
		starts[e] = best;
	}
	}
	prefix_free(&x);
	return 0;
}

/* ---- a layer's events ------------------------------------------------------ */

void seg_unrope(const float *k, uint32_t n, unsigned d, double theta, uint64_t first_pos, float *out)
{
	if (!(theta > 0)) {
		memmove(out, k, (size_t)n * d * sizeof(float));
		return;
	}
	const unsigned half = d / 2;
	for (uint32_t t = 0; t < n; t++) {
		const double pos = (double)(first_pos + t);
		const float *x = k + (size_t)t * d;
		float *y = out + (size_t)t * d;
		for (unsigned i = 0; i < half; i++) {
			const double a = pos * pow(theta, -2.0 * i / d);
			const double c = cos(a), s = sin(a), p = x[i], q = x[i + half];
			y[i] = (float)(p * c + q * s);
			y[i + half] = (float)(q * c - p * s);
		}
	}
}

/* The RoPE angles of [pos0, pos0 + n) as cos, sin tables [n][half] (one per chunk, shared by the heads). */
struct rope_table {
	double *c, *s;
	double *freq;
};

static int rope_table_init(struct rope_table *r, unsigned d, double theta, uint32_t cap)
{
	const unsigned half = d / 2;
	r->c = malloc((size_t)cap * half * sizeof(double));
	r->s = malloc((size_t)cap * half * sizeof(double));
	r->freq = malloc(half * sizeof(double));
	if (!r->c || !r->s || !r->freq)
		return -ENOMEM;
	for (unsigned i = 0; i < half; i++)
		r->freq[i] = pow(theta, -2.0 * i / d);
	return 0;
}

static void rope_table_fill(struct rope_table *r, unsigned d, uint64_t pos0, uint32_t n)
{
	const unsigned half = d / 2;
	for (uint32_t t = 0; t < n; t++)
		for (unsigned i = 0; i < half; i++) {
			const double a = (double)(pos0 + t) * r->freq[i];
			r->c[(size_t)t * half + i] = cos(a);
			r->s[(size_t)t * half + i] = sin(a);
		}
}

static void rope_table_apply(const struct rope_table *r, unsigned d, uint32_t n, float *k)
{
	const unsigned half = d / 2;
	for (uint32_t t = 0; t < n; t++) {
		float *x = k + (size_t)t * d;
		const double *c = r->c + (size_t)t * half, *s = r->s + (size_t)t * half;
		for (unsigned i = 0; i < half; i++) {
			const double p = x[i], q = x[i + half];
			x[i] = (float)(p * c[i] + q * s[i]);
			x[i + half] = (float)(q * c[i] - p * s[i]);
		}
	}
}

static void rope_table_free(struct rope_table *r)
{
	free(r->c);
	free(r->s);
	free(r->freq);
}

/* Pre-RoPE keys of every head for [t0, t0 + cnt): out [heads][cnt][d]. */
static int layer_keys(const struct seg_layer_src *src, struct rope_table *rt, uint64_t t0, uint32_t cnt, float *out)
{
	const int rope = src->rope_theta > 0;
	if (rope)
		rope_table_fill(rt, src->d, src->first_pos + t0, cnt);
	for (unsigned h = 0; h < src->heads; h++) {
		float *k = out + (size_t)h * cnt * src->d;
		int rc = src->keys(src->ctx, h, t0, cnt, k);
		if (rc)
			return rc;
		if (rope)
			rope_table_apply(rt, src->d, cnt, k);
	}
	return 0;
}

enum { NOVELTY_CHUNK = 4096 };

/* Key novelty of every token (see events.h) into @p s [n]. */
static int novelty(const struct seg_layer_src *src, struct rope_table *rt, float *s)
{
	const unsigned d = src->d, H = src->heads, W = SEG_NOVELTY_SPAN;
	float *k = malloc((size_t)H * NOVELTY_CHUNK * d * sizeof(float));
	double *sum = calloc((size_t)H * d, sizeof(double));
	float *ring = calloc((size_t)H * W * d, sizeof(float));
	int rc = k && sum && ring ? 0 : -ENOMEM;
	for (uint64_t t0 = 0; !rc && t0 < src->n; t0 += NOVELTY_CHUNK) {
		const uint32_t cnt = (uint32_t)(src->n - t0 < NOVELTY_CHUNK ? src->n - t0 : NOVELTY_CHUNK);
		if ((rc = layer_keys(src, rt, t0, cnt, k)))
			break;
		for (uint32_t i = 0; i < cnt; i++) {
			const uint64_t t = t0 + i, have = t < W ? t : W;
			double acc = 0;
			for (unsigned h = 0; h < H; h++) {
				const float *x = k + ((size_t)h * cnt + i) * d;
				double *m = sum + (size_t)h * d;
				float *old = ring + ((size_t)h * W + t % W) * d;
				if (have) {
					double dot = 0, nx = 0, nm = 0;
					for (unsigned j = 0; j < d; j++) {
						dot += x[j] * m[j];
						nx += (double)x[j] * x[j];
						nm += m[j] * m[j];
					}
					acc += nx > 0 && nm > 0 ? 1 - dot / sqrt(nx * nm) : 1;
				}
				/* the window's sum: drop the key W back, add this one */
				for (unsigned j = 0; j < d; j++) {
					if (t >= W)
						m[j] -= old[j];
					m[j] += x[j];
					old[j] = x[j];
				}
			}
			s[t] = (float)acc;
		}
	}
	free(k);
	free(sum);
	free(ring);
	return rc;
}

struct refine_job {
	const struct seg_layer_src *src;
	const struct seg_layer_opts *o;
	const struct seg_params *p;
	uint64_t *starts;         /* all of the layer's, refined in place chunk by chunk */
	uint64_t n_ev;
	const uint64_t *chunk_ev; /* [chunks + 1] first event of each chunk */
	double *before, *after;   /* [chunks]; NAN where a chunk has one event */
	int have_rope;
};

static int refine_chunk(void *ctx, size_t c, unsigned worker)
{
	(void)worker;
	struct refine_job *j = ctx;
	const struct seg_layer_src *src = j->src;
	const uint64_t e0 = j->chunk_ev[c], e1 = j->chunk_ev[c + 1];
	const uint64_t t0 = j->starts[e0], t1 = e1 < j->n_ev ? j->starts[e1] : src->n;
	const uint32_t n = (uint32_t)(t1 - t0), n_ev = (uint32_t)(e1 - e0);
	j->before[c] = j->after[c] = NAN;
	if (n_ev < 2)
		return 0;
	const unsigned d = src->d;
	float *A = calloc((size_t)n * n, sizeof(float));
	float *k = malloc((size_t)src->heads * n * d * sizeof(float));
	uint32_t *st = malloc(n_ev * sizeof(uint32_t));
	struct rope_table rt = { 0 };
	int rc = A && k && st ? 0 : -ENOMEM;
	if (!rc && j->have_rope)
		rc = rope_table_init(&rt, d, src->rope_theta, n);
	if (!rc)
		rc = layer_keys(src, &rt, t0, n, k);
	for (unsigned h = 0; !rc && h < src->heads; h++)
		rc = seg_similarity_add(k + (size_t)h * n * d, n, d, A);
	if (!rc) {
		seg_clamp(A, n);
		for (uint32_t e = 0; e < n_ev; e++)
			st[e] = (uint32_t)(j->starts[e0 + e] - t0);
		j->before[c] = seg_score(A, n, st, n_ev, j->o->metric);
		rc = seg_refine(A, n, st, n_ev, j->o->metric, j->p);
	}
	if (!rc) {
		j->after[c] = seg_score(A, n, st, n_ev, j->o->metric);
		for (uint32_t e = 1; e < n_ev; e++)
			j->starts[e0 + e] = t0 + st[e];
	}
	rope_table_free(&rt);
	free(A);
	free(k);
	free(st);
	return rc;
}

int seg_layer(const struct seg_layer_src *src, const struct seg_layer_opts *opts, struct seg_layer_out *out)
{
	struct seg_layer_opts o = opts ? *opts : (struct seg_layer_opts){ 0 };
	struct seg_params p;
	if (!src || !out || !src->n || src->n > IX_MAX_TOKENS || !src->heads || !src->d || src->d > IX_MAX_DIM ||
	    !src->keys || (src->rope_theta > 0 && src->d % 2) || !(src->rope_theta >= 0) ||
	    seg_params_resolve(&o.seg, &p) || (o.metric != SEG_MODULARITY && o.metric != SEG_CONDUCTANCE))
		return -EINVAL;
	if (!o.chunk)
		o.chunk = 512;
	if (o.chunk > 8192)
		return -EINVAL;
	if (src->starts) {
		if (!src->n_starts || src->starts[0] != 0)
			return -EINVAL;
		for (uint64_t e = 1; e < src->n_starts; e++)
			if (src->starts[e] <= src->starts[e - 1] || src->starts[e] >= src->n)
				return -EINVAL;
	}
	memset(out, 0, sizeof(*out));
	out->before = out->after = NAN;
	const int have_rope = src->rope_theta > 0;
	int rc = 0;
	uint64_t *starts = NULL, n_ev = 0, *chunk_ev = NULL, chunks = 0;
	double *before = NULL, *after = NULL;
	if (src->starts) {
		n_ev = src->n_starts;
		starts = malloc(n_ev * sizeof(uint64_t));
		if (!starts)
			return -ENOMEM;
		memcpy(starts, src->starts, n_ev * sizeof(uint64_t));
	} else {
		struct rope_table rt = { 0 };
		float *s = malloc(src->n * sizeof(float));
		starts = malloc(src->n * sizeof(uint64_t));
		struct seg_state *st = seg_new(&p);
		rc = s && starts && st ? 0 : -ENOMEM;
		if (!rc && have_rope)
			rc = rope_table_init(&rt, src->d, src->rope_theta, NOVELTY_CHUNK);
		if (!rc)
			rc = novelty(src, &rt, s);
		for (uint64_t t0 = 0; !rc && t0 < src->n; t0 += 1u << 20) {
			const uint32_t cnt = (uint32_t)(src->n - t0 < (1u << 20) ? src->n - t0 : 1u << 20);
			int64_t k = seg_feed(st, s + t0, cnt, starts + n_ev);
			rc = k < 0 ? (int)k : 0;
			n_ev += k > 0 ? (uint64_t)k : 0;
		}
		rope_table_free(&rt);
		seg_free(st);
		free(s);
		if (rc)
			goto out;
	}
	if (o.refine && n_ev > 1) {
		chunk_ev = malloc((n_ev + 1) * sizeof(uint64_t));
		if (!chunk_ev) {
			rc = -ENOMEM;
			goto out;
		}
		/* whole events while they fit in a chunk, at least one */
		for (uint64_t e = 0; e < n_ev;) {
			const uint64_t t0 = starts[e];
			chunk_ev[chunks++] = e;
			e++;
			while (e < n_ev && (e + 1 < n_ev ? starts[e + 1] : src->n) - t0 <= o.chunk)
				e++;
		}
		chunk_ev[chunks] = n_ev;
		before = malloc(chunks * sizeof(double));
		after = malloc(chunks * sizeof(double));
		if (!before || !after) {
			rc = -ENOMEM;
			goto out;
		}
		struct refine_job job = { .src = src, .o = &o, .p = &p, .starts = starts, .n_ev = n_ev,
					  .chunk_ev = chunk_ev, .before = before, .after = after,
					  .have_rope = have_rope };
		if ((rc = ix_parallel(o.threads, chunks, refine_chunk, &job)))
			goto out;
		double b = 0, a = 0;
		uint64_t m = 0;
		for (uint64_t c = 0; c < chunks; c++)
			if (!isnan(before[c])) {
				b += before[c];
				a += after[c];
				m++;
			}
		out->before = m ? b / m : NAN;
		out->after = m ? a / m : NAN;
		out->chunks = m;
	}
out:
	free(chunk_ev);
	free(before);
	free(after);
	if (rc) {
		free(starts);
		return rc;
	}
	out->starts = starts;
	out->n_ev = n_ev;
	return 0;
}

/* ---- persistence ------------------------------------------------------------ */

#define SEG_MAGIC 0x4745534du /* "MSEG" */
#define SEG_VERSION 1u

int seg_save(const struct seg_state *s, uint8_t **buf, size_t *len)
{
	const size_t n = 4 + 4 + 4 + 4 * 4 + 8 + 8 + 4 + 4 + (size_t)s->filled * 4;
	uint8_t *b = malloc(n), *p = b;
	if (!b)
		return -ENOMEM;
#define PUT(x)                                                                                     \
	do {                                                                                       \
		memcpy(p, &(x), sizeof(x));                                                        \
		p += sizeof(x);                                                                    \
	} while (0)
	const uint32_t magic = SEG_MAGIC, version = SEG_VERSION, reserved = 0;
	PUT(magic);
	PUT(version);
	PUT(reserved);
	PUT(s->p.gamma);
	PUT(s->p.window);
	PUT(s->p.min_len);
	PUT(s->p.max_len);
	PUT(s->t);
	PUT(s->last);
	PUT(s->filled);
	PUT(s->next);
#undef PUT
	memcpy(p, s->ring, (size_t)s->filled * 4);
	*buf = b;
	*len = n;
	return 0;
}

int seg_load(const uint8_t *buf, size_t len, struct seg_state **out)
{
	const size_t head = 4 + 4 + 4 + 4 * 4 + 8 + 8 + 4 + 4;
	if (!buf || !out || len < head)
		return -EBADMSG;
	const uint8_t *p = buf;
#define GET(x)                                                                                     \
	do {                                                                                       \
		memcpy(&(x), p, sizeof(x));                                                        \
		p += sizeof(x);                                                                    \
	} while (0)
	uint32_t magic, version, reserved, filled, next;
	struct seg_params sp;
	uint64_t t, last;
	GET(magic);
	GET(version);
	GET(reserved);
	GET(sp.gamma);
	GET(sp.window);
	GET(sp.min_len);
	GET(sp.max_len);
	GET(t);
	GET(last);
	GET(filled);
	GET(next);
#undef GET
	struct seg_params r;
	if (magic != SEG_MAGIC || version != SEG_VERSION || reserved || !sp.window || !sp.min_len || !sp.max_len ||
	    sp.gamma == 0 || seg_params_resolve(&sp, &r) || last > t || filled > sp.window || next >= sp.window ||
	    filled > t || (filled < sp.window && next != filled) || len != head + (size_t)filled * 4)
		return -EBADMSG;
	struct seg_state *s = seg_new(&sp);
	if (!s)
		return -ENOMEM;
	s->t = t;
	s->last = last;
	s->filled = filled;
	s->next = next;
	memcpy(s->ring, p, (size_t)filled * 4);
	for (uint32_t j = 0; j < filled; j++) {
		if (!isfinite(s->ring[j])) {
			seg_free(s);
			return -EBADMSG;
		}
		s->sum += s->ring[j];
		s->sumsq += (double)s->ring[j] * s->ring[j];
	}
	*out = s;
	return 0;
}
