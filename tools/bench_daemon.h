/* The daemon mnemo-bench measures, for the suites outside bench.c. */
#ifndef MNEMO_TOOLS_BENCH_DAEMON_H
#define MNEMO_TOOLS_BENCH_DAEMON_H

#include <stddef.h>

#include "mnemo.h"

/**
 * Start mnemod (unless --socket names a running one) with its SSD tier in
 * @p ssd_dir (NULL: RAM only) and @p host_mem ("auto" when NULL), and
 * connect; exits with a message on failure.
 */
mnemo_client *bench_daemon_start(const char *argv0, const char *ssd_dir, const char *host_mem,
				 const char *estimates);
/** Stop the started daemon and remove its folder. */
void bench_daemon_stop(void);
/** Its socket path. */
const char *bench_daemon_socket(void);
/** mnemo-preload beside this binary. */
void bench_find_preload(char *out, size_t cap);

#endif
