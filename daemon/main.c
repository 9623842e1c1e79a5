/* mnemod: wire the tiers, the store, the worker pool and the loop together. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attend.h"
#include "catalog.h"
#include "config.h"
#include "kernels.h"
#include "log.h"
#include "pool.h"
#include "prefix.h"
#include "server.h"
#include "ssd.h"
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

	{
		char *end;
		double gamma = strtod(cfg.episodic_gamma, &end);
		const int est_on = !strcmp(cfg.estimates, "on"), est_off = !strcmp(cfg.estimates, "off");
		if (!est_on && !est_off) {
			fprintf(stderr, "mnemod: --estimates %s: need on or off\n", cfg.estimates);
			return 2;
		}
		char *rend;
		const double rerank = strtod(cfg.quest_rerank, &rend);
		if (rend == cfg.quest_rerank || *rend || !(rerank == 0 || (rerank > 1 && rerank <= 1024))) {
			fprintf(stderr, "mnemod: --quest-rerank %s: need 0 or a number in (1, 1024]\n", cfg.quest_rerank);
			return 2;
		}
		const double cohere = strtod(cfg.quest_cohere, &rend);
		if (rend == cfg.quest_cohere || *rend || !(cohere >= 0 && cohere < 1)) {
			fprintf(stderr, "mnemod: --quest-cohere %s: need a number in [0, 1)\n", cfg.quest_cohere);
			return 2;
		}
		struct attend_policy_config pc = { .gamma = (float)gamma, .no_estimates = est_off,
						   .quest_rerank = (float)rerank, .quest_cohere = (float)cohere };
		if (end == cfg.episodic_gamma || *end || !(gamma > 0 && gamma < 1e6) || attend_policy_configure(&pc)) {
			fprintf(stderr, "mnemod: --episodic-gamma %s: need a number > 0\n", cfg.episodic_gamma);
			return 2;
		}
	}

	struct daemon_ctx d = { .cfg = &cfg };
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	d.start_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
	int rc, status = 1;

	struct catalog *cat = NULL;
	if ((rc = mkdir_p(cfg.data_dir, 0700))) {
		log_err("daemon", "cannot create data dir %s: %s", cfg.data_dir, strerror(-rc));
		goto out;
	}
	struct tier_config tc = { .budget_bytes = cfg.host_mem,
				  .align = strcmp(cfg.ssd_dir, "none") ? SSD_ALIGN : 64 };
	if ((rc = tier_host_ops.open(&tc, &d.host))) {
		log_err("daemon", "host tier: %s", strerror(-rc));
		goto out;
	}
	char sidedir[PATH_MAX + 16];
	snprintf(sidedir, sizeof(sidedir), "%s/indexes", cfg.data_dir);
	if (strcmp(cfg.ssd_dir, "none")) {
		char catdir[PATH_MAX + 16];
		if ((rc = mkdir_p(cfg.ssd_dir, 0700)) || (rc = ssd_open(cfg.ssd_dir, cfg.ssd_max, &d.ssd))) {
			log_err("daemon", "ssd tier at %s: %s%s", cfg.ssd_dir, strerror(-rc),
				rc == -EINVAL ? " (the file system refuses O_DIRECT: tmpfs? choose another --ssd-dir)" : "");
			goto out_tier;
		}
		snprintf(catdir, sizeof(catdir), "%s/catalog", cfg.data_dir);
		if ((rc = catalog_open(catdir, &cat))) {
			log_err("daemon", "catalog at %s: %s", catdir, strerror(-rc));
			goto out_ssd;
		}
	} else {
		log_warn("daemon", "--ssd-dir none: contexts live in RAM only and are lost on exit");
	}
	struct store_config sc = { .block_tokens = cfg.block_tokens, .host_ops = &tier_host_ops,
				   .host = d.host, .ssd = d.ssd, .catalog = cat,
				   /* retrieval indexes survive a restart with the blocks they index */
				   .side_dir = d.ssd ? sidedir : NULL, .stream_sync_bytes = cfg.stream_sync };
	const char *why = NULL;
	if ((rc = store_open(&sc, &d.store, &why))) {
		log_err("daemon", "store: %s (%s)", why ? why : "cannot open", strerror(-rc));
		goto out_cat;
	}
	{
		struct store_stats ss;
		store_stats(d.store, &ss);
		if (ss.recovered_contexts)
			log_info("store", "recovered %llu contexts from %s", (unsigned long long)ss.recovered_contexts,
				 cfg.data_dir);
	}
	if ((rc = prefix_open(&d.prefix)) || (rc = prefix_restore(d.prefix, d.store))) {
		log_err("daemon", "prefix table: %s", strerror(-rc));
		goto out_prefix;
	}
	if ((rc = pool_start(cfg.workers, &d.pool))) {
		log_err("daemon", "worker pool: %s", strerror(-rc));
		goto out_prefix;
	}
	log_info("daemon", "attention kernels: %s", attn_kernels_best()->name);
	rc = server_run(&d);
	status = rc ? 1 : 0;

	pool_stop(d.pool);
out_prefix:
	prefix_close(d.prefix);
	store_destroy(d.store);
out_cat:
	catalog_close(cat);
out_ssd:
	if (d.ssd)
		ssd_close(d.ssd);
out_tier:
	tier_host_ops.close(d.host);
out:
	if (!status)
		log_info("daemon", "exited cleanly");
	return status;
}
