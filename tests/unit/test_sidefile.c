/*
 * Side files (tiers/sidefile.h): a written file reads back byte for byte;
 * rewriting replaces it whole; every truncation, a flipped byte anywhere,
 * a foreign magic and a length that disagrees are refused with -EBADMSG;
 * hostile names are refused; removal takes the context's directory and
 * listing finds exactly the contexts that have one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../check.h"
#include "sidefile.h"

static uint64_t seed;

static void put_file(const char *path, const uint8_t *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fwrite(p, 1, n, f);
		fclose(f);
	}
}

int main(void)
{
	seed = check_seed();
	char dir[] = "/tmp/mnemo-sidefile-XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	enum { LEN = 5000 };
	static uint8_t body[LEN], file[LEN + 64], bad[LEN + 64];
	for (size_t i = 0; i < LEN; i++)
		body[i] = (uint8_t)check_rand(&seed);

	CHECK(sidefile_write(dir, 7, "a.idx", body, LEN) == 0, "write");
	void *got = NULL;
	size_t len = 0;
	CHECK(sidefile_read(dir, 7, "a.idx", &got, &len) == 0 && len == LEN && !memcmp(got, body, LEN), "read back");
	free(got);
	CHECK(sidefile_read(dir, 7, "b.idx", &got, &len) == -ENOENT, "missing file");
	CHECK(sidefile_read(dir, 8, "a.idx", &got, &len) == -ENOENT, "missing context");
	CHECK(sidefile_write(dir, 7, "a.idx", body, 100) == 0 &&
	      sidefile_read(dir, 7, "a.idx", &got, &len) == 0 && len == 100 && !memcmp(got, body, 100), "rewrite");
	free(got);
	CHECK(sidefile_write(dir, 7, "empty", NULL, 0) == 0 && sidefile_read(dir, 7, "empty", &got, &len) == 0 &&
	      len == 0, "empty body");
	free(got);

	/* hostile names */
	const char *names[] = { "", ".hidden", "../x", "a/b", "sp ace", NULL };
	int refused = 1;
	for (int i = 0; i < 5; i++)
		refused &= sidefile_write(dir, 7, names[i], body, 1) == -EINVAL &&
			   sidefile_read(dir, 7, names[i], &got, &len) == -EINVAL;
	refused &= sidefile_write(dir, 7, names[5], body, 1) == -EINVAL;
	char longname[SIDEFILE_MAX_NAME + 2];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	refused &= sidefile_write(dir, 7, longname, body, 1) == -EINVAL;
	CHECK(refused, "a hostile name was taken");

	/* damaged files */
	CHECK(sidefile_write(dir, 9, "c.idx", body, LEN) == 0, "write c");
	char path[300];
	snprintf(path, sizeof(path), "%s/ctx-%016x/c.idx", dir, 9);
	FILE *f = fopen(path, "rb");
	size_t flen = f ? fread(file, 1, sizeof(file), f) : 0;
	if (f)
		fclose(f);
	CHECK(flen == LEN + 32, "file is header + body (%zu)", flen);
	int all = 1;
	for (unsigned i = 0; i < 200; i++) {
		size_t cut = i < 100 ? i : (size_t)(check_rand(&seed) % flen);
		put_file(path, file, cut);
		all &= sidefile_read(dir, 9, "c.idx", &got, &len) == -EBADMSG;
	}
	CHECK(all, "a truncated file was accepted");
	all = 1;
	for (unsigned i = 0; i < 300; i++) {
		memcpy(bad, file, flen);
		size_t at = i < 32 ? i : (size_t)(check_rand(&seed) % flen);
		bad[at] ^= (uint8_t)(1u << (check_rand(&seed) % 8));
		put_file(path, bad, flen);
		all &= sidefile_read(dir, 9, "c.idx", &got, &len) == -EBADMSG;
	}
	CHECK(all, "a flipped byte was accepted");
	memcpy(bad, file, flen);
	bad[flen] = 0;
	put_file(path, bad, flen + 1);
	CHECK(sidefile_read(dir, 9, "c.idx", &got, &len) == -EBADMSG, "a trailing byte was accepted");

	/* listing and removal */
	uint64_t *ids;
	size_t n;
	CHECK(sidefile_list_ctx(dir, &ids, &n) == 0 && n == 2 && ((ids[0] == 7 && ids[1] == 9) || (ids[0] == 9 && ids[1] == 7)),
	      "list: %zu contexts", n);
	free(ids);
	CHECK(sidefile_remove_ctx(dir, 7) == 0 && sidefile_read(dir, 7, "a.idx", &got, &len) == -ENOENT, "remove");
	CHECK(sidefile_remove_ctx(dir, 7) == 0, "remove twice");
	CHECK(sidefile_list_ctx(dir, &ids, &n) == 0 && n == 1 && ids[0] == 9, "list after remove");
	free(ids);
	sidefile_remove_ctx(dir, 9);
	CHECK(rmdir(dir) == 0, "nothing left in %s", dir);
	return check_exit();
}
