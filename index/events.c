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
