/*
 * faiss-hnsw: FAISS IndexHNSWFlat (M = 32) with FAISS's own inner-product
 * metric, the graph baseline. See policy.h for the parameters.
 *
 * Glossary
 *   efSearch  the width of FAISS's beam at the bottom layer; FAISS keeps it
 *             in the index, so searches of one index take its lock to set
 *             it and search (different indexes search in parallel)
 *   levels    the layers above the bottom one, about log(n)/log(M)
 *
 * scanned is an estimate: FAISS counts HNSW distance computations only in
 * a process-wide C++ structure (faiss::hnsw_stats) that its C API does not
 * expose. The estimate per head, HNSW_NDIS_PER_EF * efSearch +
 * HNSW_NDIS_BASE + M * levels, summed over the group's heads (an upper
 * bound of the keys scored: heads share some) and capped at n, was fitted
 * to that counter with an exploratory C++ program, not part of the build.
 * In FAISS 1.7.3 its ndis field stays 0 and n3 counts the bottom layer's
 * distance computations; on clustered synthetic keys (n = 20K and 100K,
 * d = 64 and 128, 20 queries, k = efSearch) n3 per query was 190 to 300 at
 * efSearch 16, 700 to 1240 at 256, 2000 to 3600 at 1024 and 9300 to 11700
 * at 4096: about 200 + 2.5 * efSearch. The estimate rounds up to 3 per
 * unit of efSearch and adds M per layer above for the greedy descent.
 *
 * Building is O(n log n) distance computations with a large constant
 * (more than 20 minutes for 1M x 128 on 2 cores); build() uses the cores
 * given in threads through FAISS's OpenMP.
 *
 * Blob body (format 1): the FAISS container of ix_faiss.h with M as its
 * parameter; a loaded index must accept efSearch (an HNSW index).
 */
#include <errno.h>
#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ix.h"
#include "ix_faiss.h"

#define HNSW_VERSION 1
#define HNSW_M 32
#define HNSW_MIN_EF 16
#define HNSW_MAX_EF (1 << 30)
#define HNSW_NDIS_PER_EF 3
#define HNSW_NDIS_BASE 200

struct fhnsw {
	struct index base;
	uint64_t n;
	unsigned d;
	uint32_t M;
	FaissIndex *index;
	FaissParameterSpace *ps;
	pthread_mutex_t lock;     /* guards ef and FAISS's efSearch */
	int ef;
	unsigned levels;
};

static const struct fhnsw *to_hnsw(const struct index *ix)
{
	return ix && ix->policy == POLICY_FAISS_HNSW ? (const struct fhnsw *)ix : NULL;
}

static void hnsw_free(struct index *ix)
{
	struct fhnsw *hx = (struct fhnsw *)ix;
	if (!hx)
		return;
	IX_ASSERT(ix->policy == POLICY_FAISS_HNSW);
	if (hx->ps)
		faiss_ParameterSpace_free(hx->ps);
	if (hx->index)
		faiss_Index_free(hx->index);
	pthread_mutex_destroy(&hx->lock);
	free(hx);
}

static struct fhnsw *hnsw_alloc(void)
{
	struct fhnsw *hx = calloc(1, sizeof(*hx));
	if (!hx)
		return NULL;
	hx->base.policy = POLICY_FAISS_HNSW;
	pthread_mutex_init(&hx->lock, NULL);
	return hx;
}

/* Parameter space, levels, and the first efSearch (fails on a non-HNSW index). */
static int hnsw_finish(struct fhnsw *hx)
{
	if (ix_faiss_error(faiss_ParameterSpace_new(&hx->ps)))
		return -ENOMEM;
	hx->ef = HNSW_MIN_EF;
	if (faiss_ParameterSpace_set_index_parameter(hx->ps, hx->index, "efSearch", hx->ef))
		return -EBADMSG;
	hx->levels = (unsigned)ceil(log((double)hx->n + 1) / log((double)hx->M));
	return 0;
}

static int hnsw_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	struct fhnsw *hx = hnsw_alloc();
	if (!hx)
		return -ENOMEM;
	hx->n = keys->n;
	hx->d = keys->d;
	hx->M = HNSW_M;
	unsigned threads = p ? p->threads : 0;
	int omp_saved = omp_get_max_threads();
	char desc[32];
	snprintf(desc, sizeof(desc), "HNSW%u", (unsigned)HNSW_M);
	int rc = ix_faiss_error(faiss_index_factory(&hx->index, (int)hx->d, desc, METRIC_INNER_PRODUCT));
	if (rc)
		goto out;
	if (threads)
		omp_set_num_threads((int)threads);
	rc = ix_faiss_error(faiss_Index_add(hx->index, (idx_t)hx->n, keys->k));
	if (threads)
		omp_set_num_threads(omp_saved);
	if (rc)
		goto out;
	if ((rc = hnsw_finish(hx)))
		rc = rc == -ENOMEM ? rc : -EIO;
out:
	if (rc) {
		hnsw_free(&hx->base);
		return rc;
	}
	*out = &hx->base;
	return 0;
}

static int hnsw_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
		       uint64_t budget, struct index_result *res)
{
	const struct fhnsw *chx = to_hnsw(ix);
	if (!chx)
		return -EINVAL;
	int rc = ix_search_prologue(chx->n, chx->d, keys, 0, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	struct fhnsw *hx = (struct fhnsw *)chx; /* the lock and ef are the mutable part */
	const size_t k = (size_t)budget;
	int ef = budget > HNSW_MAX_EF ? HNSW_MAX_EF : budget < HNSW_MIN_EF ? HNSW_MIN_EF : (int)budget;
	size_t off_D = 0;
	size_t off_L = off_D + ix_align((size_t)G * k * sizeof(float));
	size_t off_best = off_L + ix_align((size_t)G * k * sizeof(idx_t));
	size_t off_bits = off_best + ix_align((size_t)hx->n * sizeof(float));
	size_t off_pool = off_bits + ix_align(ix_bits_words(hx->n) * sizeof(uint64_t));
	size_t total = off_pool + (size_t)G * k * sizeof(struct ix_item);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *D = (float *)(sc + off_D), *best = (float *)(sc + off_best);
	idx_t *L = (idx_t *)(sc + off_L);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	struct ix_item *pool = (struct ix_item *)(sc + off_pool);

	pthread_mutex_lock(&hx->lock);
	if (ef != hx->ef) {
		rc = ix_faiss_error(faiss_ParameterSpace_set_index_parameter(hx->ps, hx->index, "efSearch", ef));
		if (!rc)
			hx->ef = ef;
	}
	if (!rc)
		rc = ix_faiss_error(faiss_Index_search(hx->index, (idx_t)G, q, (idx_t)k, D, L));
	pthread_mutex_unlock(&hx->lock);
	if (rc)
		return rc;
	/* an estimate per head (see the top of this file) */
	uint64_t per = (uint64_t)HNSW_NDIS_PER_EF * (uint64_t)ef + HNSW_NDIS_BASE + (uint64_t)hx->M * hx->levels;
	res->scanned = per * G < hx->n ? per * G : hx->n;
	res->n_tokens = ix_merge_heads(D, L, G, k, hx->n, budget, best, bits, pool, res->tokens);
	return 0;
}

static int hnsw_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct fhnsw *hx = to_hnsw(ix);
	if (!hx || !buf || !len)
		return -EINVAL;
	/* serialisation reads the index only; the lock keeps efSearch still meanwhile */
	pthread_mutex_lock((pthread_mutex_t *)&hx->lock);
	int rc = ix_faiss_save(hx->index, POLICY_FAISS_HNSW, HNSW_VERSION, hx->n, hx->d, hx->M, buf, len);
	pthread_mutex_unlock((pthread_mutex_t *)&hx->lock);
	return rc;
}

static int hnsw_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	if (!out)
		return -EINVAL;
	struct fhnsw *hx = hnsw_alloc();
	if (!hx)
		return -ENOMEM;
	int rc = ix_faiss_read(buf, len, POLICY_FAISS_HNSW, HNSW_VERSION, &hx->n, &hx->d, &hx->M, &hx->index);
	if (!rc && keys && (keys->n != hx->n || keys->d != hx->d))
		rc = -EINVAL;
	if (!rc && (hx->M < 2 || hx->M > 4096))
		rc = -EBADMSG;
	if (!rc)
		rc = hnsw_finish(hx);
	if (rc) {
		hnsw_free(&hx->base);
		return rc;
	}
	*out = &hx->base;
	return 0;
}

static size_t hnsw_memory(const struct index *ix)
{
	const struct fhnsw *hx = to_hnsw(ix);
	if (!hx)
		return 0;
	/* vectors; 2M bottom-layer links per node and about as many again as
	 * one node in M has M per layer above; a level and an offset per node */
	return sizeof(*hx) + hx->n * (hx->d * sizeof(float) + (2 * (size_t)hx->M + 2) * sizeof(int32_t) + 16);
}

const struct policy_ops faiss_hnsw_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "faiss-hnsw",
	.build = hnsw_build,
	.search = hnsw_search,
	.free = hnsw_free,
	.save = hnsw_save,
	.load = hnsw_load,
	.memory = hnsw_memory,
};
