/*
 * faiss-ivf: FAISS IndexIVFFlat with inner product, the inverted-file
 * baseline. See policy.h for the parameters and what scanned counts.
 *
 * Glossary
 *   list     an inverted list: the keys whose nearest centroid (by inner
 *            product) is the list's
 *   nprobe   lists a head scans; fixed per search from the budget. The
 *            FAISS index keeps nprobe = nlist forever and each search hands
 *            FAISS its own coarse assignment padded with -1 (lists FAISS
 *            skips), so concurrent searches share the index without a lock.
 *
 * Blob body (format 1): the FAISS container of ix_faiss.h with nlist as its
 * parameter; after loading, the index must be an IndexIVFFlat with that
 * nlist whose lists hold n keys in all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVFFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ix.h"
#include "ix_faiss.h"

#define IVF_VERSION 1
#define IVF_ITERS 10
#define IVF_TRAIN_PER_LIST 64

struct fivf {
	struct index base;
	uint64_t n;
	unsigned d;
	uint32_t nlist;
	FaissIndex *index;        /* an IndexIVFFlat that owns its quantizer */
	FaissIndexIVF *ivf;       /* the same, as an IndexIVF */
	FaissIndex *quantizer;    /* owned by index */
	uint64_t *list_size;      /* [nlist] */
};

static const struct fivf *to_ivf(const struct index *ix)
{
	return ix && ix->policy == POLICY_FAISS_IVF ? (const struct fivf *)ix : NULL;
}

static void ivf_free(struct index *ix)
{
	struct fivf *fx = (struct fivf *)ix;
	if (!fx)
		return;
	IX_ASSERT(ix->policy == POLICY_FAISS_IVF);
	if (fx->index)
		faiss_Index_free(fx->index);
	free(fx->list_size);
	free(fx);
}

/* Pin nprobe to nlist and read the list sizes (after build or load). */
static int ivf_finish(struct fivf *fx)
{
	fx->ivf = faiss_IndexIVF_cast(fx->index);
	if (!fx->ivf || faiss_IndexIVF_nlist(fx->ivf) != fx->nlist)
		return -EBADMSG;
	fx->quantizer = faiss_IndexIVF_quantizer(fx->ivf);
	if (!fx->quantizer || faiss_Index_ntotal(fx->quantizer) != (idx_t)fx->nlist ||
	    faiss_Index_d(fx->quantizer) != (int)fx->d)
		return -EBADMSG;
	faiss_IndexIVF_set_nprobe(fx->ivf, fx->nlist);
	fx->list_size = malloc((size_t)fx->nlist * sizeof(uint64_t));
	if (!fx->list_size)
		return -ENOMEM;
	uint64_t total = 0;
	for (uint32_t l = 0; l < fx->nlist; l++) {
		fx->list_size[l] = faiss_IndexIVF_get_list_size(fx->ivf, l);
		total += fx->list_size[l];
	}
	return total == fx->n ? 0 : -EBADMSG;
}

static int ivf_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	const uint64_t n = keys->n;
	const unsigned d = keys->d;
	double want = 4 * sqrt((double)n);
	uint64_t cap = n / 8 ? n / 8 : 1;
	uint32_t nlist = (uint32_t)(want > (double)cap ? cap : want < 1 ? 1 : want + 0.5);
	unsigned threads = p ? p->threads : 0;
	int omp_saved = omp_get_max_threads();
	float *cent = NULL;
	FaissIndexFlatIP *quant = NULL;
	FaissIndexIVFFlat *ivf = NULL;
	struct fivf *fx = calloc(1, sizeof(*fx));
	int rc = -ENOMEM;
	if (!fx)
		goto out;
	fx->base.policy = POLICY_FAISS_IVF;
	fx->n = n;
	fx->d = d;
	fx->nlist = nlist;
	if (!(cent = malloc((size_t)nlist * d * sizeof(float))))
		goto out;
	if (threads)
		omp_set_num_threads((int)threads);
	/* the coarse quantizer: spherical k-means on a sample of 64 keys per list */
	if ((rc = ix_kmeans_ip(keys->k, n, d, nlist, IVF_ITERS, p ? p->seed : 0, IVF_TRAIN_PER_LIST, 0, cent, NULL)))
		goto out;
	if ((rc = ix_faiss_error(faiss_IndexFlatIP_new_with(&quant, (idx_t)d))) ||
	    (rc = ix_faiss_error(faiss_Index_add((FaissIndex *)quant, (idx_t)nlist, cent))))
		goto out;
	if ((rc = ix_faiss_error(faiss_IndexIVFFlat_new_with_metric(&ivf, (FaissIndex *)quant, (size_t)d, nlist,
								    METRIC_INNER_PRODUCT))))
		goto out;
	faiss_IndexIVFFlat_set_own_fields(ivf, 1);
	quant = NULL; /* the IVF owns it now */
	fx->index = (FaissIndex *)ivf;
	ivf = NULL;
	if (!faiss_Index_is_trained(fx->index)) {
		rc = -EIO;
		goto out;
	}
	if ((rc = ix_faiss_error(faiss_Index_add(fx->index, (idx_t)n, keys->k))))
		goto out;
	if ((rc = ivf_finish(fx)))
		rc = rc == -ENOMEM ? rc : -EIO;
out:
	if (threads)
		omp_set_num_threads(omp_saved);
	free(cent);
	if (quant)
		faiss_Index_free((FaissIndex *)quant);
	if (ivf)
		faiss_Index_free((FaissIndex *)ivf);
	if (rc) {
		ivf_free(fx ? &fx->base : NULL);
		return rc;
	}
	*out = &fx->base;
	return 0;
}

static int ivf_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
		      uint64_t budget, struct index_result *res)
{
	const struct fivf *fx = to_ivf(ix);
	if (!fx)
		return -EINVAL;
	int rc = ix_search_prologue(fx->n, fx->d, keys, 0, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const uint32_t nlist = fx->nlist;
	const double per_list = (double)fx->n / nlist;
	uint64_t nprobe = (uint64_t)ceil((double)budget / per_list);
	nprobe = nprobe < 1 ? 1 : nprobe > nlist ? nlist : nprobe;
	const size_t k = (size_t)budget;
	size_t off_cd = 0;
	size_t off_ca = off_cd + ix_align((size_t)G * nprobe * sizeof(float));
	size_t off_pd = off_ca + ix_align((size_t)G * nprobe * sizeof(idx_t));
	size_t off_pa = off_pd + ix_align((size_t)G * nlist * sizeof(float));
	size_t off_D = off_pa + ix_align((size_t)G * nlist * sizeof(idx_t));
	size_t off_L = off_D + ix_align((size_t)G * k * sizeof(float));
	size_t off_best = off_L + ix_align((size_t)G * k * sizeof(idx_t));
	size_t off_bits = off_best + ix_align((size_t)fx->n * sizeof(float));
	size_t off_lists = off_bits + ix_align(ix_bits_words(fx->n) * sizeof(uint64_t));
	size_t off_pool = off_lists + ix_align(ix_bits_words(nlist) * sizeof(uint64_t));
	size_t total = off_pool + (size_t)G * k * sizeof(struct ix_item);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *cd = (float *)(sc + off_cd), *pd = (float *)(sc + off_pd), *D = (float *)(sc + off_D);
	idx_t *ca = (idx_t *)(sc + off_ca), *pa = (idx_t *)(sc + off_pa), *L = (idx_t *)(sc + off_L);
	float *best = (float *)(sc + off_best);
	uint64_t *bits = (uint64_t *)(sc + off_bits), *lists = (uint64_t *)(sc + off_lists);
	struct ix_item *pool = (struct ix_item *)(sc + off_pool);

	rc = ix_faiss_error(faiss_Index_search(fx->quantizer, (idx_t)G, q, (idx_t)nprobe, cd, ca));
	if (rc)
		return rc;
	memset(lists, 0, ix_bits_words(nlist) * sizeof(uint64_t));
	res->scanned = nlist;
	for (unsigned g = 0; g < G; g++)
		for (size_t i = 0; i < nlist; i++) {
			idx_t l = i < nprobe ? ca[g * nprobe + i] : -1;
			pa[g * nlist + i] = l >= 0 && l < (idx_t)nlist ? l : -1;
			pd[g * nlist + i] = i < nprobe ? cd[g * nprobe + i] : -INFINITY;
			if (pa[g * nlist + i] >= 0 && !ix_bit_get(lists, (uint64_t)l)) {
				ix_bit_set(lists, (uint64_t)l);
				res->scanned += fx->list_size[l];
			}
		}
	rc = ix_faiss_error(faiss_IndexIVF_search_preassigned(fx->ivf, (idx_t)G, q, (idx_t)k, pa, pd, D, L, 0));
	if (rc)
		return rc;
	res->n_tokens = ix_merge_heads(D, L, G, k, fx->n, budget, best, bits, pool, res->tokens);
	return 0;
}

static int ivf_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct fivf *fx = to_ivf(ix);
	if (!fx || !buf || !len)
		return -EINVAL;
	return ix_faiss_save(fx->index, POLICY_FAISS_IVF, IVF_VERSION, fx->n, fx->d, fx->nlist, buf, len);
}

static int ivf_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	if (!out)
		return -EINVAL;
	struct fivf *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -ENOMEM;
	fx->base.policy = POLICY_FAISS_IVF;
	int rc = ix_faiss_read(buf, len, POLICY_FAISS_IVF, IVF_VERSION, &fx->n, &fx->d, &fx->nlist, &fx->index);
	if (!rc && keys && (keys->n != fx->n || keys->d != fx->d))
		rc = -EINVAL;
	if (!rc && (!fx->nlist || fx->nlist > fx->n))
		rc = -EBADMSG;
	if (!rc && !faiss_IndexIVFFlat_cast(fx->index))
		rc = -EBADMSG;
	if (!rc)
		rc = ivf_finish(fx);
	if (rc) {
		ivf_free(&fx->base);
		return rc;
	}
	*out = &fx->base;
	return 0;
}

static size_t ivf_memory(const struct index *ix)
{
	const struct fivf *fx = to_ivf(ix);
	if (!fx)
		return 0;
	/* codes and ids of every key, the quantizer's centroids, our list sizes */
	return sizeof(*fx) + fx->n * (fx->d * sizeof(float) + sizeof(idx_t)) +
	       (size_t)fx->nlist * (fx->d * sizeof(float) + sizeof(uint64_t) + 24);
}

const struct policy_ops faiss_ivf_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "faiss-ivf",
	.build = ivf_build,
	.search = ivf_search,
	.free = ivf_free,
	.save = ivf_save,
	.load = ivf_load,
	.memory = ivf_memory,
};
