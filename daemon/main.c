/* mnemod: wire the tiers, the store, the worker pool and the loop together. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "kernels.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "store.h"
#include "tier.h"

int main(int argc, char **argv)
{
	struct config cfg;
	switch (config_load(&cfg, argc, argv)) {
	case CONFIG_EXIT_OK: return 0;
	case CONFIG_EXIT_ERR: return 2;
	case CONFIG_RUN: break;
	}

	struct daemon_ctx d = { .cfg = &cfg };
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	d.start_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
	int rc, status = 1;

	struct tier_config tc = { .budget_bytes = cfg.host_mem };
	if ((rc = tier_host_ops.open(&tc, &d.host))) {
		log_err("daemon", "host tier: %s", strerror(-rc));
		goto out;
	}
	struct store_config sc = { .block_tokens = cfg.block_tokens, .host_ops = &tier_host_ops,
				   .host = d.host };
	if ((rc = store_open(&sc, &d.store))) {
		log_err("daemon", "store: %s", strerror(-rc));
		goto out_tier;
	}
	if ((rc = pool_start(cfg.workers, &d.pool))) {
		log_err("daemon", "worker pool: %s", strerror(-rc));
		goto out_store;
	}
	log_info("daemon", "attention kernels: %s", attn_kernels_best()->name);
	rc = server_run(&d);
	status = rc ? 1 : 0;

	pool_stop(d.pool);
out_store:
	store_destroy(d.store);
out_tier:
	tier_host_ops.close(d.host);
out:
	if (!status)
		log_info("daemon", "exited cleanly");
	return status;
}
