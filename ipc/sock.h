/*
 * Unix-socket transport pieces shared by the daemon and the client:
 * sending and receiving bytes with file descriptors (SCM_RIGHTS), and the
 * shared-memory arena a client attaches to its connection.
 *
 * Glossary
 *   arena  a memfd mapped by both sides; requests name bulk tensors in it by
 *          (offset, length), always checked against the arena's size.
 */
#ifndef MNEMO_IPC_SOCK_H
#define MNEMO_IPC_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/** Blocking send of all @p n bytes; the first sendmsg carries @p pass_fd if >= 0. */
int sock_send_all(int fd, const void *p, size_t n, int pass_fd);

/** Blocking receive of exactly @p n bytes (0, -ECONNRESET on EOF, or -errno). */
int sock_recv_all(int fd, void *p, size_t n);

/**
 * One non-blocking recvmsg. File descriptors that arrive are returned in
 * @p fds (at most @p max_fds, close-on-exec); any beyond that are closed.
 * @return bytes read (0 on EOF), -EAGAIN, -EBADMSG when the control data was
 *         truncated (every fd received is closed), or -errno.
 */
ssize_t sock_recv_fds(int fd, void *p, size_t n, int *fds, int max_fds, int *nfds);

struct shm_arena {
	int fd;
	uint8_t *base;
	size_t size;
};

/** Client side: a sealed-against-shrinking memfd of @p size bytes, mapped. */
int shm_arena_create(size_t size, struct shm_arena *a);

/**
 * Daemon side: map a peer's memfd after checking that it is a sealed memfd
 * of exactly @p size bytes. Takes ownership of @p fd in every case (closed on
 * failure). -EINVAL when the size or the seal is wrong.
 */
int shm_arena_adopt(int fd, uint64_t size, struct shm_arena *a);

void shm_arena_close(struct shm_arena *a);

/** True when [off, off+len) lies inside the arena (overflow-safe). */
bool shm_arena_range_ok(const struct shm_arena *a, uint64_t off, uint64_t len);

#endif
