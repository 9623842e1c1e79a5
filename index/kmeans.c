/* k-means through the FAISS C API; FAISS types stay in index/. */
#include "index.h"
#include "ix.h"

#include <errno.h>
#include <string.h>
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <omp.h>
#include <stdlib.h>

/* FAISS reports an exception class (its own, std::, other) and keeps the
 * message per thread; the class tells nothing errno-worthy, so every failure
 * is -EIO and the message goes to the log through index_faiss_last_error(). */
static int faiss_error(int code)
{
	return code == 0 ? 0 : -EIO;
}

int ix_faiss_error(int code)
{
	return faiss_error(code);
}

const char *index_faiss_last_error(void)
{
	const char *e = faiss_get_last_error();
	return e ? e : "";
}

/* Train @p cl with @p index as its assigner and copy out the k x d centroids. */
static int train_copy(FaissClustering *cl, FaissIndex *index, const float *x, size_t n, unsigned d,
		      unsigned k, float *centroids)
{
	int rc = faiss_error(faiss_Clustering_train(cl, (idx_t)n, x, index));
	if (rc)
		return rc;
	float *c = NULL;
	size_t len = 0;
	faiss_Clustering_centroids(cl, &c, &len);
	if (len != (size_t)k * d)
		return -EIO;
	memcpy(centroids, c, len * sizeof(float));
	return 0;
}

int index_kmeans(const float *x, size_t n, unsigned d, unsigned k, unsigned iters,
		 uint32_t seed, float *centroids)
{
	if (!n || !d || !k || k > n)
		return -EINVAL;
	FaissClusteringParameters cp;
	faiss_ClusteringParameters_init(&cp);
	cp.niter = (int)iters;
	cp.seed = (int)seed;
	cp.verbose = 0;
	/* Let k-means see every point: its default subsamples to 256 per centroid. */
	cp.max_points_per_centroid = (int)((n + k - 1) / k);

	FaissClustering *cl = NULL;
	FaissIndexFlatL2 *flat = NULL;
	int rc = faiss_error(faiss_Clustering_new_with_params(&cl, (int)d, (int)k, &cp));
	if (rc)
		goto out;
	rc = faiss_error(faiss_IndexFlatL2_new_with(&flat, (idx_t)d));
	if (rc)
		goto out;
	rc = train_copy(cl, (FaissIndex *)flat, x, n, d, k, centroids);
out:
	if (flat)
		faiss_Index_free((FaissIndex *)flat);
	if (cl)
		faiss_Clustering_free(cl);
	return rc;
}

int ix_kmeans_ip(const float *x, size_t n, unsigned d, unsigned k, unsigned iters, uint32_t seed, unsigned max_per,
		 unsigned threads, float *centroids, uint32_t *assign)
{
	if (!n || !d || !k || k > n || !iters)
		return -EINVAL;
	FaissClusteringParameters cp;
	faiss_ClusteringParameters_init(&cp);
	cp.niter = (int)iters;
	cp.seed = (int)seed;
	cp.verbose = 0;
	cp.spherical = 1;
	/* few points per centroid is what we ask for: no warning about it */
	cp.min_points_per_centroid = 1;
	cp.max_points_per_centroid = max_per ? (int)max_per : (int)((n + k - 1) / k);

	FaissClustering *cl = NULL;
	FaissIndexFlatIP *ip = NULL, *cent = NULL;
	float *dist = NULL;
	idx_t *lab = NULL;
	int omp_saved = omp_get_max_threads();
	if (threads)
		omp_set_num_threads((int)threads);
	int rc = faiss_error(faiss_Clustering_new_with_params(&cl, (int)d, (int)k, &cp));
	if (rc)
		goto out;
	rc = faiss_error(faiss_IndexFlatIP_new_with(&ip, (idx_t)d));
	if (rc)
		goto out;
	rc = train_copy(cl, (FaissIndex *)ip, x, n, d, k, centroids);
	if (rc || !assign)
		goto out;
	/* the final assignment, against the final centroids */
	dist = malloc(n * sizeof(*dist));
	lab = malloc(n * sizeof(*lab));
	if (!dist || !lab) {
		rc = -ENOMEM;
		goto out;
	}
	rc = faiss_error(faiss_IndexFlatIP_new_with(&cent, (idx_t)d));
	if (rc)
		goto out;
	rc = faiss_error(faiss_Index_add((FaissIndex *)cent, (idx_t)k, centroids));
	if (rc)
		goto out;
	rc = faiss_error(faiss_Index_search((FaissIndex *)cent, (idx_t)n, x, 1, dist, lab));
	if (rc)
		goto out;
	for (size_t i = 0; i < n; i++) {
		/* a NaN point finds no neighbour: any cluster will do */
		assign[i] = lab[i] >= 0 && lab[i] < (idx_t)k ? (uint32_t)lab[i] : 0;
	}
out:
	free(lab);
	free(dist);
	if (cent)
		faiss_Index_free((FaissIndex *)cent);
	if (ip)
		faiss_Index_free((FaissIndex *)ip);
	if (cl)
		faiss_Clustering_free(cl);
	if (threads)
		omp_set_num_threads(omp_saved);
	return rc;
}
