/*
 * Leveled logs by subsystem ("ipc", "store", "attend", "daemon"), one line
 * each, to stderr: "2026-11-24T13:50:01.123Z info  ipc: message".
 * Thread-safe. A subsystem's level can be set apart from the default
 * (config "log-level = info,ipc=debug").
 */
#ifndef MNEMO_DAEMON_LOG_H
#define MNEMO_DAEMON_LOG_H

enum log_level { LOG_ERR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/**
 * Parse "LEVEL[,SUBSYS=LEVEL...]" and make it current.
 * @return 0, or -EINVAL with nothing changed
 */
int log_configure(const char *spec);

/** Whether a message of @p lvl from @p sys would be printed. */
int log_enabled(enum log_level lvl, const char *sys);

void log_msg(enum log_level lvl, const char *sys, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_err(sys, ...) log_msg(LOG_ERR, sys, __VA_ARGS__)
#define log_warn(sys, ...) log_msg(LOG_WARN, sys, __VA_ARGS__)
#define log_info(sys, ...) log_msg(LOG_INFO, sys, __VA_ARGS__)
#define log_debug(sys, ...) \
	do { if (log_enabled(LOG_DEBUG, sys)) log_msg(LOG_DEBUG, sys, __VA_ARGS__); } while (0)

#endif
