/*
 * The SSD tier: one block file per context, cut into fixed-size slots read
 * and written with O_DIRECT through io_uring.
 *
 * Glossary
 *   slot     a 4 KiB-aligned extent of a block file holding one block: the
 *            block's bytes and padding; where the padding has room, a
 *            64-byte trailer (tiers/record.h) that names the block and
 *            carries its checksum.
 *   batch    the I/Os of one request, submitted together and waited for
 *            together; short transfers and -EAGAIN are resubmitted.
 *
 * Each thread that submits I/O gets its own ring (created on first use), so
 * workers never share a submission queue.
 */
#ifndef MNEMO_TIERS_SSD_H
#define MNEMO_TIERS_SSD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SSD_ALIGN 4096u

struct ssd;
struct ssd_file;

struct ssd_stats {
	uint64_t max_bytes;       /* the --ssd-max budget */
	uint64_t used_bytes;      /* slots allocated */
	uint64_t reads, writes;   /* I/Os completed */
	uint64_t read_bytes, write_bytes;
	uint64_t syncs;
	uint64_t errors;          /* I/Os that failed for good */
};

/**
 * Open the tier on @p dir (created 0700 if missing). @p max_bytes caps the
 * slots allocated over all files (0: no cap but the file system's).
 * @return 0, -errno; -EINVAL if the file system refuses O_DIRECT.
 */
int ssd_open(const char *dir, uint64_t max_bytes, struct ssd **out);
void ssd_close(struct ssd *s);
const char *ssd_dir(const struct ssd *s);

/** Slot size for a block of @p block_bytes: the block rounded up to SSD_ALIGN. */
uint32_t ssd_slot_bytes(size_t block_bytes);

/**
 * Open (or create) the block file of context @p ctx_id.
 * @return 0, -ENOENT (missing and !create), -errno
 */
int ssd_file_open(struct ssd *s, uint64_t ctx_id, uint32_t slot_bytes, bool create,
		  struct ssd_file **out);
/** Close the file; its slots stay allocated until ssd_file_remove(). */
void ssd_file_close(struct ssd_file *f);
/** Close and unlink the file and give its slots back. */
void ssd_file_remove(struct ssd_file *f);
uint32_t ssd_file_slot_bytes(const struct ssd_file *f);

/** A free slot (lowest first). -ENOSPC past --ssd-max. */
int ssd_slot_alloc(struct ssd_file *f, uint64_t *slot);
void ssd_slot_free(struct ssd_file *f, uint64_t slot);
/** Mark a slot used (recovery from the catalog). */
int ssd_slot_claim(struct ssd_file *f, uint64_t slot);

struct ssd_io {
	struct ssd_file *f;
	uint64_t slot;
	void *buf;                /* SSD_ALIGN-aligned, slot_bytes long (split long with buf2) */
	/* Optional: the slot in two pieces, buf's first split bytes then buf2's
	 * slot_bytes - split (both SSD_ALIGN-aligned, split a multiple of it):
	 * a block written from a request whose keys and values lie apart. */
	void *buf2;
	uint32_t split;
	bool write;
	/* Optional: called as soon as this read completes, while the rest of the
	 * batch is still in flight, so checking overlaps I/O; its non-zero
	 * return becomes the result. */
	int (*check)(struct ssd_io *io);
	/* Optional: called once just before this write is submitted, while the
	 * batch's earlier writes are in flight, so that filling in the slot (a
	 * checksum, a trailer) overlaps I/O. */
	void (*prepare)(struct ssd_io *io);
	void *arg;                /* for check and prepare */
	int result;               /* 0 or -errno, set by ssd_submit() */
	uint32_t done;            /* bytes transferred so far (internal) */
	struct iovec iov[2];      /* internal */
};

/**
 * Run a batch: every I/O submitted at once (up to the ring's depth at a
 * time), short transfers and -EAGAIN/-EINTR resubmitted. Waits for all.
 * @return 0 when every I/O succeeded, else the first failure (each I/O has
 *         its own result); -ENOSPC for a full file system.
 */
int ssd_submit(struct ssd *s, struct ssd_io *ios, unsigned n);

/** ssd_submit() with at most @p qd I/Os in flight (1..128) at any time. */
int ssd_submit_qd(struct ssd *s, struct ssd_io *ios, unsigned n, unsigned qd);

/** Make the file's written slots durable (fdatasync through the ring). */
int ssd_sync(struct ssd_file *f);

/** Names of the block files in the tier's folder, for cleanup of orphans. */
int ssd_list_files(struct ssd *s, uint64_t **ids, size_t *n);
/** Unlink the file of @p ctx_id if it exists (an orphan at recovery). */
int ssd_unlink(struct ssd *s, uint64_t ctx_id);

void ssd_stats(struct ssd *s, struct ssd_stats *out);

#endif
