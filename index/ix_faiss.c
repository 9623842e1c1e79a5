/* The blob container of the FAISS policies (ix_faiss.h). */
#define _GNU_SOURCE
#include "ix_faiss.h"

#include <errno.h>
#include <faiss/c_api/index_io_c.h>
#include <stdio.h>
#include <stdlib.h>

#include "ix.h"

/* FAISS's serialisation of @p index into a malloc'ed buffer. */
static int faiss_to_buffer(const FaissIndex *index, char **buf, size_t *len)
{
	*buf = NULL;
	*len = 0;
	FILE *f = open_memstream(buf, len);
	if (!f)
		return -ENOMEM;
	int rc = ix_faiss_error(faiss_write_index(index, f));
	if (fclose(f) && !rc)
		rc = -ENOMEM;
	if (rc) {
		free(*buf);
		*buf = NULL;
	}
	return rc;
}

int ix_faiss_save(const FaissIndex *index, unsigned policy, uint16_t version, uint64_t n, unsigned d,
		  uint32_t param, uint8_t **buf, size_t *len)
{
	char *payload;
	size_t plen;
	int rc = faiss_to_buffer(index, &payload, &plen);
	if (rc)
		return rc;
	struct ix_wr w;
	ix_wr_begin(&w, policy, version, 48 + plen);
	ix_wr_u64(&w, n);
	ix_wr_u32(&w, d);
	ix_wr_u32(&w, param);
	ix_wr_u64(&w, plen);
	ix_wr_u64(&w, ix_checksum(payload, plen));
	ix_wr_bytes(&w, payload, plen);
	free(payload);
	return ix_wr_end(&w, buf, len);
}

int ix_faiss_read(const uint8_t *buf, size_t len, unsigned policy, uint16_t version, uint64_t *n, unsigned *d,
		  uint32_t *param, FaissIndex **out)
{
	struct ix_rd r;
	int rc = ix_rd_begin(&r, buf, len, policy, version);
	if (rc)
		return rc;
	*n = ix_rd_u64(&r);
	*d = ix_rd_u32(&r);
	*param = ix_rd_u32(&r);
	uint64_t plen = ix_rd_u64(&r), sum = ix_rd_u64(&r);
	if (r.err || !*n || *n > IX_MAX_TOKENS || !*d || *d > IX_MAX_DIM || !plen || plen != r.left)
		return -EBADMSG;
	const uint8_t *payload = ix_rd_bytes(&r, plen);
	if (!payload || ix_checksum(payload, plen) != sum)
		return -EBADMSG;
	FILE *f = fmemopen((void *)payload, plen, "rb");
	if (!f)
		return -ENOMEM;
	FaissIndex *index = NULL;
	rc = faiss_read_index(f, 0, &index) ? -EBADMSG : 0;
	fclose(f);
	if (rc)
		return rc;
	if (faiss_Index_d(index) != (int)*d || faiss_Index_ntotal(index) != (idx_t)*n ||
	    faiss_Index_metric_type(index) != METRIC_INNER_PRODUCT) {
		faiss_Index_free(index);
		return -EBADMSG;
	}
	*out = index;
	return 0;
}

