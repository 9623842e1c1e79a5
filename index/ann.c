/*
 * ann: RetrievalAttention's query-aware graph over a segment's keys. The
 * parameters and the search are in policy.h; this file says why.
 *
 * Decode queries do not look like keys: the keys a query wants lie far
 * apart in key space, so a graph whose edges join keys near each other
 * (HNSW, NSG) walks a long way before it finds them. Prefill queries come
 * from the same distribution as decode queries, so the keys one prefill
 * query ranks high are joined to each other (RoarGraph's projection of the
 * query-key bipartite graph onto keys): a beam that reaches one of them
 * reaches the rest in a hop or two.
 *
 * Glossary
 *   entry      a cluster of one chunk: its centroid (scored for every
 *              search) and its entry key (where the beam may start)
 *   chain      edge slot 0: the cluster's members in a greedy
 *              nearest-neighbour tour from the entry key, so that the graph
 *              reaches every key whatever the other edges are
 *   query edge an edge drawn by a (prefill or recent) query's top keys,
 *              slots 1 .. qdeg; the key's cluster neighbours fill the rest
 *   beam       the ef best keys found so far; the search expands the best
 *              unexpanded key until none beats the beam's worst
 *
 * Blob body (format 1): n u64, d u32, degree u32, unit u32, chunk u32,
 * iters u32, beam_factor f32, queries used u64, entries u32, then
 * nbr u32 [n][degree] (a token id or ANN_NONE), qdeg u8 [n], centroids
 * f32 [entries][d], entry keys u32 [entries].
 */
#include <errno.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <stdio.h>
#include <time.h>

#include "ix.h"

#define ANN_VERSION 1
#define ANN_DEGREE 32
#define ANN_MIN_DEGREE 4
#define ANN_MAX_DEGREE 256
#define ANN_QDEG_SHARE 2          /* query edges take at most degree / this */
#define ANN_UNIT 256
#define ANN_CHUNK 8192
#define ANN_ITERS 6
#define ANN_MAX_QUERIES 4096
#define ANN_TOPK 32               /* keys a query links */
#define ANN_POOL 128              /* most proposals a key prunes */
#define ANN_ALPHA2 (1.2f * 1.2f)  /* alpha-RNG, on squared distances */
#define ANN_SEEDS 16
#define ANN_WIDTH 4               /* candidates expanded together */
#define ANN_MIN_EF 32
#define ANN_BEAM 1.0f
#define ANN_MAX_CLUSTER 1024      /* bigger k-means clusters are split (Gram matrix size) */
#define ANN_NONE INDEX_ANN_NONE

struct ann {
	struct index base;
	uint64_t n;
	unsigned d, R, unit, chunk, iters;
	float beam;
	uint64_t queries;         /* query vectors the edges were drawn from */
	uint32_t *nbr;            /* [n][R] */
	uint8_t *qdeg;            /* [n] */
	uint32_t n_ent;
	float *cent;              /* [n_ent][d] */
	uint32_t *entry;          /* [n_ent] */
	uint16_t *kb;             /* [n][d] the keys in bf16, what search scores (NULL: the caller's keys) */
	size_t kb_bytes;
};

static const struct ann *to_ann(const struct index *ix)
{
	return ix && ix->policy == POLICY_ANN ? (const struct ann *)ix : NULL;
}

static void ann_free(struct index *ix)
{
	struct ann *a = (struct ann *)ix;
	if (!a)
		return;
	IX_ASSERT(ix->policy == POLICY_ANN);
	free(a->nbr);
	free(a->qdeg);
	free(a->cent);
	free(a->entry);
	if (a->kb)
		munmap(a->kb, a->kb_bytes);
	free(a);
}

/*
 * The search's own copy of the keys: bf16 halves the memory a beam reads at
 * random (4 cache lines a key at d = 128, exact for keys stored as bf16),
 * and huge pages spare it a TLB miss per key.
 */
static int keys_copy(struct ann *a, const float *k)
{
	size_t bytes = (size_t)a->n * a->d * sizeof(uint16_t);
	uint16_t *kb = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (kb == MAP_FAILED)
		return -ENOMEM;
	madvise(kb, bytes, MADV_HUGEPAGE);
	for (size_t i = 0; i < (size_t)a->n * a->d; i++)
		kb[i] = ix_f32_bf16(k[i]);
	if (a->kb)
		munmap(a->kb, a->kb_bytes);
	a->kb = kb;
	a->kb_bytes = bytes;
	return 0;
}

static inline float sqdist(const float *x, const float *y, unsigned d)
{
	float s = 0;
	for (unsigned j = 0; j < d; j++) {
		float t = x[j] - y[j];
		s += t * t;
	}
	return s;
}

/* ---- clusters: entries, chains, neighbour fill ------------------------------ */

/* What one chunk yields. */
struct chunk_out {
	uint32_t n_ent;
	float *cent;              /* [n_ent][d] */
	uint32_t *entry;
};

struct cluster_job {
	struct ann *a;
	const float *k;
	uint64_t first, end;      /* tokens to cluster: [first, end) */
	uint32_t seed;
	unsigned omp_threads;
	struct chunk_out *out;
};

/*
 * One cluster of @p s members (ids @p mem): centroid, entry key, chain and
 * the cluster neighbours of every member written as its whole edge list
 * (slot 0 chain, then nearest first). Returns the entry key.
 */
static uint32_t cluster_edges(struct ann *a, const float *k, const uint32_t *mem, uint32_t s, float *cent,
			      float *x, float *gram, float *norm, struct ix_item *items, uint8_t *done)
{
	const unsigned d = a->d, R = a->R;
	memset(cent, 0, d * sizeof(float));
	for (uint32_t i = 0; i < s; i++) {
		memcpy(x + (size_t)i * d, k + (size_t)mem[i] * d, d * sizeof(float));
		for (unsigned j = 0; j < d; j++)
			cent[j] += x[(size_t)i * d + j];
	}
	for (unsigned j = 0; j < d; j++)
		cent[j] /= (float)s;
	uint32_t ent = 0;
	float best = INFINITY;
	for (uint32_t i = 0; i < s; i++) {
		norm[i] = ix_dot(x + (size_t)i * d, x + (size_t)i * d, d);
		float e = sqdist(x + (size_t)i * d, cent, d);
		if (e < best) {
			best = e;
			ent = i;
		}
	}
	/* squared distances between members, from the Gram matrix in column blocks */
	for (uint32_t c0 = 0; c0 < s; c0 += 256) {
		unsigned cb = s - c0 < 256 ? s - c0 : 256;
		ix_dots(x, s, d, x + (size_t)c0 * d, cb, d, gram + (size_t)s * s);
		for (uint32_t i = 0; i < s; i++)
			for (unsigned g = 0; g < cb; g++) {
				float dd = norm[i] + norm[c0 + g] - 2 * gram[(size_t)s * s + (size_t)i * cb + g];
				gram[(size_t)i * s + c0 + g] = dd > 0 ? dd : 0;
			}
	}
	/* the chain: a greedy tour from the entry key */
	memset(done, 0, s);
	uint32_t cur = ent;
	done[cur] = 1;
	for (uint32_t step = 1; step < s; step++) {
		uint32_t next = ANN_NONE;
		float nd = INFINITY;
		for (uint32_t i = 0; i < s; i++)
			if (!done[i] && gram[(size_t)cur * s + i] < nd) {
				nd = gram[(size_t)cur * s + i];
				next = i;
			}
		if (next == ANN_NONE) /* NaN distances: take the first left */
			for (next = 0; done[next]; next++)
				;
		a->nbr[(uint64_t)mem[cur] * R] = mem[next];
		done[next] = 1;
		cur = next;
	}
	a->nbr[(uint64_t)mem[cur] * R] = ANN_NONE;
	/* the rest of every list: its nearest members, the chain's target left out */
	for (uint32_t i = 0; i < s; i++) {
		uint32_t *row = a->nbr + (uint64_t)mem[i] * R;
		size_t m = 0;
		for (uint32_t j = 0; j < s; j++)
			if (j != i && mem[j] != row[0])
				items[m++] = (struct ix_item){ .score = -gram[(size_t)i * s + j], .id = mem[j] };
		size_t take = m < R - 1 ? m : R - 1;
		ix_top(items, m, take);
		for (size_t t = 0; t < R - 1; t++)
			row[1 + t] = t < take ? items[t].id : ANN_NONE;
		a->qdeg[mem[i]] = 0;
	}
	return mem[ent];
}

static int cluster_chunk(void *ctx, size_t item, unsigned worker)
{
	(void)worker;
	struct cluster_job *j = ctx;
	struct ann *a = j->a;
	const unsigned d = a->d;
	const uint64_t t0 = j->first + (uint64_t)item * a->chunk;
	const uint32_t len = (uint32_t)(t0 + a->chunk < j->end ? a->chunk : j->end - t0);
	const float *k = j->k;
	struct chunk_out *o = &j->out[item];
	uint32_t want = (uint32_t)(((uint64_t)len + a->unit / 2) / a->unit);
	if (want < 1)
		want = 1;
	float *xn = malloc((size_t)len * d * sizeof(float)), *mu = calloc(d, sizeof(float));
	float *c = malloc((size_t)want * d * sizeof(float));
	uint32_t *assign = malloc((size_t)len * sizeof(uint32_t)), *cnt = calloc(want + 1, sizeof(uint32_t));
	uint32_t *mem = malloc((size_t)len * sizeof(uint32_t));
	size_t smax = len < ANN_MAX_CLUSTER ? len : ANN_MAX_CLUSTER;
	float *x = malloc(smax * d * sizeof(float)), *gram = malloc((smax * smax + smax * 256) * sizeof(float));
	float *norm = malloc(smax * sizeof(float));
	struct ix_item *items = malloc(smax * sizeof(*items));
	uint8_t *done = malloc(smax);
	int rc = -ENOMEM;
	if (!xn || !mu || !c || !assign || !cnt || !mem || !x || !gram || !norm || !items || !done)
		goto out;
	/* mean-centred spherical k-means, as centroids* cluster */
	for (uint32_t i = 0; i < len; i++)
		for (unsigned t = 0; t < d; t++)
			mu[t] += k[(t0 + i) * d + t] / (float)len;
	ix_centre_normalise(k + t0 * d, len, d, mu, xn);
	if (want > 1) {
		rc = ix_kmeans_ip(xn, len, d, want, a->iters, j->seed + (uint32_t)item, 0, j->omp_threads, c, assign);
		if (rc)
			goto out;
	} else {
		memset(assign, 0, len * sizeof(uint32_t));
	}
	/* members grouped by cluster (counting sort, token order inside) */
	for (uint32_t i = 0; i < len; i++)
		cnt[assign[i] + 1]++;
	for (uint32_t q = 0; q < want; q++)
		cnt[q + 1] += cnt[q];
	for (uint32_t i = 0; i < len; i++)
		mem[cnt[assign[i]]++] = (uint32_t)(t0 + i);
	/* cnt[q] is now the end of cluster q; pieces of at most ANN_MAX_CLUSTER */
	uint32_t pieces = 0;
	for (uint32_t q = 0, b = 0; q < want; b = cnt[q++])
		pieces += (cnt[q] - b + ANN_MAX_CLUSTER - 1) / ANN_MAX_CLUSTER;
	o->cent = malloc((size_t)pieces * d * sizeof(float));
	o->entry = malloc((size_t)pieces * sizeof(uint32_t));
	if (!o->cent || !o->entry)
		goto out;
	for (uint32_t q = 0, b = 0; q < want; b = cnt[q++])
		for (uint32_t p = b; p < cnt[q]; p += ANN_MAX_CLUSTER) {
			uint32_t s = cnt[q] - p < ANN_MAX_CLUSTER ? cnt[q] - p : ANN_MAX_CLUSTER;
			o->entry[o->n_ent] = cluster_edges(a, k, mem + p, s, o->cent + (size_t)o->n_ent * d, x, gram,
							   norm, items, done);
			o->n_ent++;
		}
	rc = 0;
out:
	free(xn);
	free(mu);
	free(c);
	free(assign);
	free(cnt);
	free(mem);
	free(x);
	free(gram);
	free(norm);
	free(items);
	free(done);
	return rc;
}

/* Cluster tokens [first, end) into entries appended to the index's. */
static int cluster_range(struct ann *a, const float *k, uint64_t first, uint64_t end, uint32_t seed,
			 unsigned threads)
{
	const size_t chunks = (size_t)((end - first + a->chunk - 1) / a->chunk);
	struct chunk_out *co = calloc(chunks, sizeof(*co));
	if (!co)
		return -ENOMEM;
	struct cluster_job job = { .a = a, .k = k, .first = first, .end = end, .seed = seed,
				   .omp_threads = chunks == 1 ? threads : 0, .out = co };
	int rc = ix_parallel(threads, chunks, cluster_chunk, &job);
	uint64_t more = 0;
	for (size_t c = 0; c < chunks; c++)
		more += co[c].n_ent;
	if (!rc && a->n_ent + more > UINT32_MAX)
		rc = -EINVAL;
	float *cent = rc ? NULL : realloc(a->cent, (a->n_ent + more) * a->d * sizeof(float));
	if (cent)
		a->cent = cent;
	uint32_t *entry = rc || !cent ? NULL : realloc(a->entry, (a->n_ent + more) * sizeof(uint32_t));
	if (entry)
		a->entry = entry;
	if (!rc && (!cent || !entry))
		rc = -ENOMEM;
	for (size_t c = 0; c < chunks; c++) {
		if (!rc) {
			memcpy(a->cent + (size_t)a->n_ent * a->d, co[c].cent, (size_t)co[c].n_ent * a->d * sizeof(float));
			memcpy(a->entry + a->n_ent, co[c].entry, co[c].n_ent * sizeof(uint32_t));
			a->n_ent += co[c].n_ent;
		}
		free(co[c].cent);
		free(co[c].entry);
	}
	free(co);
	return rc;
}

/* ---- query edges ---------------------------------------------------------- */

struct link_job {
	struct ann *a;
	const float *k;
	const uint64_t *start;    /* [n + 1] CSR over proposals */
	const uint32_t *prop;
	unsigned max_q;           /* query edges a key keeps */
};

static int cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return a < b ? -1 : a > b;
}

/*
 * Key @p src's query edges: its old ones and its proposals, the most
 * proposed first (old edges count as proposed once more than any new
 * one), pruned by the alpha-RNG rule in order of distance.
 */
static void link_key(const struct link_job *j, uint32_t src, uint32_t *pool, struct ix_item *items)
{
	struct ann *a = j->a;
	const unsigned d = a->d, R = a->R;
	uint32_t *row = a->nbr + (uint64_t)src * R;
	uint64_t b = j->start[src], e = j->start[src + 1];
	size_t m = 0;
	for (uint64_t i = b; i < e; i++)
		if (j->prop[i] != src)
			pool[m++] = j->prop[i];
	qsort(pool, m, sizeof(*pool), cmp_u32);
	size_t u = 0;
	for (size_t i = 0; i < m;) {
		size_t r = i;
		while (r < m && pool[r] == pool[i])
			r++;
		items[u++] = (struct ix_item){ .score = (float)(r - i), .id = pool[i] };
		i = r;
	}
	const float old_weight = (float)(e - b + 1);
	for (unsigned s = 1; s <= a->qdeg[src]; s++) {
		size_t f = 0;
		while (f < u && items[f].id != row[s])
			f++;
		if (f == u)
			items[u++] = (struct ix_item){ .id = row[s] };
		items[f].score = old_weight;
	}
	size_t keep = u < ANN_POOL ? u : ANN_POOL;
	ix_select(items, u, keep);
	/* nearest first, then alpha-RNG */
	const float *ks = j->k + (uint64_t)src * d;
	for (size_t i = 0; i < keep; i++)
		items[i].score = -sqdist(ks, j->k + (uint64_t)items[i].id * d, d);
	ix_top(items, keep, keep);
	uint32_t acc[ANN_MAX_DEGREE];
	unsigned n_acc = 0;
	for (size_t i = 0; i < keep && n_acc < j->max_q; i++) {
		const float *kc = j->k + (uint64_t)items[i].id * d;
		float dc = -items[i].score;
		int ok = items[i].id != row[0];
		for (unsigned t = 0; ok && t < n_acc; t++)
			ok = ANN_ALPHA2 * sqdist(j->k + (uint64_t)acc[t] * d, kc, d) > dc;
		if (ok)
			acc[n_acc++] = items[i].id;
	}
	/* the list: chain, the query edges, then the old cluster neighbours not among them */
	uint32_t rest[ANN_MAX_DEGREE];
	unsigned n_rest = 0;
	for (unsigned s = 1 + a->qdeg[src]; s < R && row[s] != ANN_NONE; s++) {
		int dup = 0;
		for (unsigned t = 0; t < n_acc && !dup; t++)
			dup = acc[t] == row[s];
		if (!dup)
			rest[n_rest++] = row[s];
	}
	for (unsigned t = 0; t < n_acc; t++)
		row[1 + t] = acc[t];
	for (unsigned s = 1 + n_acc, t = 0; s < R; s++)
		row[s] = t < n_rest ? rest[t++] : ANN_NONE;
	a->qdeg[src] = (uint8_t)n_acc;
}

enum { LINK_BATCH = 4096 };

static int link_batch(void *ctx, size_t item, unsigned worker)
{
	(void)worker;
	const struct link_job *j = ctx;
	const uint64_t first = (uint64_t)item * LINK_BATCH;
	const uint64_t end = first + LINK_BATCH < j->a->n ? first + LINK_BATCH : j->a->n;
	uint64_t most = 0;
	for (uint64_t s = first; s < end; s++)
		if (j->start[s + 1] - j->start[s] > most)
			most = j->start[s + 1] - j->start[s];
	uint32_t *pool = malloc((most + 1) * sizeof(*pool));
	struct ix_item *items = malloc((most + ANN_MAX_DEGREE + 1) * sizeof(*items));
	if (!pool || !items) {
		free(pool);
		free(items);
		return -ENOMEM;
	}
	for (uint64_t s = first; s < end; s++)
		if (j->start[s + 1] > j->start[s])
			link_key(j, (uint32_t)s, pool, items);
	free(pool);
	free(items);
	return 0;
}

/*
 * Draw query edges from @p nq query vectors @p q [nq][d] (pre-scaled):
 * each one's exact top ANN_TOPK keys of [0, a->n) propose each other.
 */
static int link_queries(struct ann *a, const float *k, const float *q, uint64_t nq, unsigned threads)
{
	if (!nq)
		return 0;
	const uint64_t n = a->n;
	const unsigned top = n < ANN_TOPK ? (unsigned)n : ANN_TOPK;
	if (top < 2)
		return 0;
	float *D = malloc(nq * top * sizeof(float));
	idx_t *L = malloc(nq * top * sizeof(idx_t));
	uint64_t *start = calloc(n + 2, sizeof(uint64_t));
	uint32_t *prop = NULL;
	FaissIndexFlatIP *flat = NULL;
	int rc = -ENOMEM;
	if (!D || !L || !start)
		goto out;
	int omp_saved = omp_get_max_threads();
	if (threads)
		omp_set_num_threads((int)threads);
	rc = ix_faiss_error(faiss_IndexFlatIP_new_with(&flat, (idx_t)a->d));
	if (!rc)
		rc = ix_faiss_error(faiss_Index_add((FaissIndex *)flat, (idx_t)n, k));
	if (!rc)
		rc = ix_faiss_error(faiss_Index_search((FaissIndex *)flat, (idx_t)nq, q, top, D, L));
	if (threads)
		omp_set_num_threads(omp_saved);
	if (flat)
		faiss_Index_free((FaissIndex *)flat);
	if (rc)
		goto out;
	/* proposals: within each list, every key proposes the others (CSR by key) */
	for (uint64_t r = 0; r < nq; r++) {
		unsigned valid = 0;
		for (unsigned t = 0; t < top; t++)
			valid += L[r * top + t] >= 0 && (uint64_t)L[r * top + t] < n;
		for (unsigned t = 0; t < top; t++)
			if (L[r * top + t] >= 0 && (uint64_t)L[r * top + t] < n)
				start[L[r * top + t] + 2] += valid - 1;
	}
	for (uint64_t s = 0; s < n; s++)
		start[s + 2] += start[s + 1];
	prop = malloc((start[n + 1] + 1) * sizeof(uint32_t));
	rc = -ENOMEM;
	if (!prop)
		goto out;
	for (uint64_t r = 0; r < nq; r++) {
		const idx_t *l = L + r * top;
		for (unsigned t = 0; t < top; t++) {
			if (l[t] < 0 || (uint64_t)l[t] >= n)
				continue;
			for (unsigned u = 0; u < top; u++)
				if (u != t && l[u] >= 0 && (uint64_t)l[u] < n)
					prop[start[l[t] + 1]++] = (uint32_t)l[u];
		}
	}
	/* start[s] is now where key s's proposals begin */
	struct link_job job = { .a = a, .k = k, .start = start, .prop = prop, .max_q = (a->R - 1) / ANN_QDEG_SHARE };
	rc = ix_parallel(threads, (size_t)((n + LINK_BATCH - 1) / LINK_BATCH), link_batch, &job);
	a->queries += nq;
out:
	free(D);
	free(L);
	free(start);
	free(prop);
	return rc;
}

/* Every query vector of @p q [n_q][G][d], or an even subsample of at most @p max; *out NULL when q is. */
static int query_rows(const float *q, uint64_t n_q, unsigned G, unsigned d, uint64_t max, float **out,
		      uint64_t *rows)
{
	*out = NULL;
	*rows = 0;
	uint64_t all = n_q * G;
	if (!q || !all)
		return 0;
	if (all <= max) {
		*rows = all;
		*out = malloc(all * d * sizeof(float));
		if (!*out)
			return -ENOMEM;
		memcpy(*out, q, all * d * sizeof(float));
		return 0;
	}
	*rows = max;
	*out = malloc(max * d * sizeof(float));
	if (!*out)
		return -ENOMEM;
	for (uint64_t r = 0; r < max; r++) {
		/* evenly spaced, the last (most recent) one included */
		uint64_t src = max > 1 ? r * (all - 1) / (max - 1) : all - 1;
		memcpy(*out + r * d, q + src * d, d * sizeof(float));
	}
	return 0;
}

/* ---- build ------------------------------------------------------------------- */

static int config(struct ann *a, const struct index_build_params *p)
{
	a->R = p && p->degree ? p->degree : ANN_DEGREE;
	a->unit = p && p->unit_tokens ? p->unit_tokens : ANN_UNIT;
	a->chunk = p && p->chunk_tokens ? p->chunk_tokens : ANN_CHUNK;
	a->iters = p && p->iters ? p->iters : ANN_ITERS;
	a->beam = p && p->beam_factor > 0 ? p->beam_factor : ANN_BEAM;
	if (a->R < ANN_MIN_DEGREE || a->R > ANN_MAX_DEGREE || a->unit < 2 || a->unit > 65536 ||
	    a->chunk < a->unit || a->iters > 1000 || !(a->beam <= 1e6f) || (p && p->beam_factor < 0))
		return -EINVAL;
	return 0;
}

static int ann_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n >= IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	if (p && p->prefill_q && p->n_prefill && (!p->group || p->group > IX_MAX_GROUP))
		return -EINVAL;
	struct ann *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->base.policy = POLICY_ANN;
	a->n = keys->n;
	a->d = keys->d;
	int rc = config(a, p);
	if (rc)
		goto fail;
	rc = -ENOMEM;
	a->nbr = ix_alloc_big(a->n * a->R * sizeof(uint32_t));
	a->qdeg = calloc(a->n, 1);
	if (!a->nbr || !a->qdeg)
		goto fail;
	unsigned threads = p ? p->threads : 0;
	if ((rc = cluster_range(a, keys->k, 0, a->n, p ? p->seed : 0, threads)))
		goto fail;
	float *qr;
	uint64_t rows;
	uint64_t max = p && p->max_prefill ? p->max_prefill : ANN_MAX_QUERIES;
	if ((rc = query_rows(p ? p->prefill_q : NULL, p ? p->n_prefill : 0, p ? p->group : 0, a->d, max, &qr, &rows)))
		goto fail;
	rc = link_queries(a, keys->k, qr, rows, threads);
	free(qr);
	if (rc || (rc = keys_copy(a, keys->k)))
		goto fail;
	*out = &a->base;
	return 0;
fail:
	ann_free(&a->base);
	return rc;
}

static int ann_extend(struct index *ix, const struct index_keys *keys, const float *q, uint64_t n_q, unsigned G,
		      const struct index_build_params *p)
{
	struct ann *a = (struct ann *)ix;
	if (!to_ann(ix) || !keys || !keys->k || keys->d != a->d || keys->n < a->n || keys->n >= IX_MAX_TOKENS ||
	    (n_q && (!q || !G || G > IX_MAX_GROUP)))
		return -EINVAL;
	if (keys->n == a->n && !n_q)
		return 0;
	/* work on a copy of the edges, so that a failure leaves the index as it was */
	struct ann b = *a;
	b.n = keys->n;
	b.kb = NULL;
	b.nbr = ix_alloc_big(b.n * b.R * sizeof(uint32_t));
	b.qdeg = malloc(b.n);
	b.cent = malloc((size_t)a->n_ent * a->d * sizeof(float) + 1);
	b.entry = malloc((size_t)a->n_ent * sizeof(uint32_t) + 1);
	int rc = -ENOMEM;
	if (!b.nbr || !b.qdeg || !b.cent || !b.entry)
		goto fail;
	memcpy(b.nbr, a->nbr, a->n * a->R * sizeof(uint32_t));
	memcpy(b.qdeg, a->qdeg, a->n);
	memcpy(b.cent, a->cent, (size_t)a->n_ent * a->d * sizeof(float));
	memcpy(b.entry, a->entry, (size_t)a->n_ent * sizeof(uint32_t));
	unsigned threads = p ? p->threads : 0;
	if (b.n > a->n && (rc = cluster_range(&b, keys->k, a->n, b.n, (p ? p->seed : 0) + (uint32_t)a->n_ent,
					      threads)))
		goto fail;
	float *qr;
	uint64_t rows;
	if ((rc = query_rows(q, n_q, G, a->d, ANN_MAX_QUERIES, &qr, &rows)))
		goto fail;
	rc = link_queries(&b, keys->k, qr, rows, threads);
	free(qr);
	if (rc || (rc = keys_copy(&b, keys->k)))
		goto fail;
	if (a->kb)
		munmap(a->kb, a->kb_bytes);
	free(a->nbr);
	free(a->qdeg);
	free(a->cent);
	free(a->entry);
	*a = b;
	return 0;
fail:
	if (b.kb)
		munmap(b.kb, b.kb_bytes);
	free(b.nbr);
	free(b.qdeg);
	free(b.cent);
	free(b.entry);
	return rc;
}

/* ---- search ---------------------------------------------------------------- */

/* Binary heaps of items: the candidates (best on top) and the beam (worst on top). */
static inline int heap_above(const struct ix_item *x, const struct ix_item *y, int max)
{
	return max ? x->score > y->score : x->score < y->score;
}

static void heap_push(struct ix_item *h, size_t *n, struct ix_item it, int max)
{
	size_t i = (*n)++;
	while (i) {
		size_t up = (i - 1) / 2;
		if (!heap_above(&it, &h[up], max))
			break;
		h[i] = h[up];
		i = up;
	}
	h[i] = it;
}

static struct ix_item heap_pop(struct ix_item *h, size_t *n, int max)
{
	struct ix_item top = h[0], last = h[--*n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && heap_above(&h[c + 1], &h[c], max))
			c++;
		if (!heap_above(&h[c], &last, max))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = last;
	return top;
}

/*
 * A key's group score: the best over heads of q_g.k - off_g, so that the
 * budget best are the union of each head's best (no exponential per key;
 * NaN becomes -inf so that ordering stays total).
 */
static inline float group_score(const float *s, const float *off, unsigned G)
{
	float m = -INFINITY;
	for (unsigned g = 0; g < G; g++)
		if (s[g] - off[g] > m)
			m = s[g] - off[g];
	return m;
}

/*
 * q_g . key for the group: from the index's bf16 copy, or (an index loaded
 * without keys) from the caller's keys rounded the same way, so that both
 * give the same results.
 */
static inline void score_key(const struct ann *a, const struct index_keys *keys, uint32_t id, const float *q,
			     unsigned G, uint16_t *rowb, float *out)
{
	const unsigned d = a->d;
	if (a->kb) {
		ix_dots_bf16(a->kb + (uint64_t)id * d, q, G, d, out);
		return;
	}
	const float *k = keys->k + (uint64_t)id * d;
	for (unsigned j = 0; j < d; j++)
		rowb[j] = ix_f32_bf16(k[j]);
	ix_dots_bf16(rowb, q, G, d, out);
}

static int ann_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
		      uint64_t budget, struct index_result *res)
{
	const struct ann *a = to_ann(ix);
	if (!a)
		return -EINVAL;
	int rc = ix_search_prologue(a->n, a->d, keys, !a->kb, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const uint64_t n = a->n;
	const uint16_t *kb = a->kb;
	const size_t row_bytes = kb ? (size_t)a->d * 2 : (size_t)a->d * 4;
	const unsigned d = a->d, R = a->R;
	uint64_t ef = (uint64_t)ceil((double)a->beam * (double)budget);
	if (ef < ANN_MIN_EF)
		ef = ANN_MIN_EF;
	if (ef > n)
		ef = n;
	const size_t words = ix_bits_words(n);
	size_t bytes = ix_align(words * 8) * 2 + ix_align((size_t)a->n_ent * G * sizeof(float)) +
		       ix_align((size_t)a->n_ent * sizeof(struct ix_item)) + ix_align(n * sizeof(struct ix_item)) * 2 +
		       ix_align((ef + 1) * sizeof(struct ix_item)) + ix_align((size_t)G * sizeof(float)) * 2 +
		       ix_align((size_t)R * (G + 1) * sizeof(float)) + ix_align((size_t)d * sizeof(uint16_t));
	uint8_t *m = ix_scratch(bytes);
	if (!m)
		return -ENOMEM;
	uint64_t *seen = (uint64_t *)m;
	m += ix_align(words * 8);
	uint64_t *bits = (uint64_t *)m;
	m += ix_align(words * 8);
	float *es = (float *)m;
	m += ix_align((size_t)a->n_ent * G * sizeof(float));
	struct ix_item *eit = (struct ix_item *)m;
	m += ix_align((size_t)a->n_ent * sizeof(struct ix_item));
	struct ix_item *scanned = (struct ix_item *)m;
	m += ix_align(n * sizeof(struct ix_item));
	struct ix_item *cand = (struct ix_item *)m;
	m += ix_align(n * sizeof(struct ix_item));
	struct ix_item *beam = (struct ix_item *)m;
	m += ix_align((ef + 1) * sizeof(struct ix_item));
	float *off = (float *)m;
	m += ix_align((size_t)G * sizeof(float));
	float *sc = (float *)m;
	m += ix_align((size_t)G * sizeof(float));
	float *ns = (float *)m;
	m += ix_align((size_t)R * (G + 1) * sizeof(float));
	uint16_t *rowb = (uint16_t *)m;
	memset(seen, 0, words * 8);
	memset(bits, 0, words * 8);

	/* entry points: every centroid, the group's reference scores from them */
	ix_dots(a->cent, a->n_ent, d, q, G, d, es);
	for (unsigned g = 0; g < G; g++)
		off[g] = -INFINITY;
	for (uint32_t e = 0; e < a->n_ent; e++)
		for (unsigned g = 0; g < G; g++)
			if (es[(size_t)e * G + g] > off[g])
				off[g] = es[(size_t)e * G + g];
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(off[g]))
			off[g] = 0;
	for (uint32_t e = 0; e < a->n_ent; e++)
		eit[e] = (struct ix_item){ .score = group_score(es + (size_t)e * G, off, G), .id = a->entry[e] };
	/* a beam as wide as the segment starts from every entry: each key is chained from one */
	size_t seeds = ef >= n || a->n_ent < ANN_SEEDS ? a->n_ent : ANN_SEEDS;
	ix_top(eit, a->n_ent, seeds);
	size_t n_sc = 0, n_c = 0, n_b = 0;
	for (size_t i = 0; i < seeds; i++) {
		uint32_t id = eit[i].id;
		if (ix_bit_get(seen, id))
			continue;
		ix_bit_set(seen, id);
		score_key(a, keys, id, q, G, rowb, sc);
		struct ix_item it = { .score = group_score(sc, off, G), .id = id };
		scanned[n_sc++] = it;
		heap_push(cand, &n_c, it, 1);
		heap_push(beam, &n_b, it, 0);
		if (n_b > ef)
			heap_pop(beam, &n_b, 0);
	}
	/* best first, ANN_WIDTH candidates at a time so that their keys load together */
	uint32_t fresh[ANN_WIDTH * ANN_MAX_DEGREE];
	while (n_c) {
		unsigned nf = 0, popped = 0;
		while (n_c && popped < ANN_WIDTH) {
			if (n_b >= ef && cand[0].score < beam[0].score)
				break;
			struct ix_item c = heap_pop(cand, &n_c, 1);
			popped++;
			const uint32_t *row = a->nbr + (uint64_t)c.id * R;
			for (unsigned s = 0; s < R; s++) {
				uint32_t u = row[s];
				if (u == ANN_NONE || ix_bit_get(seen, u))
					continue;
				ix_bit_set(seen, u);
				fresh[nf++] = u;
				const char *kr = kb ? (const char *)(kb + (uint64_t)u * d)
						    : (const char *)(keys->k + (uint64_t)u * d);
				for (size_t b = 0; b < row_bytes; b += 64)
					__builtin_prefetch(kr + b);
			}
		}
		if (!popped)
			break;
		/* the next candidates' edges, while these keys are scored */
		for (size_t i = 0; i < n_c && i < 2 * ANN_WIDTH; i++)
			__builtin_prefetch(a->nbr + (uint64_t)cand[i].id * R);
		for (unsigned f = 0; f < nf; f++) {
			score_key(a, keys, fresh[f], q, G, rowb, ns);
			struct ix_item it = { .score = group_score(ns, off, G), .id = fresh[f] };
			scanned[n_sc++] = it;
			if (n_b < ef || it.score > beam[0].score) {
				heap_push(cand, &n_c, it, 1);
				heap_push(beam, &n_b, it, 0);
				if (n_b > ef)
					heap_pop(beam, &n_b, 0);
			}
		}
	}
	/* the budget best of every key scored */
	uint64_t take = budget < n_sc ? budget : n_sc;
	ix_select(scanned, n_sc, take);
	for (uint64_t i = 0; i < take; i++)
		ix_bit_set(bits, scanned[i].id);
	res->n_tokens = ix_bits_emit(bits, n, res->tokens);
	res->scanned = a->n_ent + n_sc;
	return 0;
}

/* ---- persistence ------------------------------------------------------------- */

static int ann_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct ann *a = to_ann(ix);
	if (!a || !buf || !len)
		return -EINVAL;
	struct ix_wr w;
	ix_wr_begin(&w, POLICY_ANN, ANN_VERSION, 64 + a->n * (a->R * 4 + 1) + (size_t)a->n_ent * (a->d + 1) * 4);
	ix_wr_u64(&w, a->n);
	ix_wr_u32(&w, a->d);
	ix_wr_u32(&w, a->R);
	ix_wr_u32(&w, a->unit);
	ix_wr_u32(&w, a->chunk);
	ix_wr_u32(&w, a->iters);
	ix_wr_f32(&w, a->beam);
	ix_wr_u64(&w, a->queries);
	ix_wr_u32(&w, a->n_ent);
	ix_wr_u32s(&w, a->nbr, a->n * a->R);
	ix_wr_bytes(&w, a->qdeg, a->n);
	ix_wr_f32s(&w, a->cent, (size_t)a->n_ent * a->d);
	ix_wr_u32s(&w, a->entry, a->n_ent);
	return ix_wr_end(&w, buf, len);
}

static int ann_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	if (!buf || !out)
		return -EINVAL;
	struct ix_rd r;
	int rc = ix_rd_begin(&r, buf, len, POLICY_ANN, ANN_VERSION);
	if (rc)
		return rc;
	struct ann *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->base.policy = POLICY_ANN;
	a->n = ix_rd_u64(&r);
	a->d = ix_rd_u32(&r);
	a->R = ix_rd_u32(&r);
	a->unit = ix_rd_u32(&r);
	a->chunk = ix_rd_u32(&r);
	a->iters = ix_rd_u32(&r);
	a->beam = ix_rd_f32(&r);
	a->queries = ix_rd_u64(&r);
	a->n_ent = ix_rd_u32(&r);
	rc = -EBADMSG;
	if (r.err || !a->n || a->n >= IX_MAX_TOKENS || !a->d || a->d > IX_MAX_DIM || a->R < ANN_MIN_DEGREE ||
	    a->R > ANN_MAX_DEGREE || a->unit < 2 || a->chunk < a->unit || !(a->beam > 0) || !a->n_ent ||
	    a->n_ent > a->n)
		goto fail;
	/* sizes are bounded by what the blob holds before anything is allocated */
	if (r.left / 4 / a->R < a->n)
		goto fail;
	if (keys && (keys->n != a->n || keys->d != a->d)) {
		rc = -EINVAL;
		goto fail;
	}
	if ((rc = ix_rd_u32s(&r, a->n * a->R, (uint64_t)UINT32_MAX + 1, &a->nbr)))
		goto fail;
	rc = -EBADMSG;
	for (uint64_t i = 0; i < a->n * a->R; i++)
		if (a->nbr[i] != ANN_NONE && a->nbr[i] >= a->n)
			goto fail;
	const uint8_t *qd = ix_rd_bytes(&r, a->n);
	if (!qd)
		goto fail;
	rc = -ENOMEM;
	if (!(a->qdeg = malloc(a->n)))
		goto fail;
	memcpy(a->qdeg, qd, a->n);
	rc = -EBADMSG;
	for (uint64_t i = 0; i < a->n; i++)
		if (a->qdeg[i] >= a->R)
			goto fail;
	if ((rc = ix_rd_f32s(&r, (size_t)a->n_ent * a->d, &a->cent)) ||
	    (rc = ix_rd_u32s(&r, a->n_ent, a->n, &a->entry)) || (rc = ix_rd_end(&r)))
		goto fail;
	if (keys && (rc = keys_copy(a, keys->k)))
		goto fail;
	*out = &a->base;
	return 0;
fail:
	ann_free(&a->base);
	return rc;
}

static size_t ann_memory(const struct index *ix)
{
	const struct ann *a = to_ann(ix);
	if (!a)
		return 0;
	return sizeof(*a) + a->n * (a->R * sizeof(uint32_t) + 1) + (size_t)a->n_ent * (a->d + 1) * sizeof(float) +
	       (a->kb ? a->kb_bytes : 0);
}

static uint64_t ann_tokens(const struct index *ix)
{
	const struct ann *a = to_ann(ix);
	return a ? a->n : 0;
}

const struct policy_ops ann_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "ann",
	.build = ann_build,
	.free = ann_free,
	.search = ann_search,
	.save = ann_save,
	.load = ann_load,
	.memory = ann_memory,
	.extend = ann_extend,
	.tokens = ann_tokens,
	.keeps_keys = 1,
};

/* ---- for tests ------------------------------------------------------------------ */

int index_ann_graph(const struct index *ix, struct index_ann_graph *g)
{
	const struct ann *a = to_ann(ix);
	if (!a || !g)
		return -EINVAL;
	*g = (struct index_ann_graph){ .n = a->n, .degree = a->R, .nbr = a->nbr, .qdeg = a->qdeg,
				       .n_entries = a->n_ent, .entries = a->entry, .queries = a->queries };
	return 0;
}

int index_ann_set_beam(struct index *ix, float beam_factor)
{
	if (!to_ann(ix) || !(beam_factor > 0 && beam_factor <= 1e6f))
		return -EINVAL;
	((struct ann *)ix)->beam = beam_factor;
	return 0;
}
