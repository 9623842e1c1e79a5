/* k-means through the FAISS C API; FAISS types stay in this file. */
#include "index.h"

#include <errno.h>
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/error_c.h>

/* FAISS reports an exception class (its own, std::, other) and keeps the
 * message per thread; the class tells nothing errno-worthy, so every failure
 * is -EIO and the message goes to the log through index_faiss_last_error(). */
static int faiss_error(int code)
{
	return code == 0 ? 0 : -EIO;
}

const char *index_faiss_last_error(void)
{
	const char *e = faiss_get_last_error();
	return e ? e : "";
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
	rc = faiss_error(faiss_Clustering_train(cl, (idx_t)n, x, (FaissIndex *)flat));
	if (rc)
		goto out;
	float *c = NULL;
	size_t len = 0;
	faiss_Clustering_centroids(cl, &c, &len);
	if (len != (size_t)k * d) {
		rc = -EIO;
		goto out;
	}
	for (size_t i = 0; i < len; i++)
		centroids[i] = c[i];
out:
	if (flat)
		faiss_Index_free((FaissIndex *)flat);
	if (cl)
		faiss_Clustering_free(cl);
	return rc;
}
