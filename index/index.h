/*
 * Indexes over stored keys, one ops table per retrieval policy.
 *
 * Glossary
 *   policy   how an ATTEND picks tokens: exact (every token), or an indexed
 *            policy whose methods (struct policy_ops, policy.h) build an
 *            index over a segment's keys and search it
 *   segment  a run of sealed blocks indexed together
 *
 * The FAISS C API is used only inside this folder; its errors are mapped to
 * negative errno by index_faiss_error().
 */
#ifndef MNEMO_INDEX_INDEX_H
#define MNEMO_INDEX_INDEX_H

#include <stddef.h>
#include <stdint.h>

/** Wire values of the policies (ATTEND's policy field). */
enum index_policy {
	POLICY_EXACT = 0,         /**< "exact": every token, no index */
	POLICY_QUEST = 1,         /**< "quest": per-page min/max bounds (Quest) */
	POLICY_BLOCKS = 2,        /**< "blocks": 128-token blocks, 4 representatives (InfLLM) */
	POLICY_CENTROIDS = 3,     /**< "centroids": spherical k-means clusters (RetroInfer, Squeezed Attention) */
	POLICY_CENTROIDS2 = 4,    /**< "centroids2": the same with a coarse level above (hierarchical) */
	POLICY_FAISS_IVF = 5,     /**< "faiss-ivf": FAISS IndexIVFFlat, inner product (baseline) */
	POLICY_FAISS_HNSW = 6,    /**< "faiss-hnsw": FAISS IndexHNSWFlat, inner product (baseline) */
	POLICY_ANN = 7,           /**< "ann": query-aware graph over keys (RetrievalAttention) */
	POLICY_EPISODIC = 8,      /**< "episodic": events from surprise, similarity + contiguity (EM-LLM) */
	POLICY_COUNT
};

#define INDEX_OPS_VERSION 1

struct policy_ops;

/**
 * A policy's entry in the table. A policy without an index (exact) has no
 * methods (@c ops NULL): the request path then attends over the whole range.
 */
struct index_ops {
	uint32_t version;
	const char *name;
	enum index_policy policy;
	const struct policy_ops *ops;   /**< build, search, persist (policy.h); NULL for exact */
};

/** The ops of @p policy, or NULL when this build has no such policy. */
const struct index_ops *index_ops_get(uint32_t policy);

/** The ops whose name is @p name, or NULL. */
const struct index_ops *index_ops_by_name(const char *name);

/**
 * k-means through FAISS: @p k centroids of @p n points of dimension @p d.
 * @param x          [n][d] points
 * @param iters      Lloyd iterations
 * @param seed       random seed (deterministic results for a fixed seed)
 * @param centroids  [k][d] output
 * @return 0, -EINVAL (k > n or a zero size), -ENOMEM, -EIO (FAISS failed)
 */
int index_kmeans(const float *x, size_t n, unsigned d, unsigned k, unsigned iters,
		 uint32_t seed, float *centroids);

/** The message of FAISS's last error on this thread ("" if none). */
const char *index_faiss_last_error(void);

#endif
