/* mnemo-bench decode: options and entry point (see bench_decode.c). */
#ifndef MNEMO_TOOLS_BENCH_DECODE_H
#define MNEMO_TOOLS_BENCH_DECODE_H

struct bench_decode_opts {
	const char *trace;
	int json;
	const char *policies[16];
	unsigned n_policies;
	double budgets[16];            /* < 1: a fraction of the tokens; >= 1: a token count */
	unsigned n_budgets;
	unsigned long long steps;      /* 0: every decode query position */
	unsigned exact_layers;         /* layers attended exactly per step (the baseline); 0: 1 */
	int exact_step;                /* measure one whole exact step too */
	const char *host_mem;          /* mnemod --host-mem; NULL: its default */
	int estimates;                 /* mnemod --estimates on (else off) */
	double quest_rerank;           /* mnemod --quest-rerank (0: Quest's own search) */
	double quest_cohere;           /* mnemod --quest-cohere */
	const char *dir;               /* where the SSD tier lives; NULL: /var/tmp */
};

/** Run the suite; 0, or a negative errno after a message on stderr. */
int bench_decode(const char *argv0, const struct bench_decode_opts *o);

#endif
