/* mnemo-bench segment, and a trace's events for the retrieval suite (see bench_segment.c). */
#ifndef MNEMO_TOOLS_BENCH_SEGMENT_H
#define MNEMO_TOOLS_BENCH_SEGMENT_H

#include <stdint.h>

#include "events.h"
#include "safetensors.h"

struct bench_segment_opts {
	const char *trace;
	int json;
	unsigned layer;
	unsigned long long heads;      /* KV heads the graph sums over; 0: all */
	enum seg_metric metric;
	double gammas[16];             /* the boundary rule's gamma, swept */
	unsigned n_gammas;
};

/** Run the suite; 0, or a negative errno after a message on stderr. */
int bench_segment(const struct bench_segment_opts *o);

/**
 * The events of @p layer of an open trace as mnemod finds them: from its
 * `surprise` when it has one (else key novelty), refined over the first
 * @p heads KV heads (0: all) with the trace's rope_theta and first_position;
 * @p gamma the boundary rule's (0: 1.0); @p no_surprise: key novelty even when the trace has surprise.
 * @p used_surprise (may be NULL) says which. @return 0 or -errno (message on stderr).
 */
int bench_trace_events(struct st_file *f, unsigned layer, uint64_t heads, int refine, enum seg_metric metric,
		       float gamma, int no_surprise, unsigned threads, struct seg_layer_out *out, int *used_surprise);

#endif
