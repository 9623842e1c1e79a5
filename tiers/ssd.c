/* SSD tier: per-context block files, a slot allocator, O_DIRECT through io_uring. */
#define _GNU_SOURCE
#include "ssd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "record.h"

#define RING_DEPTH 128u

struct ssd {
	char dir[4096];
	uint64_t max_bytes;
	_Atomic uint64_t used;
	_Atomic uint64_t reads, writes, read_bytes, write_bytes, syncs, errors;
};

struct ssd_file {
	struct ssd *s;
	uint64_t ctx_id;
	int fd;
	uint32_t slot_bytes;
	pthread_mutex_t mu;
	uint64_t *bits;           /* 1 = slot in use */
	uint64_t n_words;
	uint64_t hint;            /* no free slot below this word */
	uint64_t used;
	uint64_t reserved;        /* bytes fallocate'd: extending writes are slow on most file systems */
};

/* Files grow by this much at a time, so writes rarely extend them. */
#define GROW_BYTES (64ull << 20)

/* One ring per thread: workers submit their own batches without locking. */
static __thread struct io_uring ring;
static __thread bool ring_ready;
static __thread pid_t ring_pid;

static int get_ring(struct io_uring **out)
{
	/* a forked child shares its parent's ring memory: using it would
	 * corrupt both, so the child lets go of its copy and makes its own */
	if (ring_ready && ring_pid != getpid()) {
		io_uring_queue_exit(&ring);
		ring_ready = false;
	}
	if (!ring_ready) {
		int rc = io_uring_queue_init(RING_DEPTH, &ring, 0);
		if (rc < 0)
			return rc;
		ring_ready = true;
		ring_pid = getpid();
	}
	*out = &ring;
	return 0;
}

static void file_path(const struct ssd *s, uint64_t id, char *out, size_t cap)
{
	snprintf(out, cap, "%s/ctx-%016" PRIx64 ".blk", s->dir, id);
}

int ssd_open(const char *dir, uint64_t max_bytes, struct ssd **out)
{
	if (strlen(dir) >= sizeof(((struct ssd *)0)->dir) - 32)
		return -ENAMETOOLONG;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	/* O_DIRECT is refused by some file systems (tmpfs): find out now, not
	 * at the first block. */
	char probe[4200];
	snprintf(probe, sizeof(probe), "%s/.odirect-probe", dir);
	int fd = open(probe, O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno == EINVAL ? -EINVAL : -errno;
	close(fd);
	unlink(probe);
	struct ssd *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	strcpy(s->dir, dir);
	s->max_bytes = max_bytes;
	*out = s;
	return 0;
}

void ssd_close(struct ssd *s)
{
	free(s);
}

const char *ssd_dir(const struct ssd *s)
{
	return s->dir;
}

uint32_t ssd_slot_bytes(size_t block_bytes)
{
	return (uint32_t)((block_bytes + SSD_ALIGN - 1) / SSD_ALIGN * SSD_ALIGN);
}

int ssd_file_open(struct ssd *s, uint64_t ctx_id, uint32_t slot_bytes, bool create,
		  struct ssd_file **out)
{
	if (slot_bytes == 0 || slot_bytes % SSD_ALIGN)
		return -EINVAL;
	char path[4200];
	file_path(s, ctx_id, path, sizeof(path));
	int fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0)
		return -errno;
	struct ssd_file *f = calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	f->s = s;
	f->ctx_id = ctx_id;
	f->fd = fd;
	f->slot_bytes = slot_bytes;
	pthread_mutex_init(&f->mu, NULL);
	*out = f;
	return 0;
}

void ssd_file_close(struct ssd_file *f)
{
	if (!f)
		return;
	close(f->fd);
	pthread_mutex_destroy(&f->mu);
	free(f->bits);
	free(f);
}

void ssd_file_remove(struct ssd_file *f)
{
	char path[4200];
	file_path(f->s, f->ctx_id, path, sizeof(path));
	atomic_fetch_sub(&f->s->used, f->used * f->slot_bytes);
	f->used = 0;
	unlink(path);
	ssd_file_close(f);
}

uint32_t ssd_file_slot_bytes(const struct ssd_file *f)
{
	return f->slot_bytes;
}

static int grow_bits(struct ssd_file *f, uint64_t words)
{
	if (words <= f->n_words)
		return 0;
	uint64_t n = f->n_words ? f->n_words : 16;
	while (n < words)
		n *= 2;
	uint64_t *b = realloc(f->bits, n * sizeof(*b));
	if (!b)
		return -ENOMEM;
	memset(b + f->n_words, 0, (n - f->n_words) * sizeof(*b));
	f->bits = b;
	f->n_words = n;
	return 0;
}

/* Charge one slot to the tier's budget. */
static int charge(struct ssd *s, uint32_t bytes)
{
	uint64_t cur = atomic_load(&s->used);
	do {
		if (s->max_bytes && (bytes > s->max_bytes || cur > s->max_bytes - bytes))
			return -ENOSPC;
	} while (!atomic_compare_exchange_weak(&s->used, &cur, cur + bytes));
	return 0;
}

int ssd_slot_alloc(struct ssd_file *f, uint64_t *slot)
{
	int rc = charge(f->s, f->slot_bytes);
	if (rc)
		return rc;
	pthread_mutex_lock(&f->mu);
	uint64_t w = f->hint;
	while (w < f->n_words && f->bits[w] == UINT64_MAX)
		w++;
	if (w == f->n_words && (rc = grow_bits(f, w + 1))) {
		pthread_mutex_unlock(&f->mu);
		atomic_fetch_sub(&f->s->used, f->slot_bytes);
		return rc;
	}
	unsigned bit = (unsigned)__builtin_ctzll(~f->bits[w]);
	uint64_t end = (w * 64 + bit + 1) * f->slot_bytes;
	if (end > f->reserved) {
		/* reserve ahead, size included: ext4 serialises O_DIRECT writes that
		 * extend a file, and a full file system says so here, before any write */
		uint64_t want = end + GROW_BYTES - 1;
		want -= want % GROW_BYTES;
		if (fallocate(f->fd, 0, (off_t)f->reserved, (off_t)(want - f->reserved)) == 0) {
			f->reserved = want;
		} else if (errno == EOPNOTSUPP) {
			f->reserved = UINT64_MAX;      /* writes will extend the file instead */
		} else if (fallocate(f->fd, 0, (off_t)f->reserved,
				     (off_t)(end - f->reserved)) == 0) {
			f->reserved = end;             /* nearly full: this slot only */
		} else {
			rc = -errno;
			pthread_mutex_unlock(&f->mu);
			atomic_fetch_sub(&f->s->used, f->slot_bytes);
			return rc;
		}
	}
	f->bits[w] |= 1ull << bit;
	f->hint = w;
	f->used++;
	*slot = w * 64 + bit;
	pthread_mutex_unlock(&f->mu);
	return 0;
}

void ssd_slot_free(struct ssd_file *f, uint64_t slot)
{
	pthread_mutex_lock(&f->mu);
	uint64_t w = slot / 64, m = 1ull << (slot % 64);
	bool was = w < f->n_words && (f->bits[w] & m);
	if (was) {
		f->bits[w] &= ~m;
		f->used--;
		if (w < f->hint)
			f->hint = w;
	}
	pthread_mutex_unlock(&f->mu);
	if (was)
		atomic_fetch_sub(&f->s->used, f->slot_bytes);
}

int ssd_slot_claim(struct ssd_file *f, uint64_t slot)
{
	pthread_mutex_lock(&f->mu);
	int rc = grow_bits(f, slot / 64 + 1);
	uint64_t m = 1ull << (slot % 64);
	if (!rc && (f->bits[slot / 64] & m))
		rc = -EEXIST;
	if (!rc) {
		f->bits[slot / 64] |= m;
		f->used++;
		/* recovery charges without a cap: what is on disk is there already */
		atomic_fetch_add(&f->s->used, f->slot_bytes);
	}
	pthread_mutex_unlock(&f->mu);
	return rc;
}

static void prep(struct io_uring_sqe *sqe, struct ssd_io *io)
{
	uint32_t len = io->f->slot_bytes - io->done;
	uint64_t off = io->slot * io->f->slot_bytes + io->done;
	uint8_t *buf = (uint8_t *)io->buf + io->done;
	if (io->buf2) {
		unsigned n = 0;
		if (io->done < io->split)
			io->iov[n++] = (struct iovec){ (uint8_t *)io->buf + io->done, io->split - io->done };
		const uint32_t in2 = io->done > io->split ? io->done - io->split : 0;
		io->iov[n++] = (struct iovec){ (uint8_t *)io->buf2 + in2, io->f->slot_bytes - io->split - in2 };
		if (io->write)
			io_uring_prep_writev(sqe, io->f->fd, io->iov, n, off);
		else
			io_uring_prep_readv(sqe, io->f->fd, io->iov, n, off);
		io_uring_sqe_set_data(sqe, io);
		return;
	}
	if (io->write)
		io_uring_prep_write(sqe, io->f->fd, buf, len, off);
	else
		io_uring_prep_read(sqe, io->f->fd, buf, len, off);
	io_uring_sqe_set_data(sqe, io);
}

int ssd_submit(struct ssd *s, struct ssd_io *ios, unsigned n)
{
	return ssd_submit_qd(s, ios, n, RING_DEPTH);
}

/*
 * A run of I/Os of a batch on consecutive slots of one file, in one
 * direction, sent as one readv/writev: the disk sees one large request
 * where the store made one per block. A run that fails or comes back short
 * is split and its I/Os resubmitted one by one, so errors and checks stay
 * per block.
 */
struct run {
	unsigned first, count;
	uint64_t bytes;
	struct iovec *iov;
	unsigned n_iov;
};

#define RUN_MAX_BYTES (1u << 20)
#define RUN_MAX_IOS 64u
#define TAG_RUN 1u

/* How many I/Os from @p i on can share one request. */
static unsigned run_length(const struct ssd_io *ios, unsigned n, unsigned i)
{
	const uint32_t sb = ios[i].f->slot_bytes;
	unsigned k = 1;
	while (i + k < n && k < RUN_MAX_IOS && (uint64_t)(k + 1) * sb <= RUN_MAX_BYTES &&
	       ios[i + k].f == ios[i].f && ios[i + k].write == ios[i].write &&
	       ios[i + k].slot == ios[i].slot + k)
		k++;
	return k;
}

static void prep_run(struct io_uring_sqe *sqe, struct run *g, struct ssd_io *ios)
{
	struct ssd_io *io0 = &ios[g->first];
	const uint64_t off = io0->slot * io0->f->slot_bytes;
	g->n_iov = 0;
	g->bytes = 0;
	for (unsigned k = 0; k < g->count; k++) {
		struct ssd_io *io = &ios[g->first + k];
		const uint32_t sb = io->f->slot_bytes;
		if (io->buf2) {
			g->iov[g->n_iov++] = (struct iovec){ io->buf, io->split };
			g->iov[g->n_iov++] = (struct iovec){ io->buf2, sb - io->split };
		} else {
			g->iov[g->n_iov++] = (struct iovec){ io->buf, sb };
		}
		g->bytes += sb;
	}
	if (io0->write)
		io_uring_prep_writev(sqe, io0->f->fd, g->iov, g->n_iov, off);
	else
		io_uring_prep_readv(sqe, io0->f->fd, g->iov, g->n_iov, off);
	io_uring_sqe_set_data(sqe, (void *)((uintptr_t)g | TAG_RUN));
}

/* One I/O's transfer is complete: count it, and queue its check. */
static void io_complete(struct ssd *s, struct ssd_io *io, struct ssd_io **tocheck, unsigned *n_check)
{
	io->done = io->f->slot_bytes;
	if (io->write) {
		atomic_fetch_add(&s->writes, 1);
		atomic_fetch_add(&s->write_bytes, io->f->slot_bytes);
	} else {
		atomic_fetch_add(&s->reads, 1);
		atomic_fetch_add(&s->read_bytes, io->f->slot_bytes);
		if (io->check)
			tocheck[(*n_check)++] = io;
	}
}

int ssd_submit_qd(struct ssd *s, struct ssd_io *ios, unsigned n, unsigned qd)
{
	struct io_uring *r;
	int rc = get_ring(&r);
	if (rc)
		return rc;
	if (!n)
		return 0;
	/* every I/O is at most once in each list; a run needs two iovecs per I/O */
	struct ssd_io **retry = malloc(n * sizeof(*retry)), **tocheck = malloc(n * sizeof(*tocheck));
	struct run *runs = malloc(n * sizeof(*runs));
	struct iovec *iovs = malloc(2 * (size_t)n * sizeof(*iovs));
	if (!retry || !tocheck || !runs || !iovs) {
		rc = -ENOMEM;
		goto out;
	}
	unsigned next = 0, inflight = 0, n_runs = 0, n_retry = 0, n_check = 0;
	int first = 0;
	for (unsigned i = 0; i < n; i++) {
		ios[i].result = 0;
		ios[i].done = 0;
	}
	if (qd < 1 || qd > RING_DEPTH)
		qd = RING_DEPTH;
	rc = 0;
	while (next < n || inflight || n_retry || n_check) {
		/* keep the ring full: resubmissions first, then new I/Os; each
		 * completion frees a place at once, so the queue never drains
		 * between groups */
		unsigned queued = 0;
		while (inflight + queued < qd && (n_retry || next < n)) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(r);
			if (!sqe)
				break;
			if (n_retry) {
				prep(sqe, retry[--n_retry]);
			} else {
				const unsigned k = run_length(ios, n, next);
				for (unsigned j = next; j < next + k; j++)
					if (ios[j].prepare)
						ios[j].prepare(&ios[j]);
				if (k == 1) {
					prep(sqe, &ios[next]);
				} else {
					struct run *g = &runs[n_runs];
					*g = (struct run){ .first = next, .count = k, .iov = iovs + 2 * (size_t)next };
					n_runs++;
					prep_run(sqe, g, ios);
				}
				next += k;
			}
			queued++;
		}
		if (queued) {
			int sub = io_uring_submit(r);
			if (sub < 0) {
				rc = sub;
				goto out;
			}
			inflight += queued;
		}
		/* checks run after the ring is refilled, so the device stays busy */
		for (unsigned i = 0; i < n_check; i++)
			if ((tocheck[i]->result = tocheck[i]->check(tocheck[i])) && !first)
				first = tocheck[i]->result;
		n_check = 0;
		if (!inflight)
			break;
		struct io_uring_cqe *cqe;
		rc = io_uring_wait_cqe(r, &cqe);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			goto out;
		/* reap everything that is ready */
		do {
			const uintptr_t tag = (uintptr_t)io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			io_uring_cqe_seen(r, cqe);
			inflight--;
			if (tag & TAG_RUN) {
				struct run *g = (struct run *)(tag & ~(uintptr_t)TAG_RUN);
				const bool whole = res >= 0 && (uint64_t)res == g->bytes;
				for (unsigned k = 0; k < g->count; k++) {
					struct ssd_io *io = &ios[g->first + k];
					if (whole)
						io_complete(s, io, tocheck, &n_check);
					else
						retry[n_retry++] = io;   /* one by one, from its start */
				}
				continue;
			}
			struct ssd_io *io = (struct ssd_io *)tag;
			if (res == -EAGAIN || res == -EINTR) {
				retry[n_retry++] = io;
				continue;
			}
			if (res < 0 || (res == 0 && !io->write)) {
				io->result = res < 0 ? res : -EIO;   /* a read past the end */
				atomic_fetch_add(&s->errors, 1);
				if (!first)
					first = io->result;
				continue;
			}
			if (res == 0) {
				/* a write that moves nothing will not move later either */
				io->result = -ENOSPC;
				atomic_fetch_add(&s->errors, 1);
				if (!first)
					first = io->result;
				continue;
			}
			io->done += (uint32_t)res;
			if (io->done < io->f->slot_bytes) {
				retry[n_retry++] = io;          /* short transfer: the rest */
				continue;
			}
			io_complete(s, io, tocheck, &n_check);
		} while (io_uring_peek_cqe(r, &cqe) == 0);
	}
	rc = first;
out:
	free(retry);
	free(tocheck);
	free(runs);
	free(iovs);
	return rc;
}

int ssd_sync(struct ssd_file *f)
{
	struct io_uring *r;
	int rc = get_ring(&r);
	if (rc)
		return rc;
	struct io_uring_sqe *sqe = io_uring_get_sqe(r);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data(sqe, NULL);
	rc = io_uring_submit(r);
	if (rc < 0)
		return rc;
	struct io_uring_cqe *cqe;
	do
		rc = io_uring_wait_cqe(r, &cqe);
	while (rc == -EINTR);
	if (rc < 0)
		return rc;
	rc = cqe->res;
	io_uring_cqe_seen(r, cqe);
	if (rc < 0) {
		atomic_fetch_add(&f->s->errors, 1);
		return rc;
	}
	atomic_fetch_add(&f->s->syncs, 1);
	return 0;
}

int ssd_list_files(struct ssd *s, uint64_t **ids, size_t *n)
{
	DIR *d = opendir(s->dir);
	if (!d)
		return -errno;
	size_t cap = 16, cnt = 0;
	uint64_t *out = malloc(cap * sizeof(*out));
	if (!out) {
		closedir(d);
		return -ENOMEM;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		uint64_t id;
		char tail[8];
		if (sscanf(e->d_name, "ctx-%16" SCNx64 ".%7s", &id, tail) != 2 || strcmp(tail, "blk"))
			continue;
		if (cnt == cap) {
			uint64_t *g = realloc(out, 2 * cap * sizeof(*out));
			if (!g) {
				free(out);
				closedir(d);
				return -ENOMEM;
			}
			out = g;
			cap *= 2;
		}
		out[cnt++] = id;
	}
	closedir(d);
	*ids = out;
	*n = cnt;
	return 0;
}

int ssd_unlink(struct ssd *s, uint64_t ctx_id)
{
	char path[4200];
	file_path(s, ctx_id, path, sizeof(path));
	return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

void ssd_stats(struct ssd *s, struct ssd_stats *o)
{
	o->max_bytes = s->max_bytes;
	o->used_bytes = atomic_load(&s->used);
	o->reads = atomic_load(&s->reads);
	o->writes = atomic_load(&s->writes);
	o->read_bytes = atomic_load(&s->read_bytes);
	o->write_bytes = atomic_load(&s->write_bytes);
	o->syncs = atomic_load(&s->syncs);
	o->errors = atomic_load(&s->errors);
}
