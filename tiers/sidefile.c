/* Durable side files of a context (sidefile.h). */
#define _GNU_SOURCE
#include "sidefile.h"

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define SF_MAGIC 0x46534e4du /* "MNSF" little-endian */
#define SF_VERSION 1u
#define SF_HEADER 32u

static int name_ok(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (!n || n > SIDEFILE_MAX_NAME || name[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		      c == '_' || c == '.'))
			return 0;
	}
	return 1;
}

static int ctx_dir(const char *dir, uint64_t ctx, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%s/ctx-%016" PRIx64, dir, ctx);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static int mkdir_one(const char *path)
{
	return mkdir(path, 0700) && errno != EEXIST ? -errno : 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) ? -errno : 0;
	close(fd);
	return rc;
}

/* DIR/ctx-<id>/NAME into @p path (PATH_MAX), its folder into @p cdir (PATH_MAX). */
static int file_path(const char *dir, uint64_t ctx, const char *name, char *cdir, char *path)
{
	if (!dir || !name_ok(name))
		return -EINVAL;
	int rc = ctx_dir(dir, ctx, cdir, PATH_MAX);
	if (rc)
		return rc;
	if (snprintf(path, PATH_MAX, "%s/%s", cdir, name) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

int sidefile_write(const char *dir, uint64_t ctx, const char *name, const void *buf, size_t len)
{
	if (!buf && len)
		return -EINVAL;
	char cdir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX];
	int rc = file_path(dir, ctx, name, cdir, path);
	if (rc)
		return rc;
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", cdir, name) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	if ((rc = mkdir_one(dir)) || (rc = mkdir_one(cdir)))
		return rc;
	uint8_t h[SF_HEADER] = { 0 };
	uint32_t u32 = htole32(SF_MAGIC);
	memcpy(h, &u32, 4);
	u32 = htole32(SF_VERSION);
	memcpy(h + 4, &u32, 4);
	uint64_t u64 = htole64((uint64_t)len);
	memcpy(h + 8, &u64, 8);
	u64 = htole64(XXH3_64bits(buf, len));
	memcpy(h + 16, &u64, 8);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	rc = write_all(fd, h, sizeof(h));
	if (!rc)
		rc = write_all(fd, buf, len);
	if (!rc && fdatasync(fd))
		rc = -errno;
	if (close(fd) && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path))
		rc = -errno;
	if (rc) {
		unlink(tmp);
		return rc;
	}
	return fsync_dir(cdir);
}

int sidefile_read(const char *dir, uint64_t ctx, const char *name, void **buf, size_t *len)
{
	if (!buf || !len)
		return -EINVAL;
	char cdir[PATH_MAX], path[PATH_MAX];
	int rc = file_path(dir, ctx, name, cdir, path);
	if (rc)
		return rc;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* the whole file at once: read() alone pulls a cold file in readahead
	 * windows, one after the other */
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	struct stat st;
	uint8_t h[SF_HEADER];
	uint8_t *body = NULL;
	if (fstat(fd, &st)) {
		rc = -errno;
		goto out;
	}
	if ((uint64_t)st.st_size < SF_HEADER || pread(fd, h, SF_HEADER, 0) != SF_HEADER) {
		rc = -EBADMSG;
		goto out;
	}
	uint32_t magic, version;
	uint64_t blen, sum;
	memcpy(&magic, h, 4);
	memcpy(&version, h + 4, 4);
	memcpy(&blen, h + 8, 8);
	memcpy(&sum, h + 16, 8);
	blen = le64toh(blen);
	static const uint8_t zero[SF_HEADER - 24];
	if (memcmp(h + 24, zero, sizeof(zero)) || le32toh(magic) != SF_MAGIC || le32toh(version) != SF_VERSION ||
	    blen != (uint64_t)st.st_size - SF_HEADER) {
		rc = -EBADMSG;
		goto out;
	}
	body = malloc(blen ? blen : 1);
	if (!body) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t got = 0; got < blen;) {
		ssize_t r = pread(fd, body + got, blen - got, (off_t)(SF_HEADER + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = r < 0 ? -EIO : -EBADMSG;
			goto out;
		}
		got += (uint64_t)r;
	}
	if (XXH3_64bits(body, blen) != le64toh(sum)) {
		rc = -EBADMSG;
		goto out;
	}
	*buf = body;
	*len = blen;
	body = NULL;
out:
	free(body);
	close(fd);
	return rc;
}

int sidefile_prefetch(const char *dir, uint64_t ctx, const char *name)
{
	char cdir[PATH_MAX], path[PATH_MAX];
	int rc = file_path(dir, ctx, name, cdir, path);
	if (rc)
		return rc;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	close(fd);
	return -rc;
}

int sidefile_remove(const char *dir, uint64_t ctx, const char *name)
{
	char cdir[PATH_MAX], path[PATH_MAX];
	int rc = file_path(dir, ctx, name, cdir, path);
	if (rc)
		return rc;
	if (unlink(path))
		return errno == ENOENT ? 0 : -errno;
	return fsync_dir(cdir);
}

int sidefile_remove_ctx(const char *dir, uint64_t ctx)
{
	char cdir[PATH_MAX], path[PATH_MAX];
	int rc = ctx_dir(dir, ctx, cdir, sizeof(cdir));
	if (rc)
		return rc;
	DIR *d = opendir(cdir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    snprintf(path, sizeof(path), "%s/%s", cdir, e->d_name) < (int)sizeof(path) && unlink(path) &&
		    errno != ENOENT && !rc)
			rc = -errno;
	closedir(d);
	if (rmdir(cdir) && errno != ENOENT && !rc)
		rc = -errno;
	return rc;
}

int sidefile_list_ctx(const char *dir, uint64_t **ids, size_t *n)
{
	*ids = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	size_t cap = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d))) {
		uint64_t id;
		char tail;
		if (strlen(e->d_name) != 20 || sscanf(e->d_name, "ctx-%16" SCNx64 "%c", &id, &tail) != 1)
			continue;
		if (*n == cap) {
			size_t nc = cap ? 2 * cap : 16;
			uint64_t *p = realloc(*ids, nc * sizeof(uint64_t));
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			*ids = p;
			cap = nc;
		}
		(*ids)[(*n)++] = id;
	}
	closedir(d);
	if (rc) {
		free(*ids);
		*ids = NULL;
		*n = 0;
	}
	return rc;
}
