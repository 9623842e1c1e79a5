/*
 * mnemo-kvgen: write a synthetic KV-cache trace (DESIGN.md §7) whose
 * attention has the structure of a real long-context model, so that every
 * retrieval policy can be measured on it without a GPU or a model.
 *
 * Glossary
 *   t, position  t is a token's index in the trace (0..N-1); its RoPE
 *                position is first_position + t. Decode query j sits at
 *                position first_position + N + j.
 *   pair         channels (i, i + d/2) of a head, which RoPE turns together
 *                by the angle position * theta^(-2i/d) ("neox" or
 *                rotate-half layout, as in Llama-style models). Pairs with
 *                a large i turn slowly: the "slow" pairs.
 *   reserved     the 4 slowest pairs: they carry the shared key mean, the
 *                sink direction and the query shift, which must not turn
 *                over the whole context.
 *   band         the semantic band: the next slowest pairs (--semantic-dims
 *                channels); topics live there, so a query still recognises
 *                a topic's tokens far away.
 *   topic        one of K random directions in the band. A token's key
 *                carries its topic's direction; a query aimed at a topic
 *                scores all of that topic's tokens high.
 *   episode      a run of consecutive tokens on one topic; topics recur in
 *                many episodes scattered over the context.
 *   salience     a per-token multiplier of the topic component: inside a
 *                topic some tokens matter more, as in real attention.
 *   sink         the first few tokens: every query scores them high.
 *   needle       a chosen far token with a distinctive key that some decode
 *                queries aim at exactly.
 *   logit        q.k/sqrt(d). Strengths are given as logit advantages over
 *                the bulk of keys, the unit that decides attention mass.
 *   job          one unit of parallel work: a chunk of tokens of one
 *                (tensor, layer, head). Every job draws its random numbers
 *                from streams keyed by (seed, what, layer, head, token), so
 *                the output does not depend on the thread count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "safetensors.h"

#ifndef MNEMO_VERSION
#define MNEMO_VERSION "unknown"
#endif

#define RESERVED_PAIRS 4u
#define MAX_HEAD_DIM 1024u
#define MAX_THREADS 64u
/* Tokens per K/V job: 2 MiB of bf16 at d = 128, enough to amortise a
 * thread start, small enough that T threads x 2 rounds stay in cache-ish
 * memory. */
#define CHUNK_TOKENS 8192u
/* Exact sin/cos every this many tokens; a complex-multiply recurrence in
 * between (error ~1e-15 per step in double). */
#define ROPE_REANCHOR 32u

enum out_dtype { OUT_BF16, OUT_F16, OUT_F32 };

struct opts {
	const char *output;
	enum out_dtype dtype;
	uint64_t seed;
	unsigned threads;
	int progress;           /* -1 auto (tty), 0 off, 1 on */
	int quiet;

	uint32_t tokens;
	unsigned layers, kv_heads, group, head_dim;
	uint32_t prefill, decode;
	double rope_theta;
	uint64_t first_position;
	uint32_t vocab;

	unsigned sinks;
	double sink_score;
	unsigned topics;
	unsigned episode_min, episode_max;
	double topic_revisit;
	double topic_score;
	double topic_strength;
	double salience;
	double episode_spread;
	unsigned semantic_dims;         /* 0: d/4 */
	double key_mean;
	unsigned outliers;
	double outlier_scale;
	double channel_spread;
	double position_code;
	double recency;
	double query_shift;
	double query_noise;
	unsigned needles;
	double needle_prob;
	double needle_score;
	double drift;
	double topic_switch;
	double topic_inertia;
	double surprise_spike;
};

static const struct opts defaults = {
	.dtype = OUT_BF16,
	.seed = 1,
	.progress = -1,
	.tokens = 65536,
	.layers = 1,
	.kv_heads = 2,
	.group = 4,
	.head_dim = 128,
	.prefill = 1024,
	.decode = 64,
	.rope_theta = 1e7,
	.first_position = 0,
	.vocab = 32000,
	.sinks = 4,
	.sink_score = 12.0,
	.topics = 128,
	.episode_min = 8,
	.episode_max = 128,
	.topic_revisit = 0.3,
	.topic_score = 9.0,
	.topic_strength = 0.8,
	.salience = 1.0,
	.episode_spread = 0.5,
	.semantic_dims = 0,
	.key_mean = 3.0,
	.outliers = 4,
	.outlier_scale = 10.0,
	.channel_spread = 0.5,
	.position_code = 2.0,
	.recency = 4.0,
	.query_shift = 1.5,
	.query_noise = 0.5,
	.needles = 4,
	.needle_prob = 0.125,
	.needle_score = 15.0,
	.drift = 0.9,
	.topic_switch = 0.0625,
	.topic_inertia = 0.6,
	.surprise_spike = 4.0,
};

static void usage(FILE *f)
{
	fprintf(f,
"Usage: mnemo-kvgen -o FILE [OPTIONS]\n"
"\n"
"Write a synthetic KV-cache trace as a safetensors file (DESIGN.md section 7):\n"
"  k, v       [L, H_kv, N, d]  post-RoPE keys, values\n"
"  q_prefill  [L, H_q, P, d]   queries of the last P prefill positions (N-P..N-1)\n"
"  q_decode   [L, H_q, T, d]   decode queries at positions N..N+T-1\n"
"  surprise   [N] F32          -log p(token), spiking at episode starts\n"
"  tokens     [N] I32          token ids, drawn from each episode's topic vocabulary\n"
"Metadata: rope_theta, first_position, rope_style (neox: channel i pairs with\n"
"i+d/2), episode_boundaries (token indices t where an episode starts, t = 0 at\n"
"first_position), sinks, topics, needle_positions, decode_needles and\n"
"decode_topics (one entry per decode query; -1 when none), seed, generator.\n"
"Same options and seed give the same bytes, whatever the thread count.\n"
"\n"
"Output:\n"
"  -o, --output FILE        trace to write (written to FILE.tmp, fsync'ed, renamed)\n"
"      --dtype T            bf16, f16 or f32 for k, v and the queries (default bf16)\n"
"      --seed N             random seed (default 1)\n"
"      --threads N          worker threads (default: online CPUs, at most 64)\n"
"      --progress           progress line on stderr even when it is not a tty\n"
"                           (default: only on a tty)\n"
"  -q, --quiet              no progress line and no summary\n"
"  -h, --help               this help\n"
"\n"
"Geometry:\n"
"  -n, --tokens N           context tokens N (default 65536)\n"
"      --layers L           layers (default 1)\n"
"      --kv-heads H         KV heads per layer (default 2)\n"
"      --group G            query heads per KV head, GQA (default 4)\n"
"      --q-heads HQ         query heads per layer instead of --group; a multiple\n"
"                           of --kv-heads (default kv-heads * group = 8)\n"
"      --head-dim D         head dimension, even, 16..1024 (default 128)\n"
"      --prefill-queries P  prefill queries per query head, <= N (default 1024)\n"
"      --decode-queries T   decode queries per query head (default 64)\n"
"      --rope-theta X       RoPE base (default 1e7, as long-context models use)\n"
"      --first-position P   RoPE position of token 0 (default 0)\n"
"      --vocab V            vocabulary size for token ids, >= 1024 (default 32000)\n"
"\n"
"Attention structure (strengths in logits q.k/sqrt(d) over the bulk of keys):\n"
"      --sinks N            attention-sink tokens at the start (default 4)\n"
"      --sink-score X       logit advantage of a sink for every query (default 12)\n"
"      --topics K           topic directions (default 128)\n"
"      --episode-min N      shortest episode, tokens (default 8)\n"
"      --episode-max N      longest episode, tokens; lengths are log-uniform\n"
"                           (default 128)\n"
"      --topic-revisit X    probability that an episode returns to a topic of one\n"
"                           of the 8 episodes before it (default 0.3)\n"
"      --topic-score X      logit advantage of a token of the query's topic, before\n"
"                           salience and RoPE decay (default 9)\n"
"      --topic-strength X   norm of a key's topic component / norm of its noise:\n"
"                           how well topics separate in key space (default 0.8)\n"
"      --salience X         spread (std, logits) of tokens inside a topic (default 1)\n"
"      --episode-spread X   per-episode deviation of the topic direction, relative\n"
"                           (default 0.5)\n"
"      --semantic-dims S    channels of the semantic band, taken from the slowest\n"
"                           pairs after the 4 reserved ones (default d/4)\n"
"      --key-mean X         norm of the shared key mean / key noise norm (default 3)\n"
"      --outliers N         outlier channels in the key mean (default 4)\n"
"      --outlier-scale X    their magnitude, in key noise std (default 10)\n"
"      --channel-spread X   log-std of per-channel key noise scales; queries get the\n"
"                           inverse scales (default 0.5)\n"
"      --position-code X    norm of the keys' positional code in the fast pairs /\n"
"                           key noise norm: RoPE turns it into a spiral that\n"
"                           dominates key-space variance (default 2)\n"
"      --recency X          logit advantage of the nearest tokens from the queries'\n"
"                           echo of that code; it decays with distance as RoPE\n"
"                           does (default 4)\n"
"      --query-shift X      norm of the query mean, outside the keys' spread, / key\n"
"                           noise norm: the query/key distribution gap (default 1.5)\n"
"      --query-noise X      std of the logit noise a query adds (default 0.5)\n"
"      --needles N          needle tokens, spread over the first 90%% (default 4)\n"
"      --needle-prob X      probability that a decode query (and one of the last\n"
"                           64 prefill queries) aims at a needle (default 0.125)\n"
"      --needle-score X     logit advantage of the needle for such a query\n"
"                           (default 15)\n"
"      --drift X            AR(1) coefficient of the noise of consecutive queries\n"
"                           (default 0.9)\n"
"      --topic-switch X     probability that a query turns to another topic\n"
"                           (default 0.0625); decoding starts on the topic of\n"
"                           the last episode\n"
"      --topic-inertia X    weight of the previous target when it does, so the\n"
"                           target glides over a few queries (default 0.6)\n"
"      --surprise-spike X   surprise added at an episode start, nats (default 4)\n"
"\n"
"The G query heads of a group share their topic target and half their noise.\n"
"Example, the 1M-token benchmark trace (4 GiB of K/V):\n"
"  mnemo-kvgen -o trace-1m.safetensors --tokens 1048576 --layers 1 --kv-heads 8 \\\n"
"      --q-heads 32 --head-dim 128 --dtype bf16\n"
"\n"
"Exit status: 0 on success, 1 on failure, 2 on bad usage.\n");
}

/* ------------------------------------------------------------ random numbers */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct rng {
	uint64_t s;
};

enum stream_tag {
	TAG_HEAD = 1, TAG_KEY, TAG_VALUE, TAG_QPRE, TAG_QDEC, TAG_QGROUP_PRE, TAG_QGROUP_DEC,
	TAG_EPISODE_VEC, TAG_NEEDLE, TAG_SCHEDULE, TAG_TOKEN, TAG_QHEAD,
};

static struct rng stream(uint64_t seed, enum stream_tag tag, uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
	h = mix64(h ^ ((uint64_t)tag * 0xd1b54a32d192ed03ull));
	h = mix64(h ^ (a + 0x8cb92ba72f3d8dd7ull));
	h = mix64(h ^ (b + 0xaef17502108ef2d9ull));
	h = mix64(h ^ (c + 0xf1357aea2e62a9c5ull));
	return (struct rng){ h };
}

static inline uint64_t rng_next(struct rng *r)
{
	return mix64(r->s += 0x9e3779b97f4a7c15ull);
}

static inline double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1p-53;
}

/*
 * Standard normals by table: the inverse CDF at 4096 quantiles, linear in
 * between, and the exact Gaussian tail law beyond the outer quantiles.
 * Two nanoseconds a draw instead of Box-Muller's thirty: the 1M-token trace
 * draws two billion.
 */
#define NORM_BITS 12
#define NORM_N (1u << NORM_BITS)
static float norm_q[NORM_N + 1];

static double phi_inv(double u)
{
	double lo = -40, hi = 40;
	for (int i = 0; i < 200; i++) {
		double mid = 0.5 * (lo + hi);
		if (0.5 * erfc(-mid / M_SQRT2) < u)
			lo = mid;
		else
			hi = mid;
	}
	return 0.5 * (lo + hi);
}

static void norm_init(void)
{
	for (unsigned i = 1; i < NORM_N; i++)
		norm_q[i] = (float)phi_inv((double)i / NORM_N);
	norm_q[0] = -norm_q[NORM_N - 1];
	norm_q[NORM_N] = norm_q[NORM_N - 1];
}

static inline float rng_normal(struct rng *r)
{
	uint64_t x = rng_next(r);
	unsigned i = (unsigned)(x >> (64 - NORM_BITS));
	float f = (float)((x >> 16) & 0xffffffu) * 0x1p-24f;

	if (__builtin_expect(i == 0 || i == NORM_N - 1, 0)) {
		/* Beyond the outer quantile q the normal's tail is
		 * sqrt(q^2 - 2 ln U) to within the tail's own curvature. */
		double q = norm_q[NORM_N - 1];
		double u = ((double)(x & 0xffffu) + 0.5) / 65536.0;
		double v = sqrt(q * q - 2.0 * log(u));
		return (float)(i ? v : -v);
	}
	return norm_q[i] + f * (norm_q[i + 1] - norm_q[i]);
}

/* ------------------------------------------------------------- the model */

/* Per (layer, kv head): everything a key, value or query of it needs. */
struct head {
	float *mu;              /* [d] key mean, pre-RoPE */
	float *kscale;          /* [d] key noise std per channel */
	float *qscale;          /* [d] query noise std per channel (before sigma) */
	float *qmean;           /* [d] query mean, pre-RoPE */
	float *sink;            /* [d] unit sink direction (reserved pairs) */
	float *topic;           /* [K][S] unit topic directions, band-compact */
	float *vmean;           /* [d] value mean */
	float *vtopic;          /* [K][d] value topic directions */
	float qsigma;           /* query noise scale giving --query-noise logits */
};

struct gen {
	struct opts o;
	unsigned d, half, S, Hq, K;
	unsigned *band;         /* [S] channel of band slot s */
	double *freq;           /* [half] theta^(-2i/d) */
	double *cos1, *sin1;    /* [half] one position's turn per pair */
	float alpha;            /* key topic norm */
	float beta;             /* query topic norm */
	float sink_key;         /* sink component norm in sink keys */
	float q_sink;           /* query component along the sink direction */
	float needle_key;       /* needle direction norm in needle keys */
	float sal_scale;        /* salience as a fraction of the topic score */
	struct head *heads;     /* [L * H_kv] */
	float *qmult;           /* [L * H_q] per query head topic-score factor */

	int32_t *topic_of;      /* [N] -1 for sinks */
	int32_t *ep_of;         /* [N] -1 for sinks */
	float *sal;             /* [N] shared salience z-score */
	uint32_t *ep_start;     /* [n_ep] */
	int32_t *ep_topic;      /* [n_ep] */
	size_t n_ep;
	uint32_t *needle_pos;   /* [needles], increasing */
	int32_t *dec_topic, *dec_needle;        /* [T] */
	int32_t *pre_topic, *pre_needle;        /* [P] */
	float *surprise;        /* [N] */
	int32_t *tokens;        /* [N] */
};

static struct head *head_of(const struct gen *g, unsigned l, unsigned h)
{
	return &g->heads[(size_t)l * g->o.kv_heads + h];
}

static void normalize(float *x, unsigned n)
{
	double s = 0;
	for (unsigned i = 0; i < n; i++)
		s += (double)x[i] * x[i];
	if (s > 0) {
		float inv = (float)(1.0 / sqrt(s));
		for (unsigned i = 0; i < n; i++)
			x[i] *= inv;
	}
}

/* x -= (x.u) u for a unit u */
static void orthogonalize(float *x, const float *u, unsigned n)
{
	double p = 0;
	for (unsigned i = 0; i < n; i++)
		p += (double)x[i] * u[i];
	for (unsigned i = 0; i < n; i++)
		x[i] -= (float)p * u[i];
}

/* Channels of the r slowest pairs are i and i + half for i in
 * [half - r, half). reserved: [half-4, half); band: the S/2 pairs below. */
static int is_reserved(const struct gen *g, unsigned c)
{
	unsigned i = c % g->half;
	return i >= g->half - RESERVED_PAIRS;
}

static int build_head(struct gen *g, unsigned l, unsigned h)
{
	struct head *hm = head_of(g, l, h);
	unsigned d = g->d, S = g->S, K = g->K;
	struct rng r = stream(g->o.seed, TAG_HEAD, l, h, 0);
	float sq = sqrtf((float)d);
	int *is_band = NULL, *is_out = NULL;
	int rc = -ENOMEM;

	hm->mu = calloc(d, sizeof(float));
	hm->kscale = calloc(d, sizeof(float));
	hm->qscale = calloc(d, sizeof(float));
	hm->qmean = calloc(d, sizeof(float));
	hm->sink = calloc(d, sizeof(float));
	hm->vmean = calloc(d, sizeof(float));
	hm->topic = calloc((size_t)K * S, sizeof(float));
	hm->vtopic = calloc((size_t)K * d, sizeof(float));
	is_band = calloc(d, sizeof(int));
	is_out = calloc(d, sizeof(int));
	if (!hm->mu || !hm->kscale || !hm->qscale || !hm->qmean || !hm->sink || !hm->vmean ||
	    !hm->topic || !hm->vtopic || !is_band || !is_out)
		goto out;
	for (unsigned s = 0; s < S; s++)
		is_band[g->band[s]] = 1;

	/* Key noise scales: log-normal per channel, RMS 1; the reserved
	 * channels are quiet, which is what makes their mean "shared". */
	double ms = 0;
	for (unsigned c = 0; c < d; c++) {
		hm->kscale[c] = expf((float)g->o.channel_spread * rng_normal(&r));
		ms += (double)hm->kscale[c] * hm->kscale[c];
	}
	for (unsigned c = 0; c < d; c++) {
		hm->kscale[c] /= (float)sqrt(ms / d);
		if (is_reserved(g, c))
			hm->kscale[c] *= 0.3f;
	}

	/* Shared mean on the reserved channels. */
	float tmp[MAX_HEAD_DIM];
	for (unsigned c = 0; c < d; c++)
		tmp[c] = is_reserved(g, c) ? rng_normal(&r) : 0.0f;
	normalize(tmp, d);
	for (unsigned c = 0; c < d; c++)
		hm->mu[c] = (float)g->o.key_mean * sq * tmp[c];
	/* Outlier channels: huge and consistent in sign, noisier than the
	 * rest, among the slow channels (reserved or band) where they survive
	 * RoPE, as in real key caches. */
	unsigned slow = S + 2 * RESERVED_PAIRS, want = g->o.outliers < slow ? g->o.outliers : slow;
	for (unsigned n = 0; n < want;) {
		unsigned s = (unsigned)(rng_next(&r) % slow);
		unsigned c = s < S ? g->band[s] : (g->half - RESERVED_PAIRS + (s - S) / 2) + ((s - S) & 1) * g->half;
		if (is_out[c])
			continue;
		is_out[c] = 1;
		hm->mu[c] += (float)g->o.outlier_scale * (rng_next(&r) & 1 ? 1.0f : -1.0f);
		hm->kscale[c] *= 2.0f;
		n++;
	}
	/* Positional code on the fast channels: a constant before RoPE, a
	 * spiral after it. */
	for (unsigned c = 0; c < d; c++)
		tmp[c] = (!is_reserved(g, c) && !is_band[c]) ? rng_normal(&r) : 0.0f;
	normalize(tmp, d);
	float pc = (float)g->o.position_code * sq;
	for (unsigned c = 0; c < d; c++)
		hm->mu[c] += pc * tmp[c];
	/* The query echoes the code with the same phases: score
	 * sum_pairs a_i cos(dist * f_i), largest at distance 0. */
	float echo = pc > 0 ? (float)g->o.recency * sq / (pc * pc) : 0.0f;
	for (unsigned c = 0; c < d; c++)
		hm->qmean[c] += echo * pc * tmp[c];

	/* Sink direction: reserved channels, orthogonal to the mean so that
	 * only sink keys carry it. */
	float mu_r[MAX_HEAD_DIM];
	for (unsigned c = 0; c < d; c++)
		mu_r[c] = is_reserved(g, c) ? hm->mu[c] : 0.0f;
	normalize(mu_r, d);
	for (unsigned c = 0; c < d; c++)
		hm->sink[c] = is_reserved(g, c) ? rng_normal(&r) : 0.0f;
	orthogonalize(hm->sink, mu_r, d);
	normalize(hm->sink, d);
	for (unsigned c = 0; c < d; c++)
		hm->qmean[c] += g->q_sink * hm->sink[c];
	/* Query shift: reserved channels, orthogonal to the sink direction
	 * (it would move the sinks' score), at an angle to the key mean: the
	 * query cloud sits away from the key cloud, and its product with the
	 * mean is the same for every key. */
	for (unsigned c = 0; c < d; c++)
		tmp[c] = is_reserved(g, c) ? rng_normal(&r) : 0.0f;
	orthogonalize(tmp, hm->sink, d);
	normalize(tmp, d);
	for (unsigned c = 0; c < d; c++)
		hm->qmean[c] += (float)g->o.query_shift * sq * tmp[c];

	/* Query noise scales: inverse of the keys' (queries are loud where
	 * keys are quiet), RMS 1, then sigma so that q_noise . k_noise / sqrt(d)
	 * has std --query-noise. */
	ms = 0;
	for (unsigned c = 0; c < d; c++) {
		hm->qscale[c] = 1.0f / hm->kscale[c];
		ms += (double)hm->qscale[c] * hm->qscale[c];
	}
	double prod = 0;
	for (unsigned c = 0; c < d; c++) {
		hm->qscale[c] /= (float)sqrt(ms / d);
		prod += (double)hm->qscale[c] * hm->qscale[c] * hm->kscale[c] * hm->kscale[c];
	}
	hm->qsigma = (float)(g->o.query_noise / sqrt(prod / d));

	for (unsigned k = 0; k < K; k++) {
		float *u = &hm->topic[(size_t)k * S];
		for (unsigned s = 0; s < S; s++)
			u[s] = rng_normal(&r);
		normalize(u, S);
		float *vt = &hm->vtopic[(size_t)k * d];
		for (unsigned c = 0; c < d; c++)
			vt[c] = rng_normal(&r);
		normalize(vt, d);
	}
	for (unsigned c = 0; c < d; c++)
		hm->vmean[c] = 0.3f * rng_normal(&r);
	rc = 0;
out:
	free(is_band);
	free(is_out);
	return rc;
}

static void free_heads(struct gen *g)
{
	if (!g->heads)
		return;
	for (size_t i = 0; i < (size_t)g->o.layers * g->o.kv_heads; i++) {
		struct head *hm = &g->heads[i];
		free(hm->mu);
		free(hm->kscale);
		free(hm->qscale);
		free(hm->qmean);
		free(hm->sink);
		free(hm->topic);
		free(hm->vmean);
		free(hm->vtopic);
	}
	free(g->heads);
	g->heads = NULL;
}

/* Needle direction of needle m in head (l, h): a random unit vector. */
static void needle_dir(const struct gen *g, unsigned l, unsigned h, unsigned m, float *out)
{
	struct rng r = stream(g->o.seed, TAG_NEEDLE, l, h, m);
	for (unsigned c = 0; c < g->d; c++)
		out[c] = rng_normal(&r);
	normalize(out, g->d);
}

/* An episode's own deviation from its topic direction, band-compact. */
struct epcache {
	int32_t ep;
	float v[MAX_HEAD_DIM];
};

static void episode_vec(const struct gen *g, unsigned l, unsigned h, int32_t ep, struct epcache *ec)
{
	if (ec->ep == ep)
		return;
	struct rng r = stream(g->o.seed, TAG_EPISODE_VEC, l, h, (uint64_t)ep);
	for (unsigned s = 0; s < g->S; s++)
		ec->v[s] = rng_normal(&r);
	normalize(ec->v, g->S);
	for (unsigned s = 0; s < g->S; s++)
		ec->v[s] *= (float)g->o.episode_spread;
	ec->ep = ep;
}

/* Index of the needle at token t, or -1 (positions are increasing). */
static int needle_at(const struct gen *g, uint32_t t)
{
	unsigned lo = 0, hi = g->o.needles;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (g->needle_pos[mid] < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < g->o.needles && g->needle_pos[lo] == t ? (int)lo : -1;
}

/* Pre-RoPE key of token t in head (l, h). */
static void key_pre(const struct gen *g, unsigned l, unsigned h, uint32_t t,
		    struct epcache *ec, float *x)
{
	const struct head *hm = head_of(g, l, h);
	struct rng r = stream(g->o.seed, TAG_KEY, l, h, t);
	unsigned d = g->d;

	for (unsigned c = 0; c < d; c++)
		x[c] = hm->mu[c] + hm->kscale[c] * rng_normal(&r);
	if (t < g->o.sinks) {
		for (unsigned c = 0; c < d; c++)
			x[c] += g->sink_key * hm->sink[c];
		return;
	}
	int32_t tp = g->topic_of[t];
	float m = 1.0f + g->sal_scale * (0.8f * g->sal[t] + 0.6f * rng_normal(&r));
	if (m < 0.1f)
		m = 0.1f;
	episode_vec(g, l, h, g->ep_of[t], ec);
	const float *u = &hm->topic[(size_t)tp * g->S];
	float a = g->alpha * m;
	for (unsigned s = 0; s < g->S; s++)
		x[g->band[s]] += a * (u[s] + ec->v[s]);
	int m_at = needle_at(g, t);
	if (m_at >= 0) {
		float nd[MAX_HEAD_DIM];
		needle_dir(g, l, h, (unsigned)m_at, nd);
		for (unsigned c = 0; c < d; c++)
			x[c] += g->needle_key * nd[c];
	}
}

/* RoPE state for consecutive positions: cos/sin per pair. */
struct rope {
	double c[MAX_HEAD_DIM / 2], s[MAX_HEAD_DIM / 2];
	uint64_t pos;
	unsigned since;
};

static void rope_at(const struct gen *g, struct rope *rp, uint64_t pos)
{
	for (unsigned i = 0; i < g->half; i++) {
		double a = (double)pos * g->freq[i];
		rp->c[i] = cos(a);
		rp->s[i] = sin(a);
	}
	rp->pos = pos;
	rp->since = 0;
}

static void rope_next(const struct gen *g, struct rope *rp)
{
	if (++rp->since >= ROPE_REANCHOR) {
		rope_at(g, rp, rp->pos + 1);
		return;
	}
	for (unsigned i = 0; i < g->half; i++) {
		double c = rp->c[i] * g->cos1[i] - rp->s[i] * g->sin1[i];
		double s = rp->s[i] * g->cos1[i] + rp->c[i] * g->sin1[i];
		rp->c[i] = c;
		rp->s[i] = s;
	}
	rp->pos++;
}

static void rope_apply(const struct gen *g, const struct rope *rp, float *x)
{
	unsigned hf = g->half;
	for (unsigned i = 0; i < hf; i++) {
		double a = x[i], b = x[i + hf];
		x[i] = (float)(a * rp->c[i] - b * rp->s[i]);
		x[i + hf] = (float)(a * rp->s[i] + b * rp->c[i]);
	}
}

static void store(enum out_dtype dt, void *out, size_t at, const float *x, unsigned n)
{
	switch (dt) {
	case OUT_F32:
		memcpy((float *)out + at, x, n * sizeof(float));
		break;
	case OUT_BF16:
		for (unsigned i = 0; i < n; i++)
			((uint16_t *)out)[at + i] = kv_f32_to_bf16(x[i]);
		break;
	case OUT_F16:
		for (unsigned i = 0; i < n; i++)
			((uint16_t *)out)[at + i] = kv_f32_to_f16(x[i]);
		break;
	}
}

static void gen_keys(const struct gen *g, unsigned l, unsigned h, uint32_t t0, uint32_t t1, void *out)
{
	struct epcache ec = { .ep = -2 };
	struct rope rp;
	float x[MAX_HEAD_DIM];

	rope_at(g, &rp, g->o.first_position + t0);
	for (uint32_t t = t0; t < t1; t++) {
		if (t > t0)
			rope_next(g, &rp);
		key_pre(g, l, h, t, &ec, x);
		rope_apply(g, &rp, x);
		store(g->o.dtype, out, (size_t)(t - t0) * g->d, x, g->d);
	}
}

static void gen_values(const struct gen *g, unsigned l, unsigned h, uint32_t t0, uint32_t t1, void *out)
{
	const struct head *hm = head_of(g, l, h);
	float x[MAX_HEAD_DIM];
	unsigned d = g->d;

	for (uint32_t t = t0; t < t1; t++) {
		struct rng r = stream(g->o.seed, TAG_VALUE, l, h, t);
		for (unsigned c = 0; c < d; c++)
			x[c] = hm->vmean[c] + rng_normal(&r);
		int32_t tp = g->topic_of[t];
		if (tp >= 0) {
			/* Values carry their topic too, so that the output of
			 * attention depends on which topic was retrieved. */
			const float *vt = &hm->vtopic[(size_t)tp * d];
			float a = 0.8f * sqrtf((float)d);
			for (unsigned c = 0; c < d; c++)
				x[c] += a * vt[c];
		}
		store(g->o.dtype, out, (size_t)(t - t0) * d, x, d);
	}
}

/*
 * Queries of one query head, consecutive positions: decode (positions
 * N + j) or prefill (positions N - P + j). Sequential in j because of the
 * AR(1) drift; one head is one job.
 */
static void gen_queries(const struct gen *g, int decode, unsigned l, unsigned hq, void *out)
{
	unsigned G = g->o.group, h = hq / G, d = g->d, S = g->S;
	const struct head *hm = head_of(g, l, h);
	uint32_t n = decode ? g->o.decode : g->o.prefill;
	const int32_t *topic = decode ? g->dec_topic : g->pre_topic;
	const int32_t *needle = decode ? g->dec_needle : g->pre_needle;
	uint64_t pos0 = g->o.first_position + (decode ? g->o.tokens : g->o.tokens - g->o.prefill);
	float tau[MAX_HEAD_DIM], nz[MAX_HEAD_DIM], x[MAX_HEAD_DIM], kc[MAX_HEAD_DIM], x2[MAX_HEAD_DIM];
	float qm = g->qmult[(size_t)l * g->Hq + hq];
	float keep = (float)g->o.drift, fresh = sqrtf(1.0f - keep * keep);
	struct epcache ec = { .ep = -2 };
	struct rope rp, rk;

	rope_at(g, &rp, pos0);
	for (uint32_t j = 0; j < n; j++) {
		if (j)
			rope_next(g, &rp);
		/* Topic target: glides toward the scheduled topic, so a switch
		 * takes a few queries, as attention does in real decoding. */
		const float *u = &hm->topic[(size_t)topic[j] * S];
		if (j == 0) {
			memcpy(tau, u, S * sizeof(float));
		} else {
			float w = (float)g->o.topic_inertia;
			for (unsigned s = 0; s < S; s++)
				tau[s] = w * tau[s] + (1.0f - w) * u[s];
			normalize(tau, S);
		}
		/* Noise: half shared by the group, half this head's own. */
		struct rng rg = stream(g->o.seed, decode ? TAG_QGROUP_DEC : TAG_QGROUP_PRE, l, h, j);
		struct rng ro = stream(g->o.seed, decode ? TAG_QDEC : TAG_QPRE, l, hq, j);
		for (unsigned c = 0; c < d; c++) {
			float e = hm->qsigma * hm->qscale[c] *
				  (float)M_SQRT1_2 * (rng_normal(&rg) + rng_normal(&ro));
			nz[c] = j ? keep * nz[c] + fresh * e : e;
		}
		/* Every query finds the sinks: none of its noise along them. */
		orthogonalize(nz, hm->sink, d);
		for (unsigned c = 0; c < d; c++)
			x[c] = hm->qmean[c] + nz[c];
		/* A query aimed at a needle looks mostly for it: half the topic pull. */
		float pull = g->beta * qm * (needle[j] >= 0 ? 0.5f : 1.0f);
		for (unsigned s = 0; s < S; s++)
			x[g->band[s]] += pull * tau[s];
		rope_apply(g, &rp, x);
		if (needle[j] >= 0) {
			/* Aim at the needle's own post-RoPE key less the mean all
			 * keys share, scaled so that its logit rises by exactly
			 * --needle-score, wherever it sits. */
			uint32_t t = g->needle_pos[needle[j]];
			key_pre(g, l, h, t, &ec, kc);
			memcpy(x2, kc, d * sizeof(float));
			for (unsigned c = 0; c < d; c++)
				kc[c] -= hm->mu[c];
			/* ... and leave the sinks' score alone. */
			orthogonalize(kc, hm->sink, d);
			double dot = 0, nn = 0;
			for (unsigned c = 0; c < d; c++) {
				dot += (double)kc[c] * x2[c];
				nn += (double)kc[c] * kc[c];
			}
			rope_at(g, &rk, g->o.first_position + t);
			rope_apply(g, &rk, kc);
			float step = (float)(g->o.needle_score * sqrt((double)d) / (dot > 0.25 * nn ? dot : nn));
			for (unsigned c = 0; c < d; c++)
				x[c] += step * kc[c];
		}
		store(g->o.dtype, out, (size_t)j * d, x, d);
	}
}

/* ------------------------------------------------- sequence-wide structure */

/* A topic by popularity (log-normal weights: some topics are frequent). */
static int32_t pick_topic(const struct gen *g, const double *cum, struct rng *r)
{
	double u = rng_unit(r) * cum[g->K - 1];
	unsigned lo = 0, hi = g->K - 1;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (cum[mid] > u)
			hi = mid;
		else
			lo = mid + 1;
	}
	return (int32_t)lo;
}

/* Zipf-like rank in [0, n): log-uniform, so rank r has weight ~1/(r+1). */
static uint32_t zipf(struct rng *r, uint32_t n)
{
	double x = exp(rng_unit(r) * log((double)n + 1.0)) - 1.0;
	uint32_t v = (uint32_t)x;
	return v < n ? v : n - 1;
}

static int build_structure(struct gen *g)
{
	const struct opts *o = &g->o;
	uint32_t N = o->tokens;
	double *cum = NULL;
	int rc = -ENOMEM;

	g->topic_of = malloc((size_t)N * sizeof(int32_t));
	g->ep_of = malloc((size_t)N * sizeof(int32_t));
	g->sal = malloc((size_t)N * sizeof(float));
	g->surprise = malloc((size_t)N * sizeof(float));
	g->tokens = malloc((size_t)N * sizeof(int32_t));
	size_t cap = (size_t)N / o->episode_min + 2;
	g->ep_start = malloc(cap * sizeof(uint32_t));
	g->ep_topic = malloc(cap * sizeof(int32_t));
	g->needle_pos = calloc(o->needles + 1, sizeof(uint32_t));
	g->dec_topic = calloc((size_t)o->decode + 1, sizeof(int32_t));
	g->dec_needle = calloc((size_t)o->decode + 1, sizeof(int32_t));
	g->pre_topic = calloc((size_t)o->prefill + 1, sizeof(int32_t));
	g->pre_needle = calloc((size_t)o->prefill + 1, sizeof(int32_t));
	g->qmult = calloc((size_t)o->layers * g->Hq, sizeof(float));
	cum = malloc(g->K * sizeof(double));
	if (!g->topic_of || !g->ep_of || !g->sal || !g->surprise || !g->tokens || !g->ep_start ||
	    !g->ep_topic || !g->needle_pos || !g->dec_topic || !g->dec_needle || !g->pre_topic ||
	    !g->pre_needle || !g->qmult || !cum)
		goto out;

	struct rng r = stream(o->seed, TAG_SCHEDULE, 0, 0, 0);
	double acc = 0;
	for (unsigned k = 0; k < g->K; k++)
		cum[k] = acc += exp(0.5 * rng_normal(&r));

	/* Episodes: log-uniform lengths; a new topic each time, sometimes one
	 * seen a few episodes ago (a conversation coming back to a subject). */
	for (uint32_t t = 0; t < o->sinks && t < N; t++)
		g->topic_of[t] = g->ep_of[t] = -1;
	double lmin = log((double)o->episode_min), lmax = log((double)o->episode_max + 1.0);
	for (uint32_t t = o->sinks; t < N;) {
		uint32_t len = (uint32_t)exp(lmin + (lmax - lmin) * rng_unit(&r));
		if (len < o->episode_min)
			len = o->episode_min;
		if (len > o->episode_max)
			len = o->episode_max;
		if (len > N - t)
			len = N - t;
		int32_t prev = g->n_ep ? g->ep_topic[g->n_ep - 1] : -1, c = prev;
		for (int tries = 0; tries < 8 && (c == prev || c < 0); tries++) {
			if (g->n_ep > 1 && rng_unit(&r) < o->topic_revisit) {
				size_t back = 1 + (size_t)(rng_next(&r) % (g->n_ep < 8 ? g->n_ep : 8));
				c = g->ep_topic[g->n_ep - back];
			} else {
				c = pick_topic(g, cum, &r);
			}
			if (g->K == 1)
				break;
		}
		if (c < 0)
			c = 0;
		g->ep_start[g->n_ep] = t;
		g->ep_topic[g->n_ep] = c;
		for (uint32_t i = t; i < t + len; i++) {
			g->topic_of[i] = c;
			g->ep_of[i] = (int32_t)g->n_ep;
		}
		g->n_ep++;
		t += len;
	}
	for (uint32_t t = 0; t < N; t++)
		g->sal[t] = rng_normal(&r);

	/* Needles: one per slot of the first 90% of the context. */
	uint32_t lo = o->sinks, hi = (uint32_t)((double)N * 0.9);
	for (unsigned m = 0; m < o->needles; m++)
		g->needle_pos[m] = lo + (uint32_t)((double)(hi - lo) * (m + 0.1 + 0.8 * rng_unit(&r)) / o->needles);

	/* Decode: start on the topic of the last episode (decoding continues
	 * the text), switch now and then, mostly back to recent topics. */
	int32_t cur = g->topic_of[N - 1] >= 0 ? g->topic_of[N - 1] : pick_topic(g, cum, &r);
	for (uint32_t j = 0; j < o->decode; j++) {
		if (j && rng_unit(&r) < o->topic_switch) {
			int32_t c = cur;
			for (int tries = 0; tries < 8 && c == cur && g->K > 1; tries++) {
				if (g->n_ep && rng_unit(&r) < 0.5) {
					size_t back = 1 + (size_t)(rng_next(&r) % (g->n_ep < 16 ? g->n_ep : 16));
					c = g->ep_topic[g->n_ep - back];
				} else {
					c = pick_topic(g, cum, &r);
				}
			}
			cur = c;
		}
		g->dec_topic[j] = cur;
		g->dec_needle[j] = o->needles && rng_unit(&r) < o->needle_prob
			? (int32_t)(rng_next(&r) % o->needles) : -1;
	}
	/* Prefill: a query mostly looks at its own episode's topic, otherwise
	 * at a slowly changing other one; the last 64 ("the question") may aim
	 * at a needle. */
	int32_t other = pick_topic(g, cum, &r);
	for (uint32_t i = 0; i < o->prefill; i++) {
		uint32_t t = N - o->prefill + i;
		if (rng_unit(&r) < o->topic_switch)
			other = pick_topic(g, cum, &r);
		g->pre_topic[i] = g->topic_of[t] >= 0 && rng_unit(&r) < 0.6 ? g->topic_of[t] : other;
		g->pre_needle[i] = o->needles && i + 64 >= o->prefill && rng_unit(&r) < o->needle_prob
			? (int32_t)(rng_next(&r) % o->needles) : -1;
	}

	struct rng rq = stream(o->seed, TAG_QHEAD, 0, 0, 0);
	for (size_t i = 0; i < (size_t)o->layers * g->Hq; i++) {
		float m = 1.0f + 0.15f * rng_normal(&rq);
		g->qmult[i] = m < 0.6f ? 0.6f : m > 1.4f ? 1.4f : m;
	}

	/* Tokens and surprise: function words are common and unsurprising,
	 * topic words come from the topic's own vocabulary; an episode starts
	 * with a surprise spike, and rare words spike at random. */
	struct rng rt = stream(o->seed, TAG_TOKEN, 0, 0, 0);
	uint32_t F = o->vocab / 4 < 512 ? o->vocab / 4 : 512;
	uint32_t base = 2 + F, span = o->vocab - base;
	size_t e = 0;
	for (uint32_t t = 0; t < N; t++) {
		float s;
		if (t == 0) {
			g->tokens[t] = 1;       /* BOS */
			s = 0.0f;
		} else if (t < o->sinks || rng_unit(&rt) < 0.35) {
			g->tokens[t] = (int32_t)(2 + zipf(&rt, F));
			s = 0.5f + 0.4f * fabsf(rng_normal(&rt));
		} else {
			uint64_t w = zipf(&rt, 256);
			uint64_t id = mix64(o->seed ^ ((uint64_t)g->topic_of[t] << 20 ^ w)) % span;
			g->tokens[t] = (int32_t)(base + id);
			s = 2.0f + 0.6f * rng_normal(&rt);
		}
		while (e < g->n_ep && g->ep_start[e] < t)
			e++;
		if (e < g->n_ep && g->ep_start[e] == t)
			s += (float)o->surprise_spike * (0.75f + 0.5f * (float)rng_unit(&rt));
		else if (e > 0 && g->ep_start[e - 1] + 1 == t)
			s += 0.3f * (float)o->surprise_spike;
		else if (t && rng_unit(&rt) < 0.002)
			s += (float)o->surprise_spike * (0.5f + 0.3f * (float)rng_unit(&rt));
		g->surprise[t] = s < 0.01f ? 0.01f : s;
	}
	rc = 0;
out:
	free(cum);
	return rc;
}

static void free_structure(struct gen *g)
{
	free(g->topic_of);
	free(g->ep_of);
	free(g->sal);
	free(g->surprise);
	free(g->tokens);
	free(g->ep_start);
	free(g->ep_topic);
	free(g->needle_pos);
	free(g->dec_topic);
	free(g->dec_needle);
	free(g->pre_topic);
	free(g->pre_needle);
	free(g->qmult);
	free(g->band);
	free(g->freq);
	free(g->cos1);
	free(g->sin1);
}

/* -------------------------------------------------------- jobs and threads */

enum job_kind { J_KEYS, J_VALUES, J_QPREFILL, J_QDECODE };

struct job {
	enum job_kind kind;
	unsigned l, h;
	uint32_t t0, t1;        /* tokens (K/V) or queries */
};

struct worker {
	const struct gen *g;
	const struct job *job;
	void *buf;
	size_t len;
	pthread_t th;
	int started;
};

static size_t elem_size(enum out_dtype t)
{
	return t == OUT_F32 ? 4 : 2;
}

static void run_job(const struct gen *g, const struct job *j, void *buf)
{
	switch (j->kind) {
	case J_KEYS:
		gen_keys(g, j->l, j->h, j->t0, j->t1, buf);
		break;
	case J_VALUES:
		gen_values(g, j->l, j->h, j->t0, j->t1, buf);
		break;
	case J_QPREFILL:
		gen_queries(g, 0, j->l, j->h, buf);
		break;
	case J_QDECODE:
		gen_queries(g, 1, j->l, j->h, buf);
		break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	run_job(w->g, w->job, w->buf);
	return NULL;
}

/* Jobs in file order: k, v by (layer, head, chunk); then one job per query
 * head for q_prefill and q_decode. */
static struct job *make_jobs(const struct gen *g, size_t *njobs)
{
	const struct opts *o = &g->o;
	size_t chunks = (o->tokens + CHUNK_TOKENS - 1) / CHUNK_TOKENS;
	size_t n = 2 * (size_t)o->layers * o->kv_heads * chunks + 2 * (size_t)o->layers * g->Hq;
	struct job *jobs = calloc(n, sizeof(*jobs)), *j = jobs;

	if (!jobs)
		return NULL;
	for (int kind = J_KEYS; kind <= J_VALUES; kind++)
		for (unsigned l = 0; l < o->layers; l++)
			for (unsigned h = 0; h < o->kv_heads; h++)
				for (uint32_t t = 0; t < o->tokens; t += CHUNK_TOKENS)
					*j++ = (struct job){ (enum job_kind)kind, l, h, t,
						t + (o->tokens - t < CHUNK_TOKENS ? o->tokens - t : CHUNK_TOKENS) };
	for (int kind = J_QPREFILL; kind <= J_QDECODE; kind++) {
		uint32_t nq = kind == J_QPREFILL ? o->prefill : o->decode;
		if (!nq)
			continue;
		for (unsigned l = 0; l < o->layers; l++)
			for (unsigned h = 0; h < g->Hq; h++)
				*j++ = (struct job){ (enum job_kind)kind, l, h, 0, nq };
	}
	*njobs = (size_t)(j - jobs);
	return jobs;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct progress {
	int on;
	double t0, last;
	uint64_t total;
	uint32_t tokens;
};

static void progress_show(struct progress *p, uint64_t done, const char *what, int final)
{
	double t = now_s();
	if (!p->on || (!final && t - p->last < 0.5))
		return;
	p->last = t;
	double el = t - p->t0, frac = p->total ? (double)done / p->total : 1.0;
	double tok_s = el > 0 ? frac * p->tokens / el : 0;
	double eta = frac > 0 ? el * (1.0 - frac) / frac : 0;
	fprintf(stderr, "\rmnemo-kvgen: %-9s %5.1f%%  %9.0f tokens/s  %7.1f MiB/s  ETA %d:%02d  ",
		what, 100.0 * frac, tok_s, el > 0 ? (double)done / el / 1048576.0 : 0.0,
		(int)eta / 60, (int)eta % 60);
	if (final)
		fputc('\n', stderr);
}

static const char *kind_name(enum job_kind k)
{
	static const char *const names[] = { "k", "v", "q_prefill", "q_decode" };
	return names[k];
}

/*
 * Generate all jobs and write them in order. Rounds of one job per thread;
 * while round r computes, the main thread writes round r-1, so the disk
 * and the cores work at the same time.
 */
static int run_all(const struct gen *g, struct st_writer *w, struct progress *pg)
{
	size_t njobs = 0, maxlen = 0;
	struct job *jobs = make_jobs(g, &njobs);
	unsigned T = g->o.threads;
	struct worker *wk = NULL;
	void *bufs = NULL;
	int rc = -ENOMEM;

	if (!jobs)
		goto out;
	for (size_t i = 0; i < njobs; i++) {
		size_t len = (size_t)(jobs[i].t1 - jobs[i].t0) * g->d * elem_size(g->o.dtype);
		if (len > maxlen)
			maxlen = len;
	}
	wk = calloc(2 * (size_t)T, sizeof(*wk));
	bufs = malloc(2 * (size_t)T * (maxlen ? maxlen : 1));
	if (!wk || !bufs)
		goto out;
	for (size_t i = 0; i < 2 * (size_t)T; i++) {
		wk[i].g = g;
		wk[i].buf = (char *)bufs + i * maxlen;
	}

	size_t next = 0, prev_n = 0;
	unsigned cur = 0;
	rc = 0;
	while (rc == 0 && (next < njobs || prev_n)) {
		struct worker *set = &wk[(size_t)cur * T], *prev = &wk[(size_t)(cur ^ 1) * T];
		size_t n = njobs - next < T ? njobs - next : T;
		for (size_t i = 0; i < n; i++) {
			set[i].job = &jobs[next + i];
			set[i].len = (size_t)(jobs[next + i].t1 - jobs[next + i].t0) * g->d *
				     elem_size(g->o.dtype);
			/* With one thread (or if a thread cannot start) the job
			 * runs here; the output is the same either way. */
			set[i].started = T > 1 && pthread_create(&set[i].th, NULL, worker_main, &set[i]) == 0;
		}
		for (size_t i = 0; i < prev_n && rc == 0; i++) {
			rc = st_writer_write(w, prev[i].buf, prev[i].len);
			progress_show(pg, st_writer_written(w), kind_name(prev[i].job->kind), 0);
		}
		for (size_t i = 0; i < n; i++) {
			if (set[i].started)
				pthread_join(set[i].th, NULL);
			else
				run_job(g, set[i].job, set[i].buf);
		}
		if (interrupted && rc == 0)
			rc = -EINTR;
		prev_n = n;
		next += n;
		cur ^= 1;
	}
out:
	free(jobs);
	free(wk);
	free(bufs);
	return rc;
}

/* ------------------------------------------------------------------- main */

static int parse_u64(const char *name, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 0);
	if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
		fprintf(stderr, "mnemo-kvgen: --%s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got \"%s\"\n",
			name, min, max, arg);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_f64(const char *name, const char *arg, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(arg, &end);
	if (errno || end == arg || *end || !(v >= min && v <= max)) {
		fprintf(stderr, "mnemo-kvgen: --%s: expected a number in [%g, %g], got \"%s\"\n",
			name, min, max, arg);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

enum {
	OPT_DTYPE = 256, OPT_SEED, OPT_THREADS, OPT_PROGRESS, OPT_LAYERS, OPT_KV_HEADS, OPT_GROUP,
	OPT_Q_HEADS, OPT_HEAD_DIM, OPT_PREFILL, OPT_DECODE, OPT_ROPE_THETA, OPT_FIRST_POS,
	OPT_VOCAB, OPT_SINKS, OPT_SINK_SCORE, OPT_TOPICS, OPT_EP_MIN, OPT_EP_MAX, OPT_REVISIT,
	OPT_TOPIC_SCORE, OPT_TOPIC_STRENGTH, OPT_SALIENCE, OPT_EP_SPREAD, OPT_SEM_DIMS,
	OPT_KEY_MEAN, OPT_OUTLIERS, OPT_OUTLIER_SCALE, OPT_CH_SPREAD, OPT_POS_CODE, OPT_RECENCY,
	OPT_Q_SHIFT, OPT_Q_NOISE, OPT_NEEDLES, OPT_NEEDLE_PROB, OPT_NEEDLE_SCORE, OPT_DRIFT,
	OPT_TOPIC_SWITCH, OPT_TOPIC_INERTIA, OPT_SPIKE,
};

static const struct option long_opts[] = {
	{ "output", required_argument, NULL, 'o' },
	{ "dtype", required_argument, NULL, OPT_DTYPE },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "progress", no_argument, NULL, OPT_PROGRESS },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "tokens", required_argument, NULL, 'n' },
	{ "layers", required_argument, NULL, OPT_LAYERS },
	{ "kv-heads", required_argument, NULL, OPT_KV_HEADS },
	{ "group", required_argument, NULL, OPT_GROUP },
	{ "q-heads", required_argument, NULL, OPT_Q_HEADS },
	{ "head-dim", required_argument, NULL, OPT_HEAD_DIM },
	{ "prefill-queries", required_argument, NULL, OPT_PREFILL },
	{ "decode-queries", required_argument, NULL, OPT_DECODE },
	{ "rope-theta", required_argument, NULL, OPT_ROPE_THETA },
	{ "first-position", required_argument, NULL, OPT_FIRST_POS },
	{ "vocab", required_argument, NULL, OPT_VOCAB },
	{ "sinks", required_argument, NULL, OPT_SINKS },
	{ "sink-score", required_argument, NULL, OPT_SINK_SCORE },
	{ "topics", required_argument, NULL, OPT_TOPICS },
	{ "episode-min", required_argument, NULL, OPT_EP_MIN },
	{ "episode-max", required_argument, NULL, OPT_EP_MAX },
	{ "topic-revisit", required_argument, NULL, OPT_REVISIT },
	{ "topic-score", required_argument, NULL, OPT_TOPIC_SCORE },
	{ "topic-strength", required_argument, NULL, OPT_TOPIC_STRENGTH },
	{ "salience", required_argument, NULL, OPT_SALIENCE },
	{ "episode-spread", required_argument, NULL, OPT_EP_SPREAD },
	{ "semantic-dims", required_argument, NULL, OPT_SEM_DIMS },
	{ "key-mean", required_argument, NULL, OPT_KEY_MEAN },
	{ "outliers", required_argument, NULL, OPT_OUTLIERS },
	{ "outlier-scale", required_argument, NULL, OPT_OUTLIER_SCALE },
	{ "channel-spread", required_argument, NULL, OPT_CH_SPREAD },
	{ "position-code", required_argument, NULL, OPT_POS_CODE },
	{ "recency", required_argument, NULL, OPT_RECENCY },
	{ "query-shift", required_argument, NULL, OPT_Q_SHIFT },
	{ "query-noise", required_argument, NULL, OPT_Q_NOISE },
	{ "needles", required_argument, NULL, OPT_NEEDLES },
	{ "needle-prob", required_argument, NULL, OPT_NEEDLE_PROB },
	{ "needle-score", required_argument, NULL, OPT_NEEDLE_SCORE },
	{ "drift", required_argument, NULL, OPT_DRIFT },
	{ "topic-switch", required_argument, NULL, OPT_TOPIC_SWITCH },
	{ "topic-inertia", required_argument, NULL, OPT_TOPIC_INERTIA },
	{ "surprise-spike", required_argument, NULL, OPT_SPIKE },
	{ NULL, 0, NULL, 0 },
};

/* Parse argv into *o; 0, or 2 for bad usage, or -1 after --help. */
static int parse_args(int argc, char **argv, struct opts *o)
{
	uint64_t u, q_heads = 0;
	int c, bad = 0;

	*o = defaults;
	while ((c = getopt_long(argc, argv, "o:n:qh", long_opts, NULL)) != -1) {
		int rc = 0;
		switch (c) {
		case 'o': o->output = optarg; break;
		case 'q': o->quiet = 1; break;
		case 'h': usage(stdout); return -1;
		case OPT_PROGRESS: o->progress = 1; break;
		case OPT_DTYPE:
			if (strcmp(optarg, "bf16") == 0)
				o->dtype = OUT_BF16;
			else if (strcmp(optarg, "f16") == 0)
				o->dtype = OUT_F16;
			else if (strcmp(optarg, "f32") == 0)
				o->dtype = OUT_F32;
			else {
				fprintf(stderr, "mnemo-kvgen: --dtype: bf16, f16 or f32, not \"%s\"\n", optarg);
				rc = -EINVAL;
			}
			break;
#define U(opt, name, lo, hi, field) \
		case opt: if ((rc = parse_u64(name, optarg, lo, hi, &u)) == 0) o->field = (__typeof__(o->field))u; break
#define F(opt, name, lo, hi, field) \
		case opt: rc = parse_f64(name, optarg, lo, hi, &o->field); break
		U(OPT_SEED, "seed", 0, UINT64_MAX, seed);
		U(OPT_THREADS, "threads", 1, MAX_THREADS, threads);
		U('n', "tokens", 1, INT32_MAX, tokens);
		U(OPT_LAYERS, "layers", 1, 1024, layers);
		U(OPT_KV_HEADS, "kv-heads", 1, 1024, kv_heads);
		U(OPT_GROUP, "group", 1, 64, group);
		case OPT_Q_HEADS: rc = parse_u64("q-heads", optarg, 1, 65536, &q_heads); break;
		U(OPT_HEAD_DIM, "head-dim", 16, MAX_HEAD_DIM, head_dim);
		U(OPT_PREFILL, "prefill-queries", 0, INT32_MAX, prefill);
		U(OPT_DECODE, "decode-queries", 0, 1u << 20, decode);
		F(OPT_ROPE_THETA, "rope-theta", 2.0, 1e12, rope_theta);
		U(OPT_FIRST_POS, "first-position", 0, UINT64_C(1) << 40, first_position);
		U(OPT_VOCAB, "vocab", 1024, INT32_MAX, vocab);
		U(OPT_SINKS, "sinks", 0, 4096, sinks);
		F(OPT_SINK_SCORE, "sink-score", -50, 50, sink_score);
		U(OPT_TOPICS, "topics", 1, 65536, topics);
		U(OPT_EP_MIN, "episode-min", 1, 1u << 20, episode_min);
		U(OPT_EP_MAX, "episode-max", 1, 1u << 20, episode_max);
		F(OPT_REVISIT, "topic-revisit", 0, 1, topic_revisit);
		F(OPT_TOPIC_SCORE, "topic-score", 0, 50, topic_score);
		F(OPT_TOPIC_STRENGTH, "topic-strength", 0.01, 100, topic_strength);
		F(OPT_SALIENCE, "salience", 0, 20, salience);
		F(OPT_EP_SPREAD, "episode-spread", 0, 10, episode_spread);
		U(OPT_SEM_DIMS, "semantic-dims", 2, MAX_HEAD_DIM, semantic_dims);
		F(OPT_KEY_MEAN, "key-mean", 0, 100, key_mean);
		U(OPT_OUTLIERS, "outliers", 0, MAX_HEAD_DIM, outliers);
		F(OPT_OUTLIER_SCALE, "outlier-scale", 0, 1000, outlier_scale);
		F(OPT_CH_SPREAD, "channel-spread", 0, 3, channel_spread);
		F(OPT_POS_CODE, "position-code", 0, 100, position_code);
		F(OPT_RECENCY, "recency", 0, 50, recency);
		F(OPT_Q_SHIFT, "query-shift", 0, 100, query_shift);
		F(OPT_Q_NOISE, "query-noise", 0, 20, query_noise);
		U(OPT_NEEDLES, "needles", 0, 4096, needles);
		F(OPT_NEEDLE_PROB, "needle-prob", 0, 1, needle_prob);
		F(OPT_NEEDLE_SCORE, "needle-score", 0, 50, needle_score);
		F(OPT_DRIFT, "drift", 0, 0.999, drift);
		F(OPT_TOPIC_SWITCH, "topic-switch", 0, 1, topic_switch);
		F(OPT_TOPIC_INERTIA, "topic-inertia", 0, 0.999, topic_inertia);
		F(OPT_SPIKE, "surprise-spike", 0, 100, surprise_spike);
#undef U
#undef F
		default:
			return 2;
		}
		if (rc < 0)
			bad = 1;
	}
	if (bad)
		return 2;
	if (optind < argc) {
		fprintf(stderr, "mnemo-kvgen: unexpected argument \"%s\" (see --help)\n", argv[optind]);
		return 2;
	}
	if (!o->output) {
		fprintf(stderr, "mnemo-kvgen: no output file (-o FILE; see --help)\n");
		return 2;
	}
	if (q_heads) {
		if (q_heads % o->kv_heads || q_heads / o->kv_heads > 64) {
			fprintf(stderr, "mnemo-kvgen: --q-heads %" PRIu64 " must be a multiple of --kv-heads %u, at most 64 times it\n",
				q_heads, o->kv_heads);
			return 2;
		}
		o->group = (unsigned)(q_heads / o->kv_heads);
	}
	const char *why = NULL;
	unsigned d = o->head_dim, S = o->semantic_dims ? o->semantic_dims : d / 4;
	if (d % 2)
		why = "--head-dim must be even";
	else if (S % 2 || S / 2 + RESERVED_PAIRS >= d / 2)
		why = "--semantic-dims must be even and leave at least one fast pair beside the 4 reserved";
	else if (o->prefill > o->tokens)
		why = "--prefill-queries cannot exceed --tokens";
	else if (o->episode_min > o->episode_max)
		why = "--episode-min exceeds --episode-max";
	else if (o->sinks >= o->tokens)
		why = "--sinks must leave tokens after them";
	else if (o->needles && (uint64_t)o->needles * 10 > (uint64_t)o->tokens * 9 / 10 - o->sinks)
		why = "too many --needles for the context (10 tokens of room each)";
	if (why) {
		fprintf(stderr, "mnemo-kvgen: %s\n", why);
		return 2;
	}
	o->semantic_dims = S;
	if (!o->threads) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		o->threads = n < 1 ? 1 : n > (long)MAX_THREADS ? MAX_THREADS : (unsigned)n;
	}
	if (o->quiet)
		o->progress = 0;
	else if (o->progress < 0)
		o->progress = isatty(STDERR_FILENO);
	return 0;
}

/* A growing string for long metadata values (boundaries of 1M tokens). */
struct sbuf {
	char *s;
	size_t len, cap;
	int oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		size_t room = b->cap - b->len;
		va_start(ap, fmt);
		int n = b->oom ? 0 : vsnprintf(b->s ? b->s + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (b->oom || n < 0)
			return;
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap + (size_t)n + 1) * 2;
		char *p = realloc(b->s, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
}

/* One metadata entry from a format; long values grow the buffer. */
static int meta_printf(struct st_writer *w, struct sbuf *b, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int meta_printf(struct st_writer *w, struct sbuf *b, const char *key, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	b->len = 0;
	sb_printf(b, "%s", s);
	free(s);
	return b->oom ? -ENOMEM : st_writer_meta(w, key, b->s);
}

/* A comma-separated list of n integers; idx maps i to the value. */
static int meta_list(struct st_writer *w, struct sbuf *b, const char *key, size_t n,
		     int64_t (*idx)(const struct gen *, size_t), const struct gen *g)
{
	b->len = 0;
	sb_printf(b, "%s", "");
	for (size_t i = 0; i < n; i++)
		sb_printf(b, "%s%" PRId64, i ? "," : "", idx(g, i));
	return b->oom ? -ENOMEM : st_writer_meta(w, key, b->s);
}

static int64_t ep_start_at(const struct gen *g, size_t i)
{
	return g->ep_start[i];
}

static int64_t needle_pos_at(const struct gen *g, size_t i)
{
	return g->needle_pos[i];
}

static int64_t dec_needle_at(const struct gen *g, size_t i)
{
	return g->dec_needle[i] >= 0 ? (int64_t)g->needle_pos[g->dec_needle[i]] : -1;
}

static int64_t dec_topic_at(const struct gen *g, size_t i)
{
	return g->dec_topic[i];
}

static int add_meta(const struct gen *g, struct st_writer *w)
{
	const struct opts *o = &g->o;
	const char *dt = o->dtype == OUT_BF16 ? "bf16" : o->dtype == OUT_F16 ? "f16" : "f32";
	struct sbuf b = { 0 };
	int rc;

	if ((rc = meta_printf(w, &b, "rope_theta", "%.17g", o->rope_theta)) < 0 ||
	    (rc = meta_printf(w, &b, "first_position", "%" PRIu64, o->first_position)) < 0 ||
	    (rc = meta_printf(w, &b, "rope_style", "neox")) < 0 ||
	    (rc = meta_printf(w, &b, "generator", "mnemo-kvgen %s", MNEMO_VERSION)) < 0 ||
	    (rc = meta_printf(w, &b, "seed", "%" PRIu64, o->seed)) < 0 ||
	    (rc = meta_printf(w, &b, "sinks", "%u", o->sinks)) < 0 ||
	    (rc = meta_printf(w, &b, "topics", "%u", o->topics)) < 0 ||
	    (rc = meta_list(w, &b, "episode_boundaries", g->n_ep, ep_start_at, g)) < 0 ||
	    (rc = meta_list(w, &b, "needle_positions", o->needles, needle_pos_at, g)) < 0 ||
	    (rc = meta_list(w, &b, "decode_needles", o->decode, dec_needle_at, g)) < 0 ||
	    (rc = meta_list(w, &b, "decode_topics", o->decode, dec_topic_at, g)) < 0)
		goto out;
	/* Every option that shapes the bytes, so that a trace can be
	 * regenerated; the output path does not, and is left out. */
	rc = meta_printf(w, &b, "kvgen_options",
		"--dtype %s --seed %" PRIu64 " --tokens %u --layers %u --kv-heads %u --group %u "
		"--head-dim %u --prefill-queries %u --decode-queries %u --rope-theta %.17g "
		"--first-position %" PRIu64 " --vocab %u --sinks %u --sink-score %.17g --topics %u "
		"--episode-min %u --episode-max %u --topic-revisit %.17g --topic-score %.17g "
		"--topic-strength %.17g --salience %.17g --episode-spread %.17g --semantic-dims %u "
		"--key-mean %.17g --outliers %u --outlier-scale %.17g --channel-spread %.17g "
		"--position-code %.17g --recency %.17g --query-shift %.17g --query-noise %.17g "
		"--needles %u --needle-prob %.17g --needle-score %.17g --drift %.17g "
		"--topic-switch %.17g --topic-inertia %.17g --surprise-spike %.17g",
		dt, o->seed, o->tokens, o->layers, o->kv_heads, o->group, o->head_dim, o->prefill,
		o->decode, o->rope_theta, o->first_position, o->vocab, o->sinks, o->sink_score,
		o->topics, o->episode_min, o->episode_max, o->topic_revisit, o->topic_score,
		o->topic_strength, o->salience, o->episode_spread, o->semantic_dims, o->key_mean,
		o->outliers, o->outlier_scale, o->channel_spread, o->position_code, o->recency,
		o->query_shift, o->query_noise, o->needles, o->needle_prob, o->needle_score,
		o->drift, o->topic_switch, o->topic_inertia, o->surprise_spike);
out:
	free(b.s);
	return rc;
}

static void human(char *buf, size_t n, double bytes)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;
	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", bytes, unit[u]);
}

static int init_gen(struct gen *g)
{
	const struct opts *o = &g->o;
	unsigned d = o->head_dim;
	float sq = sqrtf((float)d);
	int rc;

	g->d = d;
	g->half = d / 2;
	g->S = o->semantic_dims;
	g->Hq = o->kv_heads * o->group;
	g->K = o->topics;
	g->freq = malloc(g->half * sizeof(double));
	g->cos1 = malloc(g->half * sizeof(double));
	g->sin1 = malloc(g->half * sizeof(double));
	g->band = malloc(g->S * sizeof(unsigned));
	if (!g->freq || !g->cos1 || !g->sin1 || !g->band)
		return -ENOMEM;
	for (unsigned i = 0; i < g->half; i++) {
		g->freq[i] = pow(o->rope_theta, -2.0 * i / d);
		g->cos1[i] = cos(g->freq[i]);
		g->sin1[i] = sin(g->freq[i]);
	}
	unsigned first = g->half - RESERVED_PAIRS - g->S / 2;
	for (unsigned s = 0; s < g->S / 2; s++) {
		g->band[s] = first + s;
		g->band[s + g->S / 2] = first + s + g->half;
	}
	g->alpha = (float)o->topic_strength * sq;
	g->beta = (float)(o->topic_score / o->topic_strength);
	g->sink_key = 3.0f * sq;
	g->q_sink = (float)o->sink_score * sq / g->sink_key;
	g->needle_key = 1.5f * sq;
	g->sal_scale = o->topic_score > 0 ? (float)(o->salience / o->topic_score) : 0.0f;

	rc = build_structure(g);
	if (rc < 0)
		return rc;
	g->heads = calloc((size_t)o->layers * o->kv_heads, sizeof(*g->heads));
	if (!g->heads)
		return -ENOMEM;
	for (unsigned l = 0; l < o->layers; l++)
		for (unsigned h = 0; h < o->kv_heads; h++)
			if ((rc = build_head(g, l, h)) < 0)
				return rc;
	return 0;
}

int main(int argc, char **argv)
{
	struct gen g;
	struct st_writer *w = NULL;
	char err[512];
	int rc, status = 1;

	memset(&g, 0, sizeof(g));
	rc = parse_args(argc, argv, &g.o);
	if (rc)
		return rc < 0 ? 0 : rc;
	const struct opts *o = &g.o;
	uint64_t pos_max = o->first_position + o->tokens + o->decode;
	if (pos_max > (UINT64_C(1) << 41)) {
		fprintf(stderr, "mnemo-kvgen: positions up to %" PRIu64 " are too large\n", pos_max);
		return 2;
	}

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	double t_start = now_s();
	norm_init();
	rc = init_gen(&g);
	if (rc < 0) {
		fprintf(stderr, "mnemo-kvgen: %s\n", strerror(-rc));
		goto out;
	}

	rc = st_writer_create(o->output, &w, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "mnemo-kvgen: %s\n", err);
		goto out;
	}
	enum st_dtype dt = o->dtype == OUT_BF16 ? ST_BF16 : o->dtype == OUT_F16 ? ST_F16 : ST_F32;
	uint64_t kv_shape[4] = { o->layers, o->kv_heads, o->tokens, o->head_dim };
	uint64_t qp_shape[4] = { o->layers, g.Hq, o->prefill, o->head_dim };
	uint64_t qd_shape[4] = { o->layers, g.Hq, o->decode, o->head_dim };
	uint64_t n_shape[1] = { o->tokens };
	if ((rc = add_meta(&g, w)) < 0 ||
	    (rc = st_writer_tensor(w, "k", dt, 4, kv_shape)) < 0 ||
	    (rc = st_writer_tensor(w, "v", dt, 4, kv_shape)) < 0 ||
	    (o->prefill && (rc = st_writer_tensor(w, "q_prefill", dt, 4, qp_shape)) < 0) ||
	    (o->decode && (rc = st_writer_tensor(w, "q_decode", dt, 4, qd_shape)) < 0) ||
	    (rc = st_writer_tensor(w, "surprise", ST_F32, 1, n_shape)) < 0 ||
	    (rc = st_writer_tensor(w, "tokens", ST_I32, 1, n_shape)) < 0 ||
	    (rc = st_writer_begin(w)) < 0) {
		fprintf(stderr, "mnemo-kvgen: %s\n", rc == -ENOMEM && !*st_writer_error(w)
			? strerror(ENOMEM) : st_writer_error(w));
		goto out;
	}

	struct progress pg = { .on = o->progress, .t0 = now_s(), .total = st_writer_total(w),
			       .tokens = o->tokens };
	rc = run_all(&g, w, &pg);
	/* Both are little-endian on every machine mnemo runs on. */
	if (rc == 0)
		rc = st_writer_write(w, g.surprise, (size_t)o->tokens * sizeof(float));
	if (rc == 0)
		rc = st_writer_write(w, g.tokens, (size_t)o->tokens * sizeof(int32_t));
	if (rc < 0) {
		if (pg.on)
			fputc('\n', stderr);
		fprintf(stderr, "mnemo-kvgen: %s\n", rc == -EINTR ? "interrupted; nothing written"
			: *st_writer_error(w) ? st_writer_error(w) : strerror(-rc));
		goto out;
	}
	progress_show(&pg, st_writer_written(w), "done", 1);
	double t_gen = now_s();
	rc = st_writer_commit(w);
	if (rc < 0) {
		fprintf(stderr, "mnemo-kvgen: %s\n", st_writer_error(w));
		goto out;
	}
	double t_end = now_s(), el = t_end - t_start;

	if (!o->quiet) {
		char a[32], b[32];
		human(a, sizeof(a), (double)st_writer_file_size(w));
		printf("mnemo-kvgen: wrote %s: %s in %.1f s (%.0f tokens/s, %.1f MiB/s; "
		       "generate+write %.1f s, fsync+rename %.1f s, %u threads)\n",
		       o->output, a, el, o->tokens / el, st_writer_file_size(w) / el / 1048576.0,
		       t_gen - t_start, t_end - t_gen, o->threads);
		const char *dn = st_dtype_name(dt);
		human(a, sizeof(a), (double)kv_shape[0] * kv_shape[1] * kv_shape[2] * kv_shape[3] * elem_size(o->dtype));
		printf("  k, v       %-4s [%u, %u, %u, %u]  %s each\n", dn, o->layers, o->kv_heads,
		       o->tokens, o->head_dim, a);
		if (o->prefill) {
			human(a, sizeof(a), (double)o->layers * g.Hq * o->prefill * o->head_dim * elem_size(o->dtype));
			printf("  q_prefill  %-4s [%u, %u, %u, %u]  %s\n", dn, o->layers, g.Hq, o->prefill,
			       o->head_dim, a);
		}
		if (o->decode) {
			human(a, sizeof(a), (double)o->layers * g.Hq * o->decode * o->head_dim * elem_size(o->dtype));
			printf("  q_decode   %-4s [%u, %u, %u, %u]  %s\n", dn, o->layers, g.Hq, o->decode,
			       o->head_dim, a);
		}
		human(b, sizeof(b), (double)o->tokens * 4);
		printf("  surprise   F32  [%u]  %s; tokens I32 [%u]  %s\n", o->tokens, b, o->tokens, b);
		printf("  %zu episodes over %u topics, %u sinks, %u needles, rope_theta %g, seed %" PRIu64 "\n",
		       g.n_ep, o->topics, o->sinks, o->needles, o->rope_theta, o->seed);
	}
	status = 0;
out:
	st_writer_destroy(w);
	free_heads(&g);
	free_structure(&g);
	return status;
}
