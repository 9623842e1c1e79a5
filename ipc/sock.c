/* Unix-socket transport with fd passing, and the shared-memory arena. */
#define _GNU_SOURCE
#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int sock_send_all(int fd, const void *p, size_t n, int pass_fd)
{
	const uint8_t *b = p;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	while (n > 0) {
		struct iovec iov = { .iov_base = (void *)b, .iov_len = n };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (pass_fd >= 0) {
			memset(&ctl, 0, sizeof(ctl));
			msg.msg_control = ctl.buf;
			msg.msg_controllen = sizeof(ctl.buf);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
		}
		ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		pass_fd = -1;   /* the fd travels with the first byte only */
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

int sock_recv_all(int fd, void *p, size_t n)
{
	uint8_t *b = p;
	while (n > 0) {
		ssize_t r = recv(fd, b, n, 0);
		if (r == 0)
			return -ECONNRESET;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

ssize_t sock_recv_fds(int fd, void *p, size_t n, int *fds, int max_fds, int *nfds)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} ctl;
	struct iovec iov = { .iov_base = p, .iov_len = n };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	*nfds = 0;
	ssize_t r;
	do
		r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;

	bool extra = false;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < cnt; i++) {
			int got;
			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < max_fds) {
				fds[(*nfds)++] = got;
			} else {
				close(got);
				extra = true;
			}
		}
	}
	if (msg.msg_flags & MSG_CTRUNC) {
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return -EBADMSG;
	}
	(void)extra;  /* the caller sees nfds == max_fds and treats more as an error */
	return r;
}

int shm_arena_create(size_t size, struct shm_arena *a)
{
	int rc;
	a->fd = -1;
	a->base = NULL;
	a->size = 0;
	if (size == 0)
		return -EINVAL;
	int fd = memfd_create("mnemo-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
		rc = -errno;
		goto fail;
	}
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	a->fd = fd;
	a->base = p;
	a->size = size;
	return 0;
fail:
	close(fd);
	return rc;
}

int shm_arena_adopt(int fd, uint64_t size, struct shm_arena *a)
{
	struct stat st;
	int rc = -EINVAL;
	a->fd = -1;
	a->base = NULL;
	a->size = 0;
	if (size == 0 || size > SIZE_MAX)
		goto fail;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
		goto fail;
	/* Without the shrink seal the client could truncate the file under our
	 * mapping and make the daemon fault on a later read. */
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK))
		goto fail;
	void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	a->fd = fd;
	a->base = p;
	a->size = (size_t)size;
	return 0;
fail:
	close(fd);
	return rc;
}

void shm_arena_close(struct shm_arena *a)
{
	if (a->base)
		munmap(a->base, a->size);
	if (a->fd >= 0)
		close(a->fd);
	a->base = NULL;
	a->fd = -1;
	a->size = 0;
}

bool shm_arena_range_ok(const struct shm_arena *a, uint64_t off, uint64_t len)
{
	return a->base && off <= a->size && len <= a->size - off;
}
