/* mnemo-bench retrieval: options and entry point (see bench_retrieval.c). */
#ifndef MNEMO_TOOLS_BENCH_RETRIEVAL_H
#define MNEMO_TOOLS_BENCH_RETRIEVAL_H

struct bench_retrieval_opts {
	const char *trace;
	int json;
	unsigned layer;
	unsigned long long heads;      /* 0: all KV heads */
	unsigned long long queries;    /* 0: every decode query */
	const char *policies[16];
	unsigned n_policies;
	double budgets[16];            /* < 1: a fraction of the tokens; >= 1: a token count */
	unsigned n_budgets;
	double coarse_factor;          /* centroids2 tuning; 0: the policy's default */
	double rerank;                 /* quest tuning (index_build_params.rerank); 0: Quest's own search */
	double cohere;                 /* quest tuning at search (index_result.cohere) */
	double beam_factor;            /* ann tuning, set after build or load; 0: the index's own */
	double gamma;                  /* episodic: the boundary rule's gamma; 0: 1.0 */
	const char *index_dir;         /* built indexes saved here and loaded on the next run; NULL: none */
};

/** Run the suite; 0, or a negative errno after a message on stderr. */
int bench_retrieval(const struct bench_retrieval_opts *o);

#endif
