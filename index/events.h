/*
 * EM-LLM's episodic events: boundaries found online from surprise, then
 * refined on the key similarity graph (Fountas et al., "Human-like
 * Episodic Memory for Infinite Context LLMs").
 *
 * Glossary
 *   surprise  s_t = -log p(x_t), the model's surprise at token t (nats).
 *   event     a run of consecutive tokens [start, next start); the first
 *             token of a context starts the first one.
 *   window    W, the surprise of up to `window` tokens before t.
 *   graph     of one chunk of whole events: A[i][j] >= 0 the similarity of
 *             tokens i and j (the sum over KV heads of their pre-RoPE key
 *             dot products, clamped at 0: modularity and conductance are
 *             defined for non-negative weights), self-loops included.
 *
 * Boundary rule (online, O(1) per token): token t > 0 starts an event when
 * t - last start >= min_len and s_t > mean(W) + gamma * std(W) (population
 * std), or when t - last start == max_len (an event never grows longer).
 *
 * Modularity of a chunk's partition into events c:
 *   Q = 1/(2m) * sum_c [ in_c - tot_c^2 / (2m) ],
 *   in_c = sum_{i,j in c} A_ij, tot_c = sum_{i in c} deg_i, deg_i = sum_j A_ij, 2m = sum_ij A_ij.
 * Conductance of a partition: the mean over its events of
 *   phi(c) = cut(c) / min(vol(c), 2m - vol(c)), cut(c) = tot_c - in_c, vol(c) = tot_c
 *   (0 when the minimum is 0).
 * Refinement moves each interior boundary, left to right, to the position
 * between its neighbours (keeping both events within [min_len, max_len])
 * where the two events it separates score best: the largest sum of their
 * modularity terms, or the smallest sum of their phi; passes repeat (at
 * most 4) while a boundary moved, since a move changes its neighbours'
 * best places. Prefix sums make each
 * candidate O(1): a chunk of n tokens costs O(n^2) after A.
 */
#ifndef MNEMO_INDEX_EVENTS_H
#define MNEMO_INDEX_EVENTS_H

#include <stddef.h>
#include <stdint.h>

struct seg_params {
	float gamma;              /* [1.0] */
	unsigned window;          /* [4096] */
	unsigned min_len, max_len;/* [8, 128] */
};

/** @p p's zeros replaced by the defaults; -EINVAL for min_len > max_len or gamma < 0. */
int seg_params_resolve(const struct seg_params *p, struct seg_params *out);

struct seg_state;

/** An online segmenter at token 0. @return NULL on bad params or no memory. */
struct seg_state *seg_new(const struct seg_params *p);
void seg_free(struct seg_state *s);

/**
 * Feed the surprise of the next @p n tokens; the event starts among them
 * (absolute token indices, ascending) go to @p starts, which must hold n.
 * @return the number of starts written, or -EINVAL for a non-finite surprise
 *         (the state is then unchanged).
 */
int64_t seg_feed(struct seg_state *s, const float *surprise, uint32_t n, uint64_t *starts);

/** Tokens fed so far. */
uint64_t seg_tokens(const struct seg_state *s);

enum seg_metric { SEG_MODULARITY = 0, SEG_CONDUCTANCE = 1 };

/**
 * A += the clamped-later similarity of @p n keys [n][d]: A_ij += k_i . k_j.
 * Call once per KV head, then seg_clamp(). @return 0 or -ENOMEM.
 */
int seg_similarity_add(const float *k, uint32_t n, unsigned d, float *A);
/** A_ij = max(A_ij, 0). */
void seg_clamp(float *A, uint32_t n);

/**
 * The metric of the partition of a chunk of @p n tokens into events
 * starting at @p starts [n_ev] (starts[0] == 0, ascending, < n).
 * @return Q, or the mean phi; NAN for bad starts.
 */
double seg_score(const float *A, uint32_t n, const uint32_t *starts, uint32_t n_ev, enum seg_metric m);

/**
 * Refine the interior boundaries starts[1..n_ev-1] in place (see above).
 * @return 0, -EINVAL (bad starts), -ENOMEM
 */
int seg_refine(const float *A, uint32_t n, uint32_t *starts, uint32_t n_ev, enum seg_metric m,
	       const struct seg_params *p);

/* ---- a layer's events, end to end --------------------------------------- */

/**
 * Undo neox-style RoPE (channel i turns with channel i + d/2 by the angle
 * pos * theta^(-2i/d)) on @p n keys [n][d] at positions first_pos + t:
 * out = the pre-RoPE keys. theta 0 copies (keys without RoPE). d even.
 */
void seg_unrope(const float *k, uint32_t n, unsigned d, double theta, uint64_t first_pos, float *out);

/**
 * Key novelty, segmentation's proxy for surprise when the client sends
 * none: per token, the sum over the heads of 1 - cos(k_t, m_t), m_t the
 * mean of the NOVELTY_SPAN (32) pre-RoPE keys before t (0 for t = 0).
 * A new topic turns the keys away from their recent mean, as it surprises
 * the model; the boundary rule then runs on it unchanged.
 */
#define SEG_NOVELTY_SPAN 32u

/** Where seg_layer() takes a layer's keys from. */
struct seg_layer_src {
	uint64_t n;               /* tokens */
	unsigned heads, d;        /* KV heads summed over, head_dim (even when rope_theta > 0) */
	double rope_theta;        /* 0: the keys carry no RoPE */
	uint64_t first_pos;       /* RoPE position of token 0 */
	/** fp32 keys of @p head, tokens [t0, t0 + cnt), as stored (post-RoPE). @return 0 or -errno. */
	int (*keys)(void *ctx, unsigned head, uint64_t t0, uint32_t cnt, float *out);
	void *ctx;
	/* event starts from surprise (ascending, starts[0] == 0, all < n); NULL: key novelty */
	const uint64_t *starts;
	uint64_t n_starts;
};

struct seg_layer_opts {
	struct seg_params seg;    /* zeros: defaults */
	unsigned chunk;           /* tokens a refinement graph spans at most [512] */
	enum seg_metric metric;   /* [modularity] */
	int refine;               /* 0: the boundaries as found */
	unsigned threads;         /* 0: all cores */
};

struct seg_layer_out {
	uint64_t *starts;         /* malloc'ed [n_ev], the caller frees */
	uint64_t n_ev;
	/* the metric per chunk before and after refinement, mean over the chunks with two events or more */
	double before, after;
	uint64_t chunks;
};

/**
 * A layer's events: boundaries from @p src's surprise starts (or from key
 * novelty), then, with opts->refine, refinement within chunks of whole
 * events (as many as fit in opts->chunk tokens, at least one): the graph
 * sums the pre-RoPE key similarities over the heads, and the chunk's last
 * boundary (the next chunk's first start) stays put.
 * @return 0, -EINVAL, -ENOMEM, or the keys callback's error
 */
int seg_layer(const struct seg_layer_src *src, const struct seg_layer_opts *opts, struct seg_layer_out *out);

/* ---- persistence of an online segmenter ----------------------------------- */

/** A blob of @p s's state (malloc'ed). @return 0 or -ENOMEM. */
int seg_save(const struct seg_state *s, uint8_t **buf, size_t *len);
/** A segmenter from a hostile blob of seg_save(). @return 0, -EBADMSG, -ENOMEM. */
int seg_load(const uint8_t *buf, size_t len, struct seg_state **out);

#endif
