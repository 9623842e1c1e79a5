/* The table of retrieval policies: one line per policy. */
#include "index.h"
#include "policy.h"

#include <string.h>

extern const struct policy_ops quest_policy_ops;
extern const struct policy_ops blocks_policy_ops;
extern const struct policy_ops centroids_policy_ops;
extern const struct policy_ops centroids2_policy_ops;
extern const struct policy_ops faiss_ivf_policy_ops;
extern const struct policy_ops faiss_hnsw_policy_ops;
extern const struct policy_ops ann_policy_ops;
extern const struct policy_ops episodic_policy_ops;

#define POLICY(id, str, methods)                                                          \
	[id] = &(const struct index_ops){ .version = INDEX_OPS_VERSION, .name = str, .policy = id, \
					  .ops = methods }

static const struct index_ops *const policies[POLICY_COUNT] = {
	POLICY(POLICY_EXACT, "exact", NULL),
	POLICY(POLICY_QUEST, "quest", &quest_policy_ops),
	POLICY(POLICY_BLOCKS, "blocks", &blocks_policy_ops),
	POLICY(POLICY_CENTROIDS, "centroids", &centroids_policy_ops),
	POLICY(POLICY_CENTROIDS2, "centroids2", &centroids2_policy_ops),
	POLICY(POLICY_FAISS_IVF, "faiss-ivf", &faiss_ivf_policy_ops),
	POLICY(POLICY_FAISS_HNSW, "faiss-hnsw", &faiss_hnsw_policy_ops),
	POLICY(POLICY_ANN, "ann", &ann_policy_ops),
	POLICY(POLICY_EPISODIC, "episodic", &episodic_policy_ops),
};

const struct index_ops *index_ops_get(uint32_t policy)
{
	return policy < POLICY_COUNT ? policies[policy] : NULL;
}

const struct index_ops *index_ops_by_name(const char *name)
{
	if (!name)
		return NULL;
	for (unsigned i = 0; i < POLICY_COUNT; i++)
		if (policies[i] && !strcmp(policies[i]->name, name))
			return policies[i];
	return NULL;
}

const struct policy_ops *policy_ops_get(uint32_t policy)
{
	const struct index_ops *io = index_ops_get(policy);
	return io ? io->ops : NULL;
}
