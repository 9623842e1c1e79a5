/* The table of retrieval policies: one line per policy. */
#include "index.h"

#include <string.h>

static const struct index_ops exact_ops = {
	.version = INDEX_OPS_VERSION,
	.name = "exact",
	.policy = POLICY_EXACT,
};

static const struct index_ops *const policies[POLICY_COUNT] = {
	[POLICY_EXACT] = &exact_ops,
};

const struct index_ops *index_ops_get(uint32_t policy)
{
	return policy < POLICY_COUNT ? policies[policy] : NULL;
}

const struct index_ops *index_ops_by_name(const char *name)
{
	for (unsigned i = 0; i < POLICY_COUNT; i++)
		if (policies[i] && !strcmp(policies[i]->name, name))
			return policies[i];
	return NULL;
}
