/*
 * mnemod's settings: one table gives every option its name, type, default,
 * limits and help, and drives the config file, the command line, --help and
 * --print-config alike, so the four can never disagree.
 */
#ifndef MNEMO_DAEMON_CONFIG_H
#define MNEMO_DAEMON_CONFIG_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

struct config {
	char socket[PATH_MAX];
	char data_dir[PATH_MAX];
	uint64_t host_mem;
	char ssd_dir[PATH_MAX];
	uint64_t ssd_max;
	uint64_t stream_sync;
	uint32_t block_tokens;
	uint32_t workers;
	uint64_t max_frame;
	uint32_t max_connections;
	uint32_t drain_seconds;
	char log_level[128];
	char episodic_gamma[32];  /* a float, checked by main (the table has no float type) */
	char estimates[8];        /* on or off, checked by main */
	char quest_rerank[32];    /* 0 or a number in (1, 1024], checked by main */
	char quest_cohere[32];    /* a number in [0, 1), checked by main */
};

enum config_action { CONFIG_RUN, CONFIG_EXIT_OK, CONFIG_EXIT_ERR };

/**
 * Fill @p c from defaults, then the config file (--config FILE), then the
 * other flags, which win. Prints --help, --version and --print-config
 * itself (CONFIG_EXIT_OK) and explains every bad value on stderr
 * (CONFIG_EXIT_ERR).
 */
enum config_action config_load(struct config *c, int argc, char **argv);

/** Write the effective settings in config-file syntax. */
void config_print(const struct config *c, FILE *f);

#endif
